"""The hub never claims playback a gateway cannot do (decision in docs/freeswitch.md).

The drachtio build of mod_audio_fork discards the hub's audio, and it offers the same
subprotocol (audio.drachtio.org) as the jambonz build, which plays it. So an audio-fork
connection plays only when its metadata says `"playback": true`, or when it offers jambonz's
own subprotocol (audio.jambonz.org) and does not say `"playback": false`. A bidirectional
stream requested in the metadata of a connection that cannot play is made one-way (the gateway
gets an error frame, the stream's debug log says why); one requested over REST is refused
with a 400, since that caller can hear the answer.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import pytest
import requests
from websockets.asyncio.server import ServerConnection

from streams.models import Account, Call, Stream, StreamEvent
from tests.conftest import Proc
from tests.e2e.test_bidirectional import play_l16
from tests.support import Customer, Gateway, basic_auth, db, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DRACHTIO = "audio.drachtio.org"
JAMBONZ = "audio.jambonz.org"


def talking_bot() -> Customer:
    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await conn.send(play_l16(ramp(1600)))  # 200 ms
            await conn.send(json.dumps({"event": "checkpoint", "name": "spoken"}))

    return Customer(reply=reply)


async def place_call(
    hub: Proc, account: Account, bot: Customer, *, subprotocol: str, playback: bool | None
) -> tuple[Gateway, Stream]:
    meta: dict[str, Any] = {"streams": [{"serviceUrl": bot.url, "bidirectional": "true"}]}
    if playback is not None:
        meta["playback"] = playback
    gw = Gateway(f"{hub.ws}/ingest/audio-fork", basic_auth(account.auth_id, account.auth_token), subprotocol)
    await gw.open(meta)
    assert gw.ws is not None and gw.ws.subprotocol == subprotocol
    await gw.send_frames(ramp(160 * 25), interval=0.02)  # half a second of caller audio
    stream = await eventually(
        db(lambda: Stream.objects.filter(account=account, status="in-progress").select_related("call").first())
    )
    return gw, stream


@pytest.mark.parametrize(
    ("subprotocol", "playback", "note"),
    [
        (DRACHTIO, None, 'subprotocol audio.drachtio.org, without "playback": true in the metadata'),
        (JAMBONZ, False, 'the gateway declared "playback": false'),
    ],
)
async def test_a_gateway_that_cannot_play_gets_a_one_way_stream_and_no_false_acks(
    hub: Proc, account: Account, subprotocol: str, playback: bool | None, note: str
) -> None:
    reason = f"this gateway connection cannot play audio into the call ({note})"
    async with talking_bot() as bot:
        gw, stream = await place_call(hub, account, bot, subprotocol=subprotocol, playback=playback)
        assert not stream.bidirectional
        await eventually(lambda: bot.events("media"))
        await eventually(db(lambda: StreamEvent.objects.filter(stream=stream, event="IgnoredMessage").exists()))

        # the call's own REST API refuses what the gateway cannot do, and accepts the one-way stream
        path = f"{hub.http}/v1/Account/{account.auth_id}/Call/{stream.call.call_uuid}/Stream/"
        auth = (account.auth_id, account.auth_token)
        post = partial(requests.post, path, auth=auth, timeout=10)
        refused = await asyncio.to_thread(post, json={"service_url": bot.url + "2", "bidirectional": True})
        assert refused.status_code == 400
        assert refused.json()["error"] == f"bidirectional: {reason}; start the stream with bidirectional=false"
        one_way = await asyncio.to_thread(post, json={"service_url": bot.url + "2"})
        assert one_way.status_code == 201

        await gw.close()
        await eventually(db(lambda: not Stream.objects.filter(account=account, end_time=None).exists()))

    assert gw.texts[0] == {"type": "error", "data": {"error": f"streams[0] is one-way: {reason}"}}
    assert gw.audio == b""  # nothing was sent for the module to discard
    assert bot.events("playedStream") == []  # and nothing was acknowledged as heard
    events = await db(lambda: list(StreamEvent.objects.filter(stream=stream).order_by("id")))()
    downgraded = next(e for e in events if e.event == "PlaybackUnavailable")
    assert downgraded.error == f"bidirectional refused, the stream is one-way: {reason}"
    assert downgraded.params["bidirectional"] == "false"
    call = await db(lambda: Call.objects.get(pk=stream.call_id))()
    assert call.gateway_metadata["playback"] is False and call.gateway_metadata["playbackNote"] == note
    assert f"stream {stream.stream_id}: bidirectional refused, the stream is one-way" in hub.log()


@pytest.mark.parametrize(("subprotocol", "playback"), [(DRACHTIO, True), (JAMBONZ, None), (JAMBONZ, True)])
async def test_a_gateway_that_plays_gets_its_bidirectional_stream(
    hub: Proc, account: Account, subprotocol: str, playback: bool | None
) -> None:
    async with talking_bot() as bot:
        gw, stream = await place_call(hub, account, bot, subprotocol=subprotocol, playback=playback)
        assert stream.bidirectional
        await eventually(lambda: bot.events("playedStream"))
        await gw.close()
    assert not any(m.get("type") == "error" for m in gw.texts)
    events = await db(lambda: list(StreamEvent.objects.filter(stream=stream).values_list("event", flat=True)))()
    assert "PlaybackUnavailable" not in events
    played, frame = ramp(1600), 320  # 20 ms of L16 at 8 kHz
    if len(gw.audio) < len(played):
        # a stall of the loop (a loaded CI machine): the pacer skips the late frames to stay on
        # time, says so in the debug log, and what did go out is whole frames of the ramp, in order
        assert "PlaybackStall" in events, (len(gw.audio), events)
        offsets = [played.find(gw.audio[i : i + frame]) for i in range(0, len(gw.audio), frame)]
        assert all(o >= 0 and o % frame == 0 for o in offsets) and offsets == sorted(set(offsets)), offsets
    else:
        assert gw.audio.startswith(played)
