"""Hostile and clumsy peers against a real hub (issue 15): floods, memory, metadata edge cases.

Each test drives a real hub subprocess with a gateway client and customer servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets
from websockets.asyncio.server import Server, ServerConnection, serve

from streams.models import Account, Call, Stream, StreamEvent
from tests.conftest import Proc
from tests.support import Customer, Gateway, basic_auth, db, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def gateway_for(hub: Proc, account: Account) -> Gateway:
    return Gateway(f"{hub.ws}/ingest/audio-fork", basic_auth(account.auth_id, account.auth_token))


def degraded_events(stream_id: str) -> list[int]:
    rows = StreamEvent.objects.filter(stream__stream_id=stream_id, event="DegradedStream").order_by("id")
    return [int(params["BufferUsage"]) for params in rows.values_list("params", flat=True)]


def degraded_at(stream_id: str, pct: int) -> float:
    """When the hub logged its first DegradedStream at `pct` (epoch seconds; same machine clock)."""
    rows = StreamEvent.objects.filter(stream__stream_id=stream_id, event="DegradedStream").order_by("id")
    return next(row.timestamp.timestamp() for row in rows if row.params["BufferUsage"] == str(pct))


# --- §1: DegradedStream floods ------------------------------------------------------------


async def small_buffer_server(handler: Callable[[ServerConnection], Any]) -> tuple[Server, int]:
    """A customer WebSocket server whose sockets take 4 KiB of receive buffer and one queued message:
    what it does not read backs up into the hub at once. Returns the server and its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    return await serve(handler, sock=sock, max_queue=1, compression=None, max_size=None), port


@dataclass
class PacedCustomer:
    """A customer that reads its stream with a chosen lag behind the audio (now - media timestamp).

    It swings the lag by ±`swing` seconds around `center` once a second (a square wave: it stops
    reading for half a second, then catches up), so the hub's send buffer crosses whatever level
    the centre sits at twice a second. It reads one message at a time through a small receive
    buffer, so what it has not read waits in the hub.
    """

    swing: float = 0.25
    center: float = 0.0
    port: int = 0
    stream_id: str = ""
    reads: list[tuple[float, float]] = field(default_factory=list)  # (epoch seconds, lag) per media read
    _server: Any = None

    async def _handler(self, conn: ServerConnection) -> None:
        start = json.loads(await conn.recv())
        self.stream_id = start["start"]["streamId"]
        began = time.monotonic()
        while True:
            try:
                message = json.loads(await conn.recv())
            except Exception:
                return
            if message.get("event") != "media":
                continue
            now = time.time()
            lag = now - int(message["media"]["timestamp"]) / 1000
            self.reads.append((now, lag))
            phase = (time.monotonic() - began) % 1.0
            target = self.center + (self.swing if phase < 0.5 else -self.swing)
            if lag < target:
                await asyncio.sleep(min(0.05, target - lag))

    def lag_at(self, moment: float) -> float:
        """The lag at `moment`: the last read before it, plus the time since (unread audio ages)."""
        at, lag = max((read for read in self.reads if read[0] <= moment), default=self.reads[0])
        return lag + max(0.0, moment - at)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> PacedCustomer:
        self._server, self.port = await small_buffer_server(self._handler)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


async def hold_at_threshold(customer: PacedCustomer, pct: int, seen: Callable[[], Any], limit: float = 40.0) -> None:
    """Raise the customer's lag until the hub reports `pct`, then centre the swing on the lag the
    customer had at that moment: the buffer then crosses `pct` twice a second, both ways."""
    deadline = time.monotonic() + limit
    while not await seen():
        assert time.monotonic() < deadline, f"not seen after {limit} s (lag {customer.center:.2f} s)"
        await asyncio.sleep(0.1)
        customer.center += 0.1  # the lag grows at most as fast as the audio does
    crossed = await db(degraded_at)(customer.stream_id, pct)
    customer.center = customer.lag_at(crossed)


