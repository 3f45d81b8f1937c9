"""Relay lifecycle edge cases, in-process against the real database."""

from __future__ import annotations

import asyncio

import pytest

from streams import services
from streams.core.validation import validate_stream_params
from streams.live.relay import StreamRelay
from streams.models import Account, Stream
from tests.support import db

pytestmark = pytest.mark.django_db(transaction=True)


class FakeHost:
    """A RelayHost with no call behind it: records finished relays, has no playback."""

    def __init__(self) -> None:
        self.finished: list[StreamRelay] = []

    def relay_finished(self, relay: StreamRelay) -> None:
        self.finished.append(relay)

    def play(self, relay: StreamRelay, pcm: bytes) -> None:
        raise AssertionError("no playback in these tests")

    def checkpoint(self, relay: StreamRelay, name: str) -> bool:
        return False

    def clear(self, relay: StreamRelay) -> tuple[int, list[str]]:
        return 0, []

    def send_dtmf(self, relay: StreamRelay, digits: str) -> bool:
        return False


def _stream(account: Account) -> Stream:
    call = services.call_open(account=account, call_uuid="0d6a2b8e-5d7c-4b1a-9a63-1f0c2e9d4b10")
    params = validate_stream_params({"service_url": "ws://127.0.0.1:9/ws"})
    stream = services.stream_create(call=call, params=params, notify_session=False)
    return Stream.objects.select_related("account", "call").get(pk=stream.pk)


async def test_a_relay_stopped_before_its_task_ran_still_ends_once(account: Account) -> None:
    stream = await db(_stream)(account)
    host = FakeHost()
    relay = StreamRelay(session=host, stream=stream, gateway_rate=8000)
    relay.start()
    relay.stop(Stream.Reason.CALL_HANGUP)  # same tick: the task has not started
    await asyncio.wait_for(relay.wait(), 10)
    assert host.finished == [relay]
    row = await db(lambda: Stream.objects.get(pk=stream.pk))()
    assert row.hangup_reason == "Call hangup" and row.status == "stopped"
