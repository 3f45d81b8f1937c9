"""Opt-in stream resume (docs/resume.md) end to end, through both gateway framings.

A real hub (daphne subprocess), a customer server that drops its connection and comes back
(or does not), and a gateway client per framing (mod_audio_fork/jambonz JSON metadata and
Asterisk chan_websocket). Only what the customer, the caller and the stream log observe is
asserted; waits are on conditions, never on the wall clock.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from streams.models import Account
from tests.conftest import Proc
from tests.live.asterisk.drivers import DRIVERS, GatewayDriver, make_driver
from tests.live.asterisk.support import ended_stream, events_of, on_start, payloads, play, spoken, stream_rows
from tests.support import Customer, basic_auth, db, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(params=DRIVERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def driver(kind: str, hub: Proc, account: Account) -> GatewayDriver:
    return make_driver(kind, hub, account)


class DroppingCustomer(Customer):
    """Drops its first connection `drop_after` s after `start` (close code 1001, as a service that
    restarts), then answers upgrades with 503 for `away` s (None: for good), then accepts again.

    The dropped connection keeps reading until its closing handshake ends, so it records every
    frame the hub wrote before it saw the close frame.
    """

    def __init__(self, *, drop_after: float = 2.0, away: float | None = 3.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.drop_after = drop_after
        self.away = away
        self.dropped_at: float | None = None
        self.refused = 0

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.attempts += 1
        if self.dropped_at is not None and (self.away is None or time.monotonic() < self.dropped_at + self.away):
            self.refused += 1
            return conn.respond(503, "restarting\n")
        return None

    async def _handler(self, conn: ServerConnection) -> None:
        received: list[dict[str, Any]] = []
        self.connections.append(received)
        self.ws.append(conn)
        first = len(self.connections) == 1
        started: float | None = None
        closing: asyncio.Task[None] | None = None
        async for raw in conn:
            message = json.loads(raw)
            received.append(message)
            if self.reply is not None:
                await self.reply(conn, message)
            if message["event"] == "start":
                started = time.monotonic()
            if first and closing is None and started is not None and time.monotonic() - started >= self.drop_after:
                self.dropped_at = time.monotonic()
                closing = asyncio.get_running_loop().create_task(conn.close(1001, "restarting"))
        if closing is not None:
            await closing


def frames_after_start(customer: Customer) -> list[dict[str, Any]]:
    return [m for conn in customer.connections for m in conn if m["event"] != "start"]


async def test_a_customer_that_drops_and_comes_back_gets_every_frame_exactly_once_in_order(
    driver: GatewayDriver, account: Account
) -> None:
    call_id = str(uuid.uuid4())
    pcm = ramp(8000 * 8)  # 8 s, every sample distinct
    async with DroppingCustomer(drop_after=2.0, away=3.0) as customer:
        await driver.open(
            [{"serviceUrl": customer.url, "reconnect": True, "reconnectWindow": 10}],
            call_id=call_id,
        )
        await eventually(lambda: customer.events("start"))
        await driver.talk(pcm)
        await eventually(lambda: len(customer.connections) == 2 and spoken(payloads(customer)) == pcm, timeout=30)
        await driver.hang_up()
        stream = await ended_stream(call__call_uuid=call_id)

    assert customer.refused >= 1  # it was away, and the hub kept redialling
    first, second = customer.connections
    assert first[0]["event"] == "start" and "resume" not in first[0]["start"]
    resumed = second[0]
    assert resumed["event"] == "start" and resumed["sequenceNumber"] == 1
    assert resumed["start"]["streamId"] == str(stream.stream_id)
    assert {k: v for k, v in resumed["start"].items() if k != "resume"} == first[0]["start"]
    resume = resumed["start"]["resume"]
    after = second[1]  # the first frame of the resumed connection is the one resume announces
    assert resume["resumed"] is True and resume["resumeCount"] == 1
    assert resume["sequenceNumber"] == after["sequenceNumber"] == first[-1]["sequenceNumber"] + 1
    assert resume["chunk"] == {"inbound": after["media"]["chunk"]}
    assert resume["timestamp"] == after["media"]["timestamp"]

    frames = frames_after_start(customer)
    assert [m["sequenceNumber"] for m in frames] == list(range(2, 2 + len(frames)))  # each once, in order
    media = [m for m in frames if m["event"] == "media"]
    assert [m["media"]["chunk"] for m in media] == list(range(1, 1 + len(media)))
    base = int(media[0]["media"]["timestamp"])
    assert all(int(m["media"]["timestamp"]) == base + 20 * (m["media"]["chunk"] - 1) for m in media)  # D8
    assert spoken(payloads(customer)) == pcm  # nothing lost, nothing duplicated

    assert (stream.status, stream.hangup_reason, stream.resumes) == ("stopped", "Call hangup", 1)
    events = await db(events_of)(stream)
    names = [name for name, _, _ in events]
    assert names.count("StartStream") == 1 and names[-1] == "StopStream" and "DroppedStream" not in names
    states = [params["ConnectionState"] for name, _, params in events if name == "DegradedStream"]
    assert states == ["reconnecting", "resumed"]
    lost = next(p for n, _, p in events if n == "DegradedStream" and p["ConnectionState"] == "reconnecting")
    assert lost["ResumeSequenceNumber"] == str(resume["sequenceNumber"])
    assert lost["reconnect"] == "true" and lost["reconnectWindow"] == "10"
    assert "ReconnectAttemptFailed" in names
    # billed for the whole stream, the time away included (8 s of audio at real time)
    assert stream.start_time is not None and stream.bill_duration >= 7


async def test_a_customer_that_never_comes_back_is_dropped_when_the_window_ends(
    driver: GatewayDriver, account: Account
) -> None:
    call_id = str(uuid.uuid4())
    async with DroppingCustomer(drop_after=0.5, away=None) as customer:
        await driver.open(
            [{"serviceUrl": customer.url, "reconnect": "true", "reconnectWindow": "2"}],
            call_id=call_id,
        )
        await eventually(lambda: customer.events("start"))
        talking = asyncio.get_running_loop().create_task(driver.talk(ramp(8000 * 10)))
        stream = await ended_stream(call__call_uuid=call_id)
        dropped_for = time.monotonic() - (customer.dropped_at or 0.0)
        talking.cancel()
        await driver.hang_up()

    assert len(customer.connections) == 1 and customer.refused >= 2
    assert (stream.status, stream.hangup_reason, stream.resumes) == ("failed", "Connection error", 0)
    assert "could not be resumed within 2 s" in stream.last_error
    assert dropped_for >= 2.0  # not before the window's end
    events = await db(events_of)(stream)
    names = [name for name, _, _ in events]
    assert names[-1] == "DroppedStream" and names.count("DroppedStream") == 1
    assert [p["ConnectionState"] for n, _, p in events if n == "DegradedStream"] == ["reconnecting"]
    assert stream.start_time is not None and stream.bill_duration >= 2  # billed through the window


async def test_an_api_stop_during_the_window_ends_the_stream_normally_once(
    hub: Proc, driver: GatewayDriver, account: Account
) -> None:
    call_id = str(uuid.uuid4())
    async with DroppingCustomer(drop_after=0.5, away=None) as customer:
        await driver.open([{"serviceUrl": customer.url, "reconnect": True, "reconnectWindow": 30}], call_id=call_id)
        await eventually(lambda: customer.events("start"))
        talking = asyncio.get_running_loop().create_task(driver.talk(ramp(8000 * 10)))
        await eventually(lambda: customer.refused >= 1, timeout=15)
        [row] = await db(stream_rows)(call__call_uuid=call_id)
        response = await asyncio.to_thread(
            requests.delete,
            f"{hub.http}/v1/Account/{account.auth_id}/Call/{call_id}/Stream/{row.stream_id}/",
            headers=basic_auth(account.auth_id, account.auth_token),
            timeout=10,
        )
        assert response.status_code == 204
        stream = await ended_stream(call__call_uuid=call_id)
        talking.cancel()
        await driver.hang_up()
    assert (stream.status, stream.hangup_reason) == ("stopped", "API request")
    names = [name for name, _, _ in await db(events_of)(stream)]
    assert names.count("StopStream") == 1 and "DroppedStream" not in names


async def test_playback_queued_before_a_drop_is_discarded_and_the_customer_told_after_the_resume(
    kind: str, hub: Proc, account: Account
) -> None:
    driver = make_driver(kind, hub, account)
    call_id = str(uuid.uuid4())
    long_audio = play(ramp(8000 * 20))  # 20 s of playback: still queued when the connection drops
    mark = json.dumps({"event": "checkpoint", "name": "after-greeting"})
    greet = on_start(long_audio, mark)

    async def once(conn: ServerConnection, message: dict[str, Any]) -> None:
        if len(customer.connections) == 1:  # the resumed `start` is not answered with more playback
            await greet(conn, message)

    async with DroppingCustomer(drop_after=1.0, away=1.0, reply=once) as customer:
        await driver.open(
            [{"serviceUrl": customer.url, "bidirectional": True, "reconnect": True, "reconnectWindow": 10}],
            call_id=call_id,
        )
        talking = asyncio.get_running_loop().create_task(driver.talk(ramp(8000 * 8)))
        await eventually(lambda: len(customer.connections) == 2 and customer.events("clearedAudio"), timeout=30)
        talking.cancel()
        await driver.hang_up()
        stream = await ended_stream(call__call_uuid=call_id)
    second = customer.connections[1]
    assert second[0]["event"] == "start" and second[0]["start"]["resume"]["resumeCount"] == 1
    assert [m["event"] for m in second].count("clearedAudio") == 1
    assert not customer.events("playedStream")  # its audio was discarded: never acknowledged (D12)
    events = await db(events_of)(stream)
    cleared = [p for n, e, p in events if n == "ClearAudio"]
    assert cleared and cleared[0]["CheckpointsDropped"] == "after-greeting"


async def test_a_customer_closing_with_1000_is_not_resumed(driver: GatewayDriver, account: Account) -> None:
    call_id = str(uuid.uuid4())
    async with Customer(close_after=10) as customer:
        await driver.open([{"serviceUrl": customer.url, "reconnect": True}], call_id=call_id)
        talking = asyncio.get_running_loop().create_task(driver.talk(ramp(8000 * 5)))
        stream = await ended_stream(call__call_uuid=call_id)
        talking.cancel()
        await driver.hang_up()
    assert customer.attempts == 1
    assert (stream.status, stream.hangup_reason, stream.resumes) == ("failed", "Connection error", 0)
    assert "1000" in stream.last_error


async def test_a_hangup_during_the_window_ends_the_stream_normally_once(
    driver: GatewayDriver, account: Account
) -> None:
    call_id = str(uuid.uuid4())
    async with DroppingCustomer(drop_after=0.5, away=None) as customer:
        await driver.open([{"serviceUrl": customer.url, "reconnect": True, "reconnectWindow": 30}], call_id=call_id)
        await eventually(lambda: customer.events("start"))
        talking = asyncio.get_running_loop().create_task(driver.talk(ramp(8000 * 10)))
        await eventually(lambda: customer.refused >= 1, timeout=15)
        talking.cancel()
        await driver.hang_up()
        stream = await ended_stream(call__call_uuid=call_id)
    assert (stream.status, stream.hangup_reason, stream.resumes) == ("stopped", "Call hangup", 0)
    names = [name for name, _, _ in await db(events_of)(stream)]
    assert names.count("StopStream") == 1 and "DroppedStream" not in names


async def test_both_tracks_resume_each_from_its_own_next_chunk(hub: Proc, account: Account) -> None:
    driver = make_driver("audio-fork", hub, account)
    call_id = str(uuid.uuid4())
    async with DroppingCustomer(drop_after=1.0, away=1.0) as customer:
        await driver.open(
            [{"serviceUrl": customer.url, "audioTrack": "both", "reconnect": True, "reconnectWindow": 10}],
            call_id=call_id,
        )
        await eventually(lambda: customer.events("start"))
        await driver.talk(ramp(8000 * 4))
        await eventually(lambda: len(customer.connections) == 2 and len(customer.events("media")) >= 400, timeout=30)
        await driver.hang_up()
        await ended_stream(call__call_uuid=call_id)
    resume = customer.connections[1][0]["start"]["resume"]
    frames = frames_after_start(customer)
    assert [m["sequenceNumber"] for m in frames] == list(range(2, 2 + len(frames)))
    after = [m for m in customer.connections[1][1:] if m["event"] == "media"]
    for track in ("inbound", "outbound"):
        chunks = [m["media"]["chunk"] for m in frames if m["event"] == "media" and m["media"]["track"] == track]
        assert chunks == list(range(1, 1 + len(chunks)))  # each chunk once, in order, across both connections
        assert resume["chunk"][track] == next(m["media"]["chunk"] for m in after if m["media"]["track"] == track)


class FreezingCustomer(DroppingCustomer):
    """Its first connection goes silent `drop_after` s after `start` without closing (as when a NAT
    or a load balancer forgets it): it stops reading, so it answers no ping, and never closes."""

    async def _handler(self, conn: ServerConnection) -> None:
        if self.connections:
            await super()._handler(conn)
            return
        received: list[dict[str, Any]] = []
        self.connections.append(received)
        self.ws.append(conn)
        started = time.monotonic()
        async for raw in conn:
            received.append(json.loads(raw))
            if time.monotonic() - started >= self.drop_after:
                conn.transport.pause_reading()
                break
        await conn.wait_closed()

    async def __aexit__(self, *exc: object) -> None:
        self.ws[0].transport.abort()  # a paused socket would wait out websockets' close timeout
        await super().__aexit__(*exc)


async def test_a_connection_that_dies_silently_is_found_by_the_keepalive_and_resumed(
    hub_factory: Callable[..., Proc], account: Account
) -> None:
    hub = hub_factory(STREAMHUB_RESUME_KEEPALIVE_SECONDS="0.3")
    driver = make_driver("audio-fork", hub, account)
    call_id = str(uuid.uuid4())
    async with FreezingCustomer(drop_after=1.0, away=0.0) as customer:
        await driver.open([{"serviceUrl": customer.url, "reconnect": True, "reconnectWindow": 10}], call_id=call_id)
        await eventually(lambda: customer.events("start"))
        talking = asyncio.get_running_loop().create_task(driver.talk(ramp(8000 * 6)))
        await eventually(lambda: len(customer.connections) == 2 and len(customer.connections[1]) > 50, timeout=30)
        talking.cancel()
        await driver.hang_up()
        stream = await ended_stream(call__call_uuid=call_id)
    first, second = customer.connections
    resume = second[0]["start"]["resume"]
    # nothing is sent twice; what the frozen connection took but never read is the documented,
    # detectable gap between its last frame and resume.sequenceNumber
    assert resume["sequenceNumber"] > first[-1]["sequenceNumber"]
    seqs = [m["sequenceNumber"] for m in first[1:] + second[1:]]
    assert seqs == sorted(set(seqs))
    assert [m["sequenceNumber"] for m in second[1:]] == list(range(resume["sequenceNumber"], seqs[-1] + 1))
    events = await db(events_of)(stream)
    lost = next(e for n, e, p in events if n == "DegradedStream" and p.get("ConnectionState") == "reconnecting")
    assert "keepalive ping timeout" in lost
    assert (stream.hangup_reason, stream.resumes) == ("Call hangup", 1)


class FlappingCustomer(Customer):
    """Accepts every upgrade and closes each connection (1001) right after `start`."""

    async def _handler(self, conn: ServerConnection) -> None:
        received: list[dict[str, Any]] = []
        self.connections.append(received)
        async for raw in conn:
            received.append(json.loads(raw))
            await conn.close(1001, "going away")


async def test_a_service_that_accepts_and_drops_at_once_cannot_keep_the_stream_redialling(
    driver: GatewayDriver, account: Account
) -> None:
    call_id = str(uuid.uuid4())
    async with FlappingCustomer() as customer:
        await driver.open([{"serviceUrl": customer.url, "reconnect": True, "reconnectWindow": 3}], call_id=call_id)
        talking = asyncio.get_running_loop().create_task(driver.talk(ramp(8000 * 30)))
        stream = await ended_stream(call__call_uuid=call_id)
        talking.cancel()
        await driver.hang_up()
    # the first drop opened a 3 s window; the resumed connections that dropped at once did not renew it
    assert (stream.status, stream.hangup_reason) == ("failed", "Connection error")
    assert "could not be resumed within 3 s" in stream.last_error
    assert stream.resumes >= 1
    assert stream.duration is not None and stream.duration < 15