async def test_a_backlog_held_near_a_threshold_gets_one_degraded_stream_per_threshold(
    hub_factory: Callable[..., Proc], account: Account
) -> None:
    """Held at 30 % then at 60 % (crossing each level twice a second): one notice per threshold.
    Recovered below 20 % and slow again: a new notice. Before hysteresis, one per crossing.
    A 16 s buffer: a threshold re-arms 1.6 s of audio below it, far beyond the ±0.25 s swing."""
    hub = hub_factory(STREAMHUB_STREAM_BUFFER_SECONDS="16", STREAMHUB_DEGRADED_MIN_INTERVAL_SECONDS="2")
    hold = 6.0  # three minimum intervals, twelve crossings
    async with PacedCustomer() as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        sender = asyncio.get_running_loop().create_task(gw.send_frames(ramp(8000 * 120), interval=0.02))
        try:
            await eventually(lambda: customer.stream_id)
            events = db(degraded_events)

            async def count(pct: int, n: int = 1) -> bool:
                return (await events(customer.stream_id)).count(pct) >= n

            customer.center = 1.0
            await hold_at_threshold(customer, 30, lambda: count(30))
            await asyncio.sleep(hold)
            assert await events(customer.stream_id) == [30]

            await hold_at_threshold(customer, 60, lambda: count(60))
            await asyncio.sleep(hold)
            assert await events(customer.stream_id) == [30, 60]

            customer.center, customer.swing = 0.0, 0.0  # catch up: the backlog falls below 20 %
            await eventually(lambda: customer.reads[-1][1] < 0.5, timeout=20)
            await asyncio.sleep(1.0)
            customer.center, customer.swing = 1.0, 0.25
            deadline = time.monotonic() + 40
            while not await count(30, 2):
                assert time.monotonic() < deadline, "no second DegradedStream at 30 %"
                await asyncio.sleep(0.1)
                customer.center += 0.1
            assert await events(customer.stream_id) == [30, 60, 30]
        finally:
            sender.cancel()
            await gw.close()


# --- §2: memory a customer can make the hub hold ------------------------------------------


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


@dataclass
class HostileCustomer:
    """A bidirectional customer that never reads and sends checkpoints and tiny clips as fast as it can."""

    count: int = 100_000
    port: int = 0
    sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _server: Any = None

    async def _handler(self, conn: ServerConnection) -> None:
        tiny = json.dumps(
            {"event": "playAudio", "media": {"contentType": "audio/x-l16", "sampleRate": 8000, "payload": "AAA="}}
        )
        try:
            for i in range(self.count):
                name = f"{i:08d}" + "x" * 248  # 256 characters, the longest name a checkpoint may have
                await conn.send(json.dumps({"event": "checkpoint", "streamId": "s", "name": name}))
                await conn.send(tiny)
                self.sent += 1
        except Exception:
            pass  # the hub dropped us: that is allowed
        finally:
            self.done.set()
        await conn.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> HostileCustomer:
        self._server, self.port = await small_buffer_server(self._handler)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in list(self._server.connections):
            conn.transport.abort()
        self._server.close()
        await self._server.wait_closed()


async def test_a_hostile_customer_cannot_grow_the_hub_and_another_call_loses_nothing(
    hub_factory: Callable[..., Proc], account: Account
) -> None:
    """10⁵ checkpoints and 10⁵ tiny playAudio from a customer that never reads: the hub's RSS
    grows by less than 50 MB (the issue's bar; measured: 4 MB, and 49 MB without the bounds,
    unbounded in the count: hence the tighter 20 MB asserted), and a call beside it gets every frame."""
    hub = hub_factory(STREAMHUB_PLAYBACK_QUEUE_SECONDS="2")
    pid = hub.popen.pid
    pcm = ramp(8000 * 10)
    async with HostileCustomer() as hostile, Customer() as healthy:
        warm = await gateway_for(hub, account).open({"streams": [{"serviceUrl": healthy.url}]})
        await eventually(lambda: healthy.events("start"))
        await warm.send_frames(ramp(8000), interval=0.005)
        await eventually(lambda: len(healthy.events("media")) == 50)
        before = rss_kb(pid)

        bystander = gateway_for(hub, account)
        await bystander.open({"streams": [{"serviceUrl": healthy.url + "?bystander"}]})
        await eventually(lambda: len(healthy.events("start")) == 2)
        sending = asyncio.get_running_loop().create_task(bystander.send_frames(pcm, interval=0.02))

        attacker = await gateway_for(hub, account).open(
            {"streams": [{"serviceUrl": hostile.url, "bidirectional": True}]}
        )
        await attacker.send_frames(ramp(160 * 50 * 5), interval=0.02)  # the call goes on, playing into it
        await asyncio.wait_for(hostile.done.wait(), 120)
        await asyncio.wait_for(sending, 60)
        # what the hub still has to read and play out: wait until its memory stops growing
        last, steady_since, deadline = 0, time.monotonic(), time.monotonic() + 30
        while time.monotonic() - steady_since < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = rss_kb(pid, "VmHWM")
            if now > last + 256:
                last, steady_since = now, time.monotonic()
        peak = rss_kb(pid, "VmHWM")
        await attacker.close()
        await bystander.close()
        await warm.close()
        grown_mb = (peak - before) / 1024
        print(f"\nhostile customer: sent {hostile.sent} checkpoint+playAudio pairs; hub RSS +{grown_mb:.1f} MB")
        assert grown_mb < 20

        bystander_media = healthy.connections[1]
        await eventually(lambda: len([m for m in bystander_media if m["event"] == "media"]) == 500, timeout=20)
        payload = b"".join(base64.b64decode(m["media"]["payload"]) for m in bystander_media if m["event"] == "media")
        assert payload == pcm


