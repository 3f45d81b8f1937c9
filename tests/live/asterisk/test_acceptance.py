"""The ingest acceptance scenarios, once, through every gateway framing (tests/live/asterisk/drivers.py).

A real hub (daphne subprocess), a real customer server, and a gateway client per framing:
mod_audio_fork at /ingest/audio-fork and Asterisk chan_websocket at /ingest/asterisk. Only
what the customer, the caller and the stream log observe is asserted. Asterisk sends nothing
while the caller is silent and the hub fills those gaps with silence frames, so payloads are
compared with all-zero frames left out (the caller's test audio never has one).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import pytest
import requests
from websockets.asyncio.server import ServerConnection

from streams.models import Account, Call, StreamEvent
from tests.conftest import Proc
from tests.live.asterisk.drivers import DRIVERS, GatewayDriver, make_driver
from tests.live.asterisk.support import (
    StuckCustomer,
    ended_stream,
    events_of,
    on_start,
    payloads,
    play,
    spoken,
    stream_rows,
)
from tests.support import Customer, TimedCustomer, db, eventually, ramp, tone

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(params=DRIVERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def driver(kind: str, hub: Proc, account: Account) -> GatewayDriver:
    return make_driver(kind, hub, account)


# --- relay ---------------------------------------------------------------------------


@pytest.mark.both_servers
async def test_audio_reaches_the_customer_byte_for_byte_and_the_caller_hanging_up_ends_the_stream(
    driver: GatewayDriver, account: Account
) -> None:
    call_id = str(uuid.uuid4())
    pcm = ramp(8000)  # 1 s, every sample distinct
    async with Customer() as customer:
        await driver.open(
            [{"serviceUrl": customer.url, "extraHeaders": "tenant=acme"}],
            call_id=call_id,
            caller="+14155550100",
            callee="+14155550199",
        )
        await eventually(lambda: customer.events("start"))
        await driver.talk(pcm)
        await eventually(lambda: spoken(payloads(customer)) == pcm)
        await driver.hang_up()
        stream = await ended_stream(call__call_uuid=call_id)

    start = customer.messages[0]
    assert start == {
        "event": "start",
        "sequenceNumber": 1,
        "start": {
            "callId": call_id,
            "streamId": str(stream.stream_id),
            "accountId": account.auth_id,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 8000},
        },
        "extra_headers": "tenant=acme",
    }
    media = customer.events("media")
    assert [m["sequenceNumber"] for m in media] == list(range(2, 2 + len(media)))
    assert [m["media"]["chunk"] for m in media] == list(range(1, 1 + len(media)))
    first = int(media[0]["media"]["timestamp"])
    assert all(int(m["media"]["timestamp"]) == first + 20 * (m["media"]["chunk"] - 1) for m in media)  # D8
    assert {len(p) for p in payloads(customer)} == {320}
    assert (stream.status, stream.hangup_reason) == ("stopped", "Call hangup")
    assert [e[0] for e in await db(events_of)(stream)][-1] == "StopStream"
    # the session ends the call once its relays have drained and ended their streams: not before them
    await eventually(db(lambda: Call.objects.filter(call_uuid=call_id, status="ended").exists()))
    call = await db(Call.objects.get)(call_uuid=call_id)
    assert (call.status, call.from_number, call.to_number) == ("ended", "+14155550100", "+14155550199")
    assert call.gateway == driver.kind


async def test_connect_retries_drop_after_three_refusals_and_keep_the_audio_sent_meanwhile(
    driver: GatewayDriver, account: Account
) -> None:
    pcm = ramp(8000)
    async with Customer(refuse_first=10) as refusing, Customer(refuse_first=2) as late:
        await driver.open([{"serviceUrl": refusing.url}, {"serviceUrl": late.url}])
        await driver.talk(pcm)  # arrives while the hub is still retrying (D2)
        dropped = await ended_stream(account=account, service_url=refusing.url)
        await eventually(lambda: spoken(payloads(late)) == pcm)
        await driver.hang_up()
        kept = await ended_stream(account=account, service_url=late.url)
    assert refusing.attempts == 3 and late.attempts == 3
    assert (dropped.status, dropped.hangup_reason) == ("failed", "Connection error")
    assert "503" in dropped.last_error
    names = [e[0] for e in await db(events_of)(dropped)]
    assert names.count("ConnectAttemptFailed") == 3 and names[-1] == "DroppedStream"
    assert dropped.rounded_bill_duration == 0
    assert (kept.status, kept.hangup_reason) == ("stopped", "Call hangup")


async def test_a_consumer_that_never_reads_is_degraded_then_dropped_and_the_other_loses_nothing(
    kind: str, hub_factory: Callable[..., Proc], account: Account
) -> None:
    hub = hub_factory(STREAMHUB_STREAM_BUFFER_SECONDS="3")
    driver = make_driver(kind, hub, account)
    pcm = ramp(8000 * 12)
    async with StuckCustomer(never_read=True) as stuck, Customer() as healthy:
        await driver.open([{"serviceUrl": stuck.url}, {"serviceUrl": healthy.url}])
        await eventually(lambda: healthy.events("start") and stuck.attempts == 1)
        # faster than real time, so the 3 s buffer fills in a second; the hub's accounting is by audio time
        await driver.talk(pcm, interval=0.002)
        dropped = await ended_stream(account=account, service_url=stuck.url)
        await eventually(lambda: spoken(payloads(healthy)) == pcm, timeout=20)
        await driver.hang_up()
    assert (dropped.status, dropped.hangup_reason) == ("failed", "Connection error")
    assert "slow connection" in dropped.last_error
    events = await db(events_of)(dropped)
    assert [params["BufferUsage"] for name, _, params in events if name == "DegradedStream"] == ["30", "60", "90"]
    assert events[-1][0] == "DroppedStream"


async def test_a_rest_hang_up_closes_the_gateway_its_own_way_and_ends_every_stream(
    driver: GatewayDriver, hub: Proc, account: Account
) -> None:
    async with Customer() as a, Customer() as b:
        await driver.open([{"serviceUrl": a.url}, {"serviceUrl": b.url, "bidirectional": True}])
        await eventually(lambda: a.events("start") and b.events("start"))
        await driver.talk(ramp(1600))
        call = await db(Call.objects.get)(account=account)
        url = f"{hub.http}/v1/Account/{account.auth_id}/Call/{call.call_uuid}/"
        response = await asyncio.to_thread(requests.delete, url, auth=(account.auth_id, account.auth_token), timeout=10)
        assert response.status_code == 204
        assert await asyncio.wait_for(driver.closed_by_hub(), 10)  # Asterisk: HANGUP, then the close
        await eventually(db(lambda: len([s for s in stream_rows(account=account) if s.end_time]) == 2))
    streams = await db(stream_rows)(account=account)
    assert {(s.status, s.hangup_reason) for s in streams} == {("stopped", "Call hangup")}
    assert (await db(Call.objects.get)(pk=call.pk)).status == "ended"


async def test_a_stream_ends_on_its_timeout_or_when_its_customer_leaves_and_the_call_goes_on(
    driver: GatewayDriver, account: Account
) -> None:
    async with Customer() as timed, Customer(close_after=10) as leaving, Customer() as staying:
        await driver.open(
            [{"serviceUrl": timed.url, "streamTimeout": 1}, {"serviceUrl": leaving.url}, {"serviceUrl": staying.url}]
        )
        talking = asyncio.create_task(driver.talk(ramp(8000 * 3)))
        timed_out = await ended_stream(account=account, service_url=timed.url)
        left = await ended_stream(account=account, service_url=leaving.url)
        await talking
        await eventually(lambda: len(spoken(payloads(staying))) == 8000 * 3 * 2)
        await driver.hang_up()
        stayed = await ended_stream(account=account, service_url=staying.url)
    assert (timed_out.status, timed_out.hangup_reason) == ("stopped", "Stream timeout")
    assert 1 <= timed_out.duration <= 3
    assert (left.status, left.hangup_reason) == ("failed", "Connection error")
    assert "1000" in left.last_error and leaving.attempts == 1  # D5: no reconnect
    assert stayed.hangup_reason == "Call hangup"


# --- bidirectional ------------------------------------------------------------------


@pytest.mark.both_servers
async def test_played_stream_follows_the_last_frame_the_caller_hears_and_the_audio_is_exact(
    driver: GatewayDriver, account: Account
) -> None:
    clip = ramp(8000)  # 1 s
    checkpoint = json.dumps({"event": "checkpoint", "streamId": "x", "name": "one-second"})
    async with TimedCustomer(reply=on_start(play(clip), checkpoint)) as customer:
        await driver.open([{"serviceUrl": customer.url, "bidirectional": True}])
        await driver.talk(ramp(160))
        await eventually(lambda: "one-second" in customer.times, timeout=10)
        await driver.hang_up()
        stream = await ended_stream(account=account)
    frames = driver.played()
    assert b"".join(f for _, f in frames) == clip  # byte for byte
    assert {len(f) for _, f in frames} == {320}
    first, last, acked = frames[0][0], frames[-1][0], customer.times["one-second"]
    assert acked >= last - 0.005, "playedStream before the caller heard the clip's last frame"
    assert acked - last <= 0.060
    assert 0.90 <= acked - first <= 1.12
    played = customer.events("playedStream")
    assert played == [
        {
            "event": "playedStream",
            "sequenceNumber": played[0]["sequenceNumber"],
            "streamId": str(stream.stream_id),
            "name": "one-second",
        }
    ]
    assert stream.played_ms == 1000


async def test_clear_audio_stops_playback_at_once_and_drops_its_checkpoints(
    driver: GatewayDriver, account: Account
) -> None:
    state: dict[str, ServerConnection] = {}
    checkpoint = json.dumps({"event": "checkpoint", "name": "ten-seconds"})
    async with TimedCustomer(reply=on_start(play(tone(10_000)), checkpoint, keep=state)) as customer:
        await driver.open([{"serviceUrl": customer.url, "bidirectional": True}])
        await driver.talk(ramp(160))
        await eventually(lambda: len(driver.played()) >= 40)
        cleared_at = time.monotonic()
        await state["conn"].send(json.dumps({"event": "clearAudio", "streamId": "x"}))
        await eventually(lambda: "clearedAudio" in customer.times)
        await asyncio.sleep(0.3)
        late = [t for t, _ in driver.played() if t > cleared_at + 0.025]
        assert len(late) <= 1, f"{len(late)} frames played after clearAudio"
        assert driver.cleared()  # the gateway dropped what it had buffered
        await state["conn"].send(play(ramp(1600)))
        await state["conn"].send(json.dumps({"event": "checkpoint", "name": "next"}))
        await eventually(lambda: "next" in customer.times)
        await driver.hang_up()
        stream = await ended_stream(account=account)
    assert "ten-seconds" not in customer.times  # D12: dropped without playedStream
    assert b"".join(f for _, f in driver.played()).endswith(ramp(1600))
    clear = [params for name, _, params in await db(events_of)(stream) if name == "ClearAudio"]
    assert clear and clear[0]["CheckpointsDropped"] == "ten-seconds"


async def test_dtmf_flows_from_the_caller_and_send_dtmf_does_what_the_gateway_can(
    driver: GatewayDriver, account: Account
) -> None:
    checkpoint = json.dumps({"event": "checkpoint", "name": "nothing-queued"})
    send_dtmf = json.dumps({"event": "sendDTMF", "dtmf": "1234#"})
    async with TimedCustomer(reply=on_start(checkpoint, send_dtmf)) as customer:
        await driver.open([{"serviceUrl": customer.url, "bidirectional": True}])
        await driver.talk(ramp(160))
        await eventually(lambda: "nothing-queued" in customer.times)  # acknowledged at once
        await driver.dtmf("7")
        await eventually(lambda: customer.events("dtmf"))
        stream_row = await eventually(db(lambda: StreamEvent.objects.filter(event="SendDTMF").first()))
        if driver.has_dtmf_command:
            await eventually(lambda: driver.dtmf_played() == ["1234#"])
        await driver.hang_up()
    dtmf = customer.events("dtmf")[0]
    assert dtmf["dtmf"]["digit"] == "7" and dtmf["dtmf"]["track"] == "inbound"
    if driver.has_dtmf_command:
        assert stream_row.error == ""
    else:
        assert stream_row.error == "this gateway has no DTMF command" and driver.dtmf_played() == []
    seqs = [m["sequenceNumber"] for m in customer.messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
