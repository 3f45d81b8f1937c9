"""What only the Asterisk framing has, end to end: a real hub, FakeAsterisk, a real customer.

Codecs (ulaw, slin, slin16) both ways, both control formats, silent gaps and short frames,
truthful marks, flush, XOFF/XON, the upgrade, refused codecs, garbage and the three ways
Asterisk hangs up. The shared scenarios are in test_acceptance.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
import warnings
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidStatus

from streams.models import Account, Call, Stream, StreamEvent
from tests.conftest import Proc
from tests.live.asterisk.fake_asterisk import FakeAsterisk, basic_auth
from tests.live.asterisk.support import checkpoint, ended_stream, on_start, payloads, play, stream_rows
from tests.support import Customer, TimedCustomer, db, eventually, ramp, tone

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def fake_for(hub: Proc, account: Account, **kw: Any) -> FakeAsterisk:
    return FakeAsterisk(f"{hub.ws}/ingest/asterisk", basic_auth(account.auth_id, account.auth_token), **kw)


SILENCE_RUN = re.compile(rb"\x00{8,}")


class SilenceInsideSpeech(AssertionError):
    """Gap-filling silence landed inside a burst of the caller's speech."""


async def test_slin_with_silent_gaps_reaches_the_customer_byte_for_byte_where_the_clock_puts_it(
    hub: Proc, account: Account
) -> None:
    burst1 = ramp(4050, start=1)  # 25 frames and a short 100-byte last frame
    burst2 = ramp(2530, start=20000)  # 15 frames and a short 260-byte last frame
    async with Customer() as customer:
        began = time.monotonic()
        fake = await fake_for(hub, account, params={"serviceUrl": customer.url}, codec="slin").dial()
        await eventually(lambda: customer.events("start"))
        t1 = time.monotonic()
        await fake.talk(burst1)
        await asyncio.sleep(1.0)  # the caller is silent: Asterisk sends nothing at all
        t2 = time.monotonic()
        await fake.talk(burst2)
        await asyncio.sleep(0.5)
        ended = time.monotonic()
        await fake.hang_up()
        stream = await ended_stream(account=account)
    frames = payloads(customer)
    assert {len(f) for f in frames} == {320}  # D9: the short frames were re-framed
    audio = b"".join(frames)
    # these ramps never hold more than two zero bytes in a row: longer runs are the hub's silence
    assert b"".join(SILENCE_RUN.split(audio)) == burst1 + burst2  # nothing lost, nothing invented
    i1, i2 = audio.find(burst1), audio.find(burst2[:320])
    assert abs((i2 - i1) / 16000 - (t2 - t1)) <= 0.08  # the second burst sits where the wall clock puts it
    assert ended - began - 0.3 <= len(frames) * 0.020 <= ended - began + 0.02  # 20 ms cadence, silence included
    assert stream.hangup_reason == "Call hangup"
    call = await db(Call.objects.get)(pk=stream.call_id)
    assert call.gateway_metadata["raw"]["media_start"]["format"] == "slin"
    if i1 < 0 or audio.find(burst2) < 0:
        runs = [m.span() for m in SILENCE_RUN.finditer(audio)]
        raise SilenceInsideSpeech(f"silence at byte spans {runs}")