# --- §5: the resampler's tail -------------------------------------------------------------


def stream_media(customer: Customer, track: str) -> list[bytes]:
    return [base64.b64decode(m["media"]["payload"]) for m in customer.events("media") if m["media"]["track"] == track]


@pytest.mark.parametrize("end", ["hangup", "api", "timeout"])
async def test_every_frame_the_gateway_sent_reaches_the_customer_across_rates(
    hub: Proc, account: Account, end: str
) -> None:
    """8 kHz call, 16 kHz stream: 150 frames in, 150 frames (96,000 bytes) out per track, whether
    the call hangs up, the API stops the stream or its timeout does. Before: 149 (95,360 bytes)."""
    pcm = ramp(8000 * 3)  # 150 frames
    timeout = {"streamTimeout": 3} if end == "timeout" else {}
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open(
            {
                "streams": [
                    {
                        "serviceUrl": customer.url,
                        "contentType": "audio/x-l16;rate=16000",
                        "audioTrack": "both",
                        **timeout,
                    }
                ]
            }
        )
        await eventually(lambda: customer.events("start"))
        await gw.send_frames(pcm, interval=0.004)
        await eventually(lambda: len(stream_media(customer, "inbound")) >= 149)
        if end == "api":
            start = customer.events("start")[0]["start"]
            url = f"{hub.http}/v1/Account/{account.auth_id}/Call/{start['callId']}/Stream/{start['streamId']}/"
            answer = await asyncio.to_thread(
                requests.delete, url, auth=(account.auth_id, account.auth_token), timeout=10
            )
            assert answer.status_code == 204
        elif end == "hangup":
            await gw.close()
        stream = await eventually(
            db(lambda: Stream.objects.filter(account=account, end_time__isnull=False).first()), timeout=15
        )
        await eventually(lambda: customer.ws and customer.ws[0].close_code is not None)
        await gw.close()
    assert stream.hangup_reason == {"hangup": "Call hangup", "api": "API request", "timeout": "Stream timeout"}[end]
    for track in ("inbound", "outbound"):
        frames = stream_media(customer, track)
        assert len(frames) == 150 and {len(f) for f in frames} == {640}
        assert len(b"".join(frames)) == 96_000
    media = customer.events("media")
    assert [m["sequenceNumber"] for m in media] == list(range(2, 2 + len(media)))


# --- §8: gateway metadata edge cases ------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "1e400"])
async def test_a_non_finite_sample_rate_gets_an_error_frame_and_the_call_goes_on(
    hub: Proc, account: Account, literal: str
) -> None:
    """Before: Infinity raised an uncaught OverflowError; NaN was refused by the database (close 4500)."""
    async with Customer() as customer:
        gw = gateway_for(hub, account)
        await gw.open(f'{{"sampleRate":{literal},"streams":[{{"serviceUrl":"{customer.url}"}}]}}')
        await eventually(lambda: customer.events("start"))
        await gw.send_frames(ramp(1600), interval=0.005)
        await eventually(lambda: len(customer.events("media")) == 10)
        assert gw.texts == [
            {"type": "error", "data": {"error": f"sampleRate '{literal}' is not 8000 or 16000; using 8000"}}
        ]
        assert gw.ws is not None and gw.ws.close_code is None
        await gw.close()
    call = await eventually(db(lambda: Call.objects.filter(account=account, status="ended").first()))
    assert call.gateway_metadata["sampleRate"] == 8000 and call.gateway_metadata["raw"]["sampleRate"] == literal


async def test_a_thousand_streams_in_metadata_start_five_and_refuse_the_rest_in_one_error(
    hub: Proc, account: Account
) -> None:
    """Before: all 1,000 were started; closing the call took 10-17 s and slowed every other call."""
    async with Customer() as customer:
        gw = gateway_for(hub, account)
        streams = [{"serviceUrl": f"{customer.url}?n={n}"} for n in range(1000)]
        await gw.open({"streams": streams})
        await eventually(lambda: len(customer.events("start")) == 5)
        await eventually(lambda: gw.texts)
        assert gw.texts == [
            {
                "type": "error",
                "data": {
                    "error": "streams[5..] refused: this call already has 5 active streams, the most one call may have"
                },
            }
        ]
        await gw.send_frames(ramp(1600), interval=0.005)
        await eventually(lambda: len(customer.events("media")) == 50)
        began = time.monotonic()
        await gw.close()
        await eventually(db(lambda: Call.objects.filter(account=account, status="ended").exists()))
        closed_in = time.monotonic() - began
    assert await db(lambda: Stream.objects.filter(account=account).count())() == 5
    assert closed_in < 5


