"""A gateway that hangs up while two-way playback is still queued is a normal end of call.

Under uvicorn, writing to a socket the gateway has just closed raises ClientDisconnected; the
hub used to log that as `ERROR … playback stopped` with a traceback. A hang-up is not an error:
the log says what happened, at INFO, and the stream ends with "Call hangup" as always.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from streams.models import Account, Stream
from tests.conftest import Proc
from tests.e2e.test_bidirectional import bidi_meta, play_l16
from tests.support import Customer, TimedGateway, basic_auth, db, eventually, ramp, tone

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CALLS = 2


async def _all(rows: Any, count: int) -> list[Stream] | None:
    found: list[Stream] = await rows
    return found if len(found) == count else None


async def test_a_hangup_mid_playback_logs_no_error(hub_factory: Callable[..., Proc], account: Account) -> None:
    hub = hub_factory(server="uvicorn")

    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await conn.send(play_l16(tone(10_000)))  # far more than the call will last
            await conn.send(json.dumps({"event": "checkpoint", "name": "never-reached"}))
            # Leave the hub's closing handshake unanswered: the relay then takes its close timeout
            # to finish, and the call's playback keeps its queue all that time, so it surely
            # writes to the gateway after the gateway has gone (the race a real hang-up can lose).
            conn.transport.pause_reading()

    async with Customer(reply=reply) as customer:
        for _ in range(CALLS):
            gw = TimedGateway(f"{hub.ws}/ingest/audio-fork", basic_auth(account.auth_id, account.auth_token))
            await gw.open(bidi_meta(customer.url))
            await gw.send(ramp(160))
            await eventually(lambda gw=gw: sum(isinstance(m, bytes) for _, m in gw.arrivals) >= 25)
            await gw.close()  # the caller hangs up: close 1000, as mod_audio_fork does
        ended = db(lambda: list(Stream.objects.filter(account=account, end_time__isnull=False)))
        streams = await eventually(lambda: _all(ended(), CALLS), timeout=20)
        for conn in customer.ws:  # it never answered the closing handshake: do not wait for it
            conn.transport.abort()

    assert {s.hangup_reason for s in streams} == {"Call hangup"}
    assert not any(m.get("name") == "never-reached" for m in customer.events("playedStream"))
    hub.stop()
    log = hub.log()
    assert " ERROR " not in log and "Traceback" not in log, log[-5000:]
    assert log.count("the gateway hung up during playback") == CALLS, log[-5000:]
