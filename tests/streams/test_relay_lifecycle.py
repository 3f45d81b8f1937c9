"""Relay lifecycle edge cases, in-process against the real database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams import services
from streams.models import Account, Stream
from streams.relay import StreamRelay
from streams.validation import validate_stream_params
from tests.support import db

pytestmark = pytest.mark.django_db(transaction=True)


class _Session:
    def __init__(self) -> None:
        self.finished: list[StreamRelay] = []

    def relay_finished(self, relay: StreamRelay) -> None:
        self.finished.append(relay)


def _stream(account: Account) -> Stream:
    call = services.call_open(account=account, call_uuid="0d6a2b8e-5d7c-4b1a-9a63-1f0c2e9d4b10")
    params = validate_stream_params({"service_url": "ws://127.0.0.1:9/ws"})
    stream = services.stream_create(call=call, params=params, notify_session=False)
    return Stream.objects.select_related("account", "call").get(pk=stream.pk)


async def test_a_relay_stopped_before_its_task_ran_still_ends_once(account: Account) -> None:
    stream = await db(_stream)(account)
    session: Any = _Session()
    relay = StreamRelay(session=session, stream=stream, gateway_rate=8000)
    relay.start()
    relay.stop(Stream.Reason.CALL_HANGUP)  # same tick: the task has not started
    await asyncio.wait_for(relay.wait(), 10)
    assert session.finished == [relay]
    row = await db(lambda: Stream.objects.get(pk=stream.pk))()
    assert row.hangup_reason == "Call hangup" and row.status == "stopped"