# --- §6: where the hub connects ------------------------------------------------------------


async def test_a_service_url_that_resolves_to_loopback_is_refused_when_private_addresses_are_forbidden(
    hub_factory: Callable[..., Proc], account: Account
) -> None:
    """A literal private address is refused up front; a spelling that only resolves to one
    (2130706433 is 127.0.0.1) is refused at connect time, once, without retries."""
    hub = hub_factory(STREAMHUB_FORBID_PRIVATE_SERVICE_URLS="true")
    async with Customer() as customer:
        disguised = customer.url.replace("127.0.0.1", "2130706433")
        gw = gateway_for(hub, account)
        await gw.open({"streams": [{"serviceUrl": customer.url}, {"serviceUrl": disguised}]})
        stream = await eventually(
            db(lambda: Stream.objects.filter(account=account, end_time__isnull=False).first()), timeout=15
        )
        assert gw.texts == [
            {
                "type": "error",
                "data": {
                    "error": "streams[0] refused: serviceUrl: points to a private or loopback address, which "
                    "this hub forbids"
                },
            }
        ]
        await gw.close()
    assert customer.attempts == 0
    assert stream.service_url == disguised and stream.hangup_reason == "Connection error"
    assert stream.last_error == (
        "refused: 2130706433 resolves to a private or loopback address (127.0.0.1), which this hub forbids"
    )
    events = await db(lambda: list(StreamEvent.objects.filter(stream=stream).values_list("event", flat=True)))()
    assert events.count("ConnectAttemptFailed") == 1 and events[-1] == "DroppedStream"


async def test_an_allowed_private_network_streams_through_the_checked_address(
    hub_factory: Callable[..., Proc], account: Account
) -> None:
    hub = hub_factory(STREAMHUB_FORBID_PRIVATE_SERVICE_URLS="true", STREAMHUB_ALLOWED_PRIVATE_NETWORKS="127.0.0.0/8")
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open(
            {"streams": [{"serviceUrl": customer.url.replace("127.0.0.1", "localhost")}]}
        )
        await eventually(lambda: customer.events("start"))
        await gw.send_frames(ramp(1600), interval=0.005)
        await eventually(lambda: len(customer.events("media")) == 10)
        await gw.close()
    assert customer.headers[0]["Host"] == f"localhost:{customer.port}"  # the name, not the address it resolved to


# --- §6: who may try -----------------------------------------------------------------------


@pytest.mark.both_servers
async def test_failed_gateway_upgrades_are_throttled_per_client_address(
    hub_factory: Callable[..., Proc], account: Account, hub_server: str
) -> None:
    """Three wrong credentials from one address, then that address is refused before its credentials are
    even read (uvicorn: HTTP 429 with Retry-After; daphne cannot choose the status: 403); another address
    still gets in. The address comes from X-Forwarded-For here, behind one trusted proxy."""
    hub = hub_factory(STREAMHUB_AUTH_FAILURE_RATE="3/min", STREAMHUB_TRUSTED_PROXIES="1")
    # addresses no other run can share (the counter outlives a test in the shared Redis; 250 IPv4
    # addresses collided once between this test's daphne and uvicorn runs): IPv6 documentation space
    guesser, other = (f"2001:db8:{uuid.uuid4().hex[:4]}::{uuid.uuid4().hex[:4]}" for _ in range(2))
    url = f"{hub.ws}/ingest/audio-fork"

    def from_(address: str, token: str) -> Gateway:
        return Gateway(url, {**basic_auth(account.auth_id, token), "X-Forwarded-For": address})

    for _ in range(3):
        with pytest.raises(websockets.InvalidStatus) as info:
            await from_(guesser, "wrong").open()
        assert info.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as info:
        await from_(guesser, account.auth_token).open()
    if hub_server == "uvicorn":
        assert info.value.response.status_code == 429
        assert 1 <= int(info.value.response.headers["Retry-After"]) <= 120
    else:
        assert info.value.response.status_code == 403
    gw = await from_(other, account.auth_token).open({"streams": []})
    await gw.send(ramp(160))
    await eventually(db(lambda: Call.objects.filter(account=account).exists()))
    await gw.close()
