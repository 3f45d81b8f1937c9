"""Bidirectional streams end to end: playAudio, checkpoint, clearAudio, DTMF, the outbound track."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import warnings
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from streams.models import Account, StreamEvent
from tests.conftest import Proc
from tests.e2e.test_relay import ended_stream, gateway_for
from tests.support import Customer, TimedCustomer, TimedGateway, db, eventually, ramp, tone

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def play_l16(pcm: bytes, rate: int = 8000) -> str:
    return json.dumps(
        {
            "event": "playAudio",
            "media": {"contentType": "audio/x-l16", "sampleRate": rate, "payload": base64.b64encode(pcm).decode()},
        }
    )


def bidi_meta(url: str, **extra: Any) -> dict[str, Any]:
    return {"streams": [{"serviceUrl": url, "bidirectional": True, **extra}]}


@pytest.mark.both_servers
async def test_played_stream_follows_the_last_frame_and_audio_is_exact(hub: Proc, account: Account) -> None:
    clip = ramp(8000)  # 1 s

    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await conn.send(play_l16(clip))
            await conn.send(json.dumps({"event": "checkpoint", "streamId": "x", "name": "one-second"}))

    async with TimedCustomer(reply=reply) as customer:
        gw = TimedGateway(f"{hub.ws}/ingest/audio-fork", gateway_for(hub, account).headers)
        await gw.open(bidi_meta(customer.url))
        await gw.send(ramp(160))
        await eventually(lambda: "one-second" in customer.times, timeout=10)
        await gw.close()
        stream = await ended_stream(account=account)

    frames = [(t, m) for t, m in gw.arrivals if isinstance(m, bytes)]
    assert b"".join(m for _, m in frames) == clip  # byte for byte
    assert {len(m) for _, m in frames} == {320}
    first, last = frames[0][0], frames[-1][0]
    acked = customer.times["one-second"]
    # Two sockets read by one test process: which reader runs first is the test's scheduling, not
    # the hub's order, so allow less than one frame period (a playedStream a frame early still fails).
    assert acked >= last - 0.015, "playedStream before the clip's last frame left"
    assert acked - last <= 0.040
    assert 0.90 <= acked - first <= 1.10  # ~980 ms after the first frame (D10)
    played = next(m for m in customer.messages if m.get("event") == "playedStream")
    assert played == {
        "event": "playedStream",
        "sequenceNumber": played["sequenceNumber"],
        "streamId": str(stream.stream_id),
        "name": "one-second",
    }
    assert stream.played_ms == 1000
    names = await db(lambda: list(StreamEvent.objects.filter(stream=stream).values_list("event", flat=True)))()
    assert "Checkpoint" in names


@pytest.mark.both_servers
async def test_clear_audio_stops_playback_within_a_frame_and_drops_its_checkpoints(hub: Proc, account: Account) -> None:
    state: dict[str, Any] = {}

    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await conn.send(play_l16(tone(10_000)))
            await conn.send(json.dumps({"event": "checkpoint", "name": "ten-seconds"}))
            state["conn"] = conn

    async with TimedCustomer(reply=reply) as customer:
        gw = TimedGateway(f"{hub.ws}/ingest/audio-fork", gateway_for(hub, account).headers)
        await gw.open(bidi_meta(customer.url))
        await gw.send(ramp(160))
        await eventually(lambda: sum(isinstance(m, bytes) for _, m in gw.arrivals) >= 40)
        cleared_at = time.monotonic()
        await state["conn"].send(json.dumps({"event": "clearAudio", "streamId": "x"}))
        await eventually(lambda: "clearedAudio" in customer.times)
        await asyncio.sleep(0.3)
        after = [t for t, m in gw.arrivals if isinstance(m, bytes) and t > cleared_at + 0.025]
        assert len(after) <= 1, f"{len(after)} frames left after clearAudio"
        # the gateway was told to drop what it buffered
        assert any(isinstance(m, str) and json.loads(m) == {"type": "killAudio"} for _, m in gw.arrivals)
        # the next clip plays normally
        await state["conn"].send(play_l16(ramp(1600)))
        await state["conn"].send(json.dumps({"event": "checkpoint", "name": "next"}))
        await eventually(lambda: "next" in customer.times)
        await gw.close()
        stream = await ended_stream(account=account)
    assert "ten-seconds" not in customer.times  # D12: dropped without playedStream
    assert gw.audio.endswith(ramp(1600))
    events = await db(lambda: list(StreamEvent.objects.filter(stream=stream, event="ClearAudio")))()
    assert events and events[0].params["CheckpointsDropped"] == "ten-seconds"


@pytest.mark.both_servers
async def test_checkpoint_with_nothing_queued_is_acked_at_once_and_dtmf_flows_both_ways(
    hub: Proc, account: Account
) -> None:
    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await conn.send(json.dumps({"event": "checkpoint", "name": "nothing-queued"}))
            await conn.send(json.dumps({"event": "sendDTMF", "dtmf": "1234#"}))

    async with TimedCustomer(reply=reply) as customer:
        gw = await gateway_for(hub, account).open(bidi_meta(customer.url))
        await gw.send(ramp(160))
        await eventually(lambda: "nothing-queued" in customer.times)
        await eventually(lambda: {"type": "sendDTMF", "data": {"dtmf": "1234#"}} in gw.texts)
        await gw.send('{"event":"dtmf","dtmf":"7","duration":80}')
        await eventually(lambda: customer.events("dtmf"))
        await gw.close()
    assert customer.events("dtmf")[0]["dtmf"]["digit"] == "7"
    seqs = [m["sequenceNumber"] for m in customer.messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_played_audio_is_the_outbound_track_of_another_stream(hub: Proc, account: Account) -> None:
    clip = ramp(1600, start=5000)

    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await conn.send(play_l16(clip))

    async with Customer(reply=reply) as bot, Customer() as recorder:
        gw = await gateway_for(hub, account).open(
            {
                "streams": [
                    {"serviceUrl": bot.url, "bidirectional": True},
                    {"serviceUrl": recorder.url, "audioTrack": "both"},
                ]
            }
        )
        await eventually(lambda: bot.events("start") and recorder.events("start"))
        await gw.send_frames(ramp(8000), interval=0.02)  # 1 s of caller audio on the real clock
        await eventually(lambda: len(recorder.events("media")) >= 100)
        await gw.close()
    assert recorder.events("start")[0]["start"]["tracks"] == ["inbound", "outbound"]
    media = recorder.events("media")
    inbound = [m for m in media if m["media"]["track"] == "inbound"]
    outbound = [m for m in media if m["media"]["track"] == "outbound"]
    assert len(inbound) == len(outbound) == 50  # both keep the 20 ms cadence
    out_frames = [base64.b64decode(m["media"]["payload"]) for m in outbound]
    # What the bot played, in order, with silence around it; on a starved machine a played frame can
    # miss its inbound tick and a silent frame sits between two played ones: the track is what the
    # call heard when, so the test takes the played frames in order rather than one unbroken run.
    assert all(len(f) == 320 for f in out_frames)
    assert b"".join(f for f in out_frames if f != bytes(320)) == clip


async def test_bad_customer_input_is_logged_and_the_stream_goes_on(hub: Proc, account: Account) -> None:
    bad = [
        "{not json",
        '{"event":"dance"}',
        '{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":8000}}',
        '{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":8000,"payload":"%%%"}}',
        '{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":24000,"payload":"AAAA"}}',
        json.dumps({"event": "playAudio", "pad": "x" * (1024 * 1024 + 10)}),
    ]

    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            for text in bad:
                await conn.send(text)
            await conn.send(
                json.dumps(
                    {
                        "event": "playAudio",
                        "media": {
                            "contentType": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "payload": base64.b64encode(b"\x10" * 160).decode(),
                        },
                    }
                )
            )
            await conn.send(json.dumps({"event": "checkpoint", "name": "ok"}))

    async with Customer(reply=reply) as customer:
        gw = await gateway_for(hub, account).open(bidi_meta(customer.url))
        await gw.send(ramp(160))
        await eventually(lambda: customer.events("playedStream"))
        await gw.close()
        stream = await ended_stream(account=account)
    assert gw.audio == audioop.ulaw2lin(b"\x10" * 160, 2)
    rows = await db(lambda: list(StreamEvent.objects.filter(stream=stream).values_list("event", "error")))()
    errors = [error for event, error in rows if event in ("InvalidMessage", "IgnoredMessage")]
    assert len(errors) == 6
    assert any("invalid JSON" in e for e in errors) and any("dance" in e for e in errors)
    assert any("base64" in e for e in errors) and any("24000" in e for e in errors)
    assert any("limit" in e for e in errors)
    assert stream.hangup_reason == "Call hangup"


async def test_a_unidirectional_stream_ignores_customer_messages(hub: Proc, account: Account) -> None:
    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await conn.send(play_l16(ramp(320)))

    async with Customer(reply=reply) as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        await gw.send(ramp(160))
        stream = await eventually(db(lambda: StreamEvent.objects.filter(event="IgnoredMessage").first()))
        await gw.close()
    assert "not bidirectional" in stream.error
    assert gw.audio == b""