async def test_a_plain_text_ulaw_call_gets_plain_commands_true_marks_and_flushes(hub: Proc, account: Account) -> None:
    greeting = audioop.lin2ulaw(tone(500, freq=350), 2)  # 25 ulaw frames
    caller = [audioop.lin2ulaw(tone(300, freq=500, phase=k * 100), 2) for k in range(2)]
    state: dict[str, ServerConnection] = {}
    reply = on_start(play(greeting, "audio/x-mulaw", 8000), checkpoint("greeting"), keep=state)
    async with TimedCustomer(reply=reply) as customer:
        params = {
            "callId": "1795636860.2",  # Asterisk's ${UNIQUEID}: not a UUID (D1)
            "from": "1001",
            "to": "2000",
            "serviceUrl": customer.url,
            "bidirectional": "true",
            "contentType": "audio/x-mulaw;rate=8000",
        }
        fake = await fake_for(hub, account, params=params, codec="ulaw", json_mode=False).dial()
        await eventually(lambda: customer.events("start"))
        await fake.talk(caller[0])
        await asyncio.sleep(0.3)
        await fake.dtmf("5")
        await fake.talk(caller[1])
        await eventually(lambda: "greeting" in customer.times)
        await state["conn"].send(play(audioop.lin2ulaw(tone(5000), 2), "audio/x-mulaw", 8000))
        await state["conn"].send(checkpoint("long"))
        await eventually(lambda: len(fake.played) >= 35)
        await state["conn"].send(json.dumps({"event": "clearAudio"}))
        await eventually(lambda: "clearedAudio" in customer.times)
        await eventually(lambda: fake.queue.length == 0)
        await fake.hang_up()
        stream = await ended_stream(account=account)

    assert customer.events("start")[0]["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000}
    inbound = payloads(customer)
    assert {len(f) for f in inbound} == {160}
    assert b"".join(f for f in inbound if f != b"\xff" * 160) == b"".join(caller)  # μ-law in, μ-law out, exact
    assert [m["dtmf"]["digit"] for m in customer.events("dtmf")] == ["5"]
    assert fake.heard.startswith(greeting)  # what the bot played, exactly, in 160-byte frames
    assert set(fake.binary_sizes) == {160}
    # commands in the call's plain-text format, every one understood
    assert [text for _, text in fake.commands] == ["MARK_MEDIA m1", "FLUSH_MEDIA"]
    assert fake.unknown_commands == []
    marked_at, correlation_id = fake.marks_processed[0]
    assert correlation_id == "m1"
    assert marked_at - 0.005 <= customer.times["greeting"] <= marked_at + 0.1  # acked by Asterisk itself
    assert "long" not in customer.times  # flushed with its audio (D12)
    call = await db(Call.objects.get)(pk=stream.call_id)
    assert call.gateway_metadata["gateway_call_id"] == "1795636860.2" and call.from_number == "1001"
    assert str(call.call_uuid) != "1795636860.2"
    uuid.UUID(str(call.call_uuid))
    assert call.gateway_metadata["raw"]["media_start"]["control_format"] == "plain-text"


async def test_slin16_flows_both_ways_byte_for_byte_with_the_stream_from_channel_variables(
    hub: Proc, account: Account
) -> None:
    clip = ramp(8000, start=-4000)  # 0.5 s at 16 kHz
    spoken = ramp(8000, start=11)
    async with TimedCustomer(reply=on_start(play(clip, "audio/x-l16", 16000), checkpoint("clip"))) as customer:
        variables = {"serviceUrl": customer.url, "bidirectional": "true", "contentType": "audio/x-l16;rate=16000"}
        fake = await fake_for(hub, account, params={"from": "1001"}, codec="slin16", channel_variables=variables).dial()
        await eventually(lambda: customer.events("start"))
        await fake.talk(spoken)
        await eventually(lambda: "clip" in customer.times)
        await fake.hang_up()
        stream = await ended_stream(account=account)
    assert customer.events("start")[0]["start"]["mediaFormat"] == {"encoding": "audio/x-l16", "sampleRate": 16000}
    inbound = payloads(customer)
    assert {len(f) for f in inbound} == {640}
    assert b"".join(f for f in inbound if f != b"\x00" * 640) == spoken
    assert fake.heard == clip and set(fake.binary_sizes) == {640}
    call = await db(Call.objects.get)(pk=stream.call_id)
    assert call.gateway_metadata["gateway_call_id"] == fake.channel_id  # no callId: the channel's id (D1)


async def test_playback_stops_at_xoff_resumes_at_xon_and_loses_nothing(hub: Proc, account: Account) -> None:
    clip = ramp(8000 * 3)  # 150 frames
    async with TimedCustomer(reply=on_start(play(clip, "audio/x-l16", 8000), checkpoint("all"))) as customer:
        # Asterisk's levels (900/800 of 1000) scaled down 20x so the queue fills in a second;
        # FrameQueue's own tests hold it to the real numbers.
        fake = fake_for(
            hub,
            account,
            params={"serviceUrl": customer.url, "bidirectional": "true"},
            xoff_level=45,
            xon_level=40,
            max_length=50,
        )
        fake.queue.paused = True  # playout stalled: the queue fills at the hub's 50 frames a second
        await fake.dial()
        await eventually(lambda: any("MEDIA_XOFF" in e for e in fake.events_sent), timeout=5)
        await asyncio.sleep(0.5)
        held = len(fake.binary_sizes)
        assert 45 <= held <= 47, f"{held} frames sent while Asterisk said XOFF"
        fake.queue.paused = False
        await eventually(lambda: "all" in customer.times, timeout=10)
        await fake.hang_up()
    assert any("MEDIA_XON" in e for e in fake.events_sent)
    assert fake.queue.dropped_messages == 0 and fake.queue.dropped_tail_bytes == 0
    assert fake.heard == clip  # every frame, in order
    assert set(fake.binary_sizes) == {320} and fake.close_code != 1009  # never a message Asterisk would hang up on
    assert customer.times["all"] >= fake.marks_processed[-1][0]


async def test_the_upgrade_takes_media_without_compression_and_refuses_bad_credentials_and_codecs(
    hub: Proc, account: Account
) -> None:
    url = f"{hub.ws}/ingest/asterisk"
    headers = basic_auth(account.auth_id, account.auth_token)
    ws = await connect(url, additional_headers=headers, subprotocols=["media"], compression="deflate")  # type: ignore[list-item]
    assert ws.subprotocol == "media" and ws.response is not None
    assert "Sec-WebSocket-Extensions" not in ws.response.headers  # Asterisk refuses a compressed handshake
    await ws.close()
    for bad in ({}, basic_auth(account.auth_id, "wrong-token")):
        with pytest.raises(InvalidStatus) as info:
            await FakeAsterisk(url, bad).dial()
        assert info.value.response.status_code == 403

    refused = []
    for json_mode, fmt in ((True, "alaw"), (False, "opus")):
        fake = await fake_for(hub, account, json_mode=json_mode).dial(send_media_start=False)
        await fake.send_text(fake.media_start_text(fmt))
        await asyncio.wait_for(fake.wait_closed(), 5)
        refused.append(fake)
    assert [text for _, text in refused[0].commands] == ['{"command":"HANGUP"}']
    assert [text for _, text in refused[1].commands] == ["HANGUP"]
    assert all(f.hangup_received and f.closed for f in refused)
    assert "unsupported format alaw" in hub.log() and "unsupported format opus" in hub.log()
    assert await db(Call.objects.count)() == 0


async def test_gateway_garbage_and_unrequested_events_are_logged_and_the_call_goes_on(
    hub: Proc, account: Account
) -> None:
    async with Customer() as customer:
        params = {"serviceUrl": customer.url, "streams": json.dumps([{"serviceUrl": "http://not-a-ws-url"}])}
        fake = await fake_for(hub, account, params=params).dial(send_media_start=False)
        await fake.send_binary(ramp(160, start=9000))  # before MEDIA_START: nobody's audio yet
        await fake.send_text(fake.media_start_text())
        await eventually(lambda: customer.events("start"))
        await fake.talk(ramp(160))
        for text in (
            "{oops",
            "hello world",
            '{"event":"WEIRD"}',
            fake.event_text("ERROR", error_text="Unable to parse JSON command"),
            fake.event_text("STATUS", queue_length="0", xon_level="800", xoff_level="900"),
            fake.event_text("QUEUE_DRAINED"),
            fake.media_start_text(),
            fake.event_text("DTMF_END", digit="Z"),
        ):
            await fake.send_text(text)
        await fake.send_binary(b"\x01\x02\x03")
        await fake.dtmf("9")
        await fake.talk(ramp(160, start=160))
        await eventually(lambda: customer.events("dtmf") and ramp(320) in b"".join(payloads(customer)))
        await fake.hang_up()
        stream = await ended_stream(account=account)
    assert b"".join(f for f in payloads(customer) if f != b"\x00" * 320) == ramp(320)
    assert [m["dtmf"]["digit"] for m in customer.events("dtmf")] == ["9"]
    rows = await db(lambda: list(StreamEvent.objects.filter(stream=stream).values_list("event", "error")))()
    by_kind: dict[str, list[str]] = {}
    for event, error in rows:
        by_kind.setdefault(event, []).append(error)
    assert len(by_kind["GatewayInvalidMessage"]) == 4
    assert any("invalid JSON" in e for e in by_kind["GatewayInvalidMessage"])
    assert any("second MEDIA_START" in e for e in by_kind["GatewayInvalidMessage"])
    assert any("DTMF_END" in e for e in by_kind["GatewayInvalidMessage"])
    assert by_kind["GatewayError"] == ["Asterisk: Unable to parse JSON command"]
    assert len(by_kind["GatewayMessage"]) == 3
    assert len(by_kind["GatewayInvalidFrame"]) == 1
    assert stream.hangup_reason == "Call hangup"
    # the refused second stream is reported in the hub's log: Asterisk has no message to read it in
    assert "streams[1] refused" in hub.log()
    assert fake.commands == [] and fake.unknown_commands == []
    assert await db(lambda: Stream.objects.count())() == 1


async def test_asterisk_closing_cleanly_or_not_is_a_call_hangup_for_every_stream(hub: Proc, account: Account) -> None:
    async with Customer() as a, Customer() as b, Customer() as c:
        fakes = [await fake_for(hub, account, params={"serviceUrl": x.url}).dial() for x in (a, b, c)]
        await eventually(lambda: all(x.events("start") for x in (a, b, c)))
        await asyncio.gather(*(f.talk(ramp(800)) for f in fakes))
        await fakes[0].hang_up(1000)  # the caller hung up
        await fakes[1].hang_up(1001)  # Asterisk's answer to a close
        await fakes[2].drop()  # "closed abruptly"
        await eventually(db(lambda: len([s for s in stream_rows(account=account) if s.end_time]) == 3))
        await eventually(db(lambda: Call.objects.filter(status="ended").count() == 3))
    streams = await db(stream_rows)(account=account)
    assert {(s.status, s.hangup_reason) for s in streams} == {("stopped", "Call hangup")}
