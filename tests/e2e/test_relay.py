"""The relay end to end: a real hub (daphne subprocess), a gateway client, a customer server."""

from __future__ import annotations

import asyncio
import base64
import uuid
from decimal import Decimal

import pytest
import websockets

from streams.models import Account, Call, Stream, StreamEvent
from tests.conftest import Proc
from tests.support import Customer, Gateway, basic_auth, db, eventually, ramp, tone

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def gateway_for(hub: Proc, account: Account) -> Gateway:
    return Gateway(f"{hub.ws}/ingest/audio-fork", basic_auth(account.auth_id, account.auth_token))


def stream_rows(**filters: object) -> list[Stream]:
    return list(Stream.objects.filter(**filters).select_related("call").order_by("created_at"))


def events_of(stream: Stream) -> list[str]:
    return list(StreamEvent.objects.filter(stream=stream).values_list("event", flat=True))


async def ended_stream(**filters: object) -> Stream:
    rows = await eventually(db(lambda: [s for s in stream_rows(**filters) if s.end_time is not None]), timeout=15)
    return rows[0]


@pytest.mark.both_servers
async def test_it_relays_l16_byte_for_byte_and_ends_on_hangup(hub: Proc, account: Account) -> None:
    call_id = str(uuid.uuid4())
    pcm = ramp(8000 * 2)  # 2 s, every sample distinct
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open(
            {
                "callId": call_id,
                "from": "+14155550100",
                "to": "+14155550199",
                "streams": [
                    {
                        "serviceUrl": customer.url,
                        "extraHeaders": "tenant=acme,agent=7",
                        "statusCallbackUrl": "http://127.0.0.1:9/cb",
                    }
                ],
            }
        )
        await eventually(lambda: customer.events("start"))
        await gw.send_frames(pcm, interval=0.005)
        await eventually(lambda: len(customer.events("media")) >= 100)
        await gw.close()
        stream = await ended_stream(call__call_uuid=call_id)

    start = customer.messages[0]
    assert start["event"] == "start" and start["sequenceNumber"] == 1
    assert start["start"] == {
        "callId": call_id,
        "streamId": str(stream.stream_id),
        "accountId": account.auth_id,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 8000},
    }
    assert start["extra_headers"] == "tenant=acme,agent=7"
    media = customer.events("media")
    assert len(media) == 100
    assert [m["sequenceNumber"] for m in media] == list(range(2, 102))
    assert [m["media"]["chunk"] for m in media] == list(range(1, 101))
    first_ts = int(media[0]["media"]["timestamp"])
    for m in media:
        assert set(m) == {"event", "sequenceNumber", "streamId", "media", "extra_headers"}
        assert set(m["media"]) == {"track", "timestamp", "chunk", "payload"}
        assert m["streamId"] == str(stream.stream_id) and m["media"]["track"] == "inbound"
        assert isinstance(m["media"]["timestamp"], str)
        assert int(m["media"]["timestamp"]) == first_ts + 20 * (m["media"]["chunk"] - 1)  # D8
        assert m["extra_headers"] == "tenant=acme,agent=7"
    assert b"".join(base64.b64decode(m["media"]["payload"]) for m in media) == pcm
    # the upgrade is signed (D22)
    assert "X-Plivo-Signature-V3" in customer.headers[0] and "X-Plivo-Signature-V3-Nonce" in customer.headers[0]

    assert stream.status == "stopped" and stream.hangup_reason == "Call hangup"
    assert stream.start_time is not None and stream.end_time is not None
    assert stream.rounded_bill_duration == 60 and stream.billed_amount == Decimal("0.00300")
    assert stream.frames_sent >= 100
    names = await db(events_of)(stream)
    assert names[0] == "StreamCreated" and "Connected" in names and "StartStream" in names
    assert names[-1] == "StopStream"
    call = await db(Call.objects.get)(call_uuid=call_id)
    assert call.status == "ended" and call.from_number == "+14155550100"


@pytest.mark.parametrize(
    ("content_type", "gateway_rate", "frame", "bound"),
    [
        ("audio/x-mulaw;rate=8000", 8000, 160, 0.03),
        ("audio/x-l16;rate=16000", 8000, 640, 0.05),
        ("audio/x-l16;rate=8000", 16000, 320, 0.05),
    ],
)
async def test_it_transcodes_with_exact_frame_sizes(
    hub: Proc, account: Account, content_type: str, gateway_rate: int, frame: int, bound: float
) -> None:
    import audioop

    pcm = tone(1000, rate=gateway_rate, freq=300)
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open(
            {"sampleRate": gateway_rate, "streams": [{"serviceUrl": customer.url, "contentType": content_type}]}
        )
        await eventually(lambda: customer.events("start"))
        await gw.send_frames(pcm, frame_bytes=gateway_rate // 25, interval=0.002)
        await eventually(lambda: len(customer.events("media")) >= 48)
        await gw.close()
    payloads = [base64.b64decode(m["media"]["payload"]) for m in customer.events("media")]
    assert {len(p) for p in payloads} == {frame}  # D9: every frame its exact size
    start = customer.events("start")[0]["start"]["mediaFormat"]
    assert start["encoding"] == content_type.split(";")[0]
    assert start["sampleRate"] == int(content_type.split("=")[1])
    got = b"".join(payloads)
    if "mulaw" in content_type:
        got = audioop.ulaw2lin(got, 2)
    rate = int(content_type.split("=")[1])
    back = audioop.ratecv(got, 2, 1, rate, gateway_rate, None)[0] if rate != gateway_rate else got
    n = min(len(back), len(pcm)) // 2 * 2 - 400  # skip the resampler's edge
    ref, out = pcm[200 : 200 + n], back[200 : 200 + n]
    # compare RMS error relative to the signal, allowing for a small resampler delay
    best = min(_rel_error(ref, out[shift * 2 :] + b"\x00" * shift * 2) for shift in range(0, 4))
    assert best < bound, best


def _rel_error(a: bytes, b: bytes) -> float:
    import audioop

    n = min(len(a), len(b))
    diff = audioop.add(a[:n], audioop.mul(b[:n], 2, -1), 2)
    return audioop.rms(diff, 2) / max(1, audioop.rms(a[:n], 2))


async def test_refused_three_times_is_dropped_after_exactly_three_attempts(hub: Proc, account: Account) -> None:
    async with Customer(refuse_first=10) as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        stream = await ended_stream(account=account)
        await gw.close()
    assert customer.attempts == 3
    assert stream.status == "failed" and stream.hangup_reason == "Connection error"
    assert "503" in stream.last_error
    names = await db(events_of)(stream)
    assert names.count("ConnectAttemptFailed") == 3 and names[-1] == "DroppedStream"
    assert stream.rounded_bill_duration == 0 and stream.billed_amount == 0


async def test_refused_twice_then_accepted_streams_and_keeps_the_audio_sent_meanwhile(
    hub: Proc, account: Account
) -> None:
    pcm = ramp(8000)
    async with Customer(refuse_first=2) as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        await gw.send_frames(pcm, interval=0.0)  # arrives while the hub is still retrying (D2)
        await eventually(lambda: len(customer.events("media")) >= 50)
        await gw.close()
        stream = await ended_stream(account=account)
    assert customer.attempts == 3
    assert b"".join(base64.b64decode(m["media"]["payload"]) for m in customer.events("media")) == pcm
    assert stream.hangup_reason == "Call hangup" and stream.status == "stopped"


async def test_customer_closing_mid_stream_drops_it_without_reconnecting(hub: Proc, account: Account) -> None:
    async with Customer(close_after=10) as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        sender = asyncio.create_task(gw.send_frames(ramp(8000 * 3), interval=0.01))
        stream = await ended_stream(account=account)
        sender.cancel()
        await gw.close()
    assert customer.attempts == 1  # D5: no reconnect
    assert stream.status == "failed" and stream.hangup_reason == "Connection error"
    assert "1000" in stream.last_error
    assert (await db(events_of)(stream))[-1] == "DroppedStream"


async def test_stream_timeout_stops_the_stream(hub: Proc, account: Account) -> None:
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url, "streamTimeout": 1}]})
        sender = asyncio.create_task(gw.send_frames(ramp(8000 * 5)))
        stream = await ended_stream(account=account)
        sender.cancel()
        await gw.close()
    assert stream.hangup_reason == "Stream timeout" and stream.status == "stopped"
    assert 1 <= stream.duration <= 3


@pytest.mark.both_servers
async def test_graceful_shutdown_marker_ends_the_call(hub: Proc, account: Account) -> None:
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        await eventually(lambda: customer.events("start"))
        await gw.send_frames(ramp(1600), interval=0.0)
        await gw.send(b"")
        stream = await ended_stream(account=account)
        await eventually(lambda: gw.ws is not None and gw.ws.close_code is not None)
        await gw.close()
    assert stream.hangup_reason == "Call hangup"


async def test_two_streams_on_one_call_get_the_same_audio_in_their_formats(hub: Proc, account: Account) -> None:
    pcm = ramp(8000)
    async with Customer() as a, Customer() as b:
        gw = await gateway_for(hub, account).open(
            {"streams": [{"serviceUrl": a.url}, {"serviceUrl": b.url, "contentType": "audio/x-mulaw;rate=8000"}]}
        )
        await eventually(lambda: a.events("start") and b.events("start"))
        await gw.send_frames(pcm, interval=0.002)
        await eventually(lambda: len(a.events("media")) >= 50 and len(b.events("media")) >= 50)
        await gw.close()
    assert a.events("start")[0]["start"]["streamId"] != b.events("start")[0]["start"]["streamId"]
    assert b"".join(base64.b64decode(m["media"]["payload"]) for m in a.events("media")) == pcm
    assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in b.events("media"))


async def test_a_duplicate_stream_url_in_metadata_is_refused_with_an_error_frame(hub: Proc, account: Account) -> None:
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open(
            {"streams": [{"serviceUrl": customer.url}, {"serviceUrl": customer.url}, {"serviceUrl": "http://x"}]}
        )
        await eventually(lambda: len(gw.texts) >= 2)
        await gw.close()
    errors = [t["data"]["error"] for t in gw.texts if t.get("type") == "error"]
    assert any("streams[1] refused" in e and "active stream" in e for e in errors)
    assert any("streams[2] refused" in e and "serviceUrl" in e for e in errors)
    assert await db(lambda: Stream.objects.filter(account=account).count())() == 1


@pytest.mark.both_servers
async def test_gateway_garbage_is_logged_and_survived(hub: Proc, account: Account) -> None:
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        await eventually(lambda: customer.events("start"))
        await gw.send(ramp(160))
        await gw.send(b"\x01\x02\x03")  # odd byte count
        await gw.send("{not json")
        await gw.send('{"event":"weird"}')
        await gw.send("x" * (1024 * 1024))
        await gw.send('{"event":"dtmf","dtmf":"5","duration":100}')
        await gw.send(ramp(160, start=160))
        await eventually(lambda: len(customer.events("media")) >= 2 and customer.events("dtmf"))
        await gw.close()
        stream = await ended_stream(account=account)
    media = customer.events("media")
    assert b"".join(base64.b64decode(m["media"]["payload"]) for m in media) == ramp(320)
    dtmf = customer.events("dtmf")[0]
    assert dtmf["dtmf"]["digit"] == "5" and dtmf["dtmf"]["track"] == "inbound"
    assert isinstance(dtmf["dtmf"]["timestamp"], str) and dtmf["extra_headers"] == ""
    assert stream.hangup_reason == "Call hangup"
    names = await db(events_of)(stream)
    assert "GatewayInvalidFrame" in names and names.count("GatewayInvalidMessage") == 2
    assert "GatewayMessage" in names


@pytest.mark.both_servers
@pytest.mark.parametrize("how", ["none", "wrong-token", "unknown-id", "bad-query-token"])
async def test_gateways_without_valid_credentials_are_refused_before_accept(
    hub: Proc, account: Account, how: str
) -> None:
    headers = {
        "none": {},
        "wrong-token": basic_auth(account.auth_id, "nope"),
        "unknown-id": basic_auth("MA000000000000000000", account.auth_token),
        "bad-query-token": {},
    }[how]
    url = f"{hub.ws}/ingest/audio-fork" + ("?token=gw_wrong" if how == "bad-query-token" else "")
    with pytest.raises(websockets.InvalidStatus) as info:
        await Gateway(url, headers).open({"streams": []})
    assert info.value.response.status_code == 403
    assert await db(lambda: Call.objects.count())() == 0


async def test_query_token_authenticates_and_d1_keeps_non_uuid_ids(hub: Proc, account: Account) -> None:
    url = f"{hub.ws}/ingest/audio-fork?token={account.ingest_token}&callSid=CA123"
    gw = await Gateway(url, {}, subprotocol="audio.drachtio.org").open()
    assert gw.ws is not None and gw.ws.subprotocol == "audio.drachtio.org"
    await gw.send(ramp(160))  # no metadata frame: the first frame is audio
    call = await eventually(db(lambda: Call.objects.filter(account=account).first()))
    await gw.close()
    assert call.gateway_metadata["gateway_call_id"] == "CA123"
    uuid.UUID(str(call.call_uuid))
    await eventually(db(lambda: Call.objects.filter(pk=call.pk, status="ended").exists()))


@pytest.mark.both_servers
async def test_a_consumer_that_never_reads_is_degraded_then_dropped_and_others_lose_nothing(
    hub_factory: object, account: Account
) -> None:
    hub = hub_factory(STREAMHUB_STREAM_BUFFER_SECONDS="3")  # type: ignore[operator]
    pcm = ramp(8000 * 12)
    async with Customer(never_read=True) as stuck, Customer() as healthy:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": stuck.url}, {"serviceUrl": healthy.url}]})
        await eventually(lambda: healthy.events("start") and stuck.attempts == 1)
        await gw.send_frames(pcm, interval=0.002)  # 12 s of audio, faster than real time
        dropped = await ended_stream(account=account, service_url=stuck.url)
        await eventually(lambda: len(healthy.events("media")) >= 600, timeout=20)
        await gw.close()
    assert dropped.status == "failed" and dropped.hangup_reason == "Connection error"
    assert "slow connection" in dropped.last_error
    events = await db(lambda: list(StreamEvent.objects.filter(stream=dropped).values_list("event", "params")))()
    degraded = [params["BufferUsage"] for name, params in events if name == "DegradedStream"]
    assert degraded == ["30", "60", "90"]
    assert events[-1][0] == "DroppedStream"
    assert any(pct > 0 for _, pct in dropped.buffer_samples)
    media = healthy.events("media")
    assert b"".join(base64.b64decode(m["media"]["payload"]) for m in media) == pcm


async def test_an_idle_call_outlives_the_channel_layers_read_timeout(hub: Proc, account: Account) -> None:
    """Regression: with redis-py 8 an idle Redis channel-layer receive died after 5 s (close 1011)."""
    from django.conf import settings

    if not settings.REDIS_URL:
        pytest.skip("only the Redis channel layer has a read timeout")
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        await eventually(lambda: customer.events("start"))
        await asyncio.sleep(6.5)
        await gw.send(ramp(160))
        await eventually(lambda: customer.events("media"))
        assert gw.ws is not None and gw.ws.close_code is None
        await gw.close()


@pytest.mark.both_servers
async def test_a_stream_started_over_rest_gets_the_audio_since_its_creation(hub: Proc, account: Account) -> None:
    """D2 across processes: the row exists before the holding process hears of it; nothing in between is lost."""
    import requests

    call_id = str(uuid.uuid4())
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open({"callId": call_id})
        feeding = asyncio.create_task(gw.send_frames(ramp(8000 * 4), interval=0.005))
        await asyncio.sleep(0.5)
        response = await asyncio.to_thread(
            requests.post,
            f"{hub.http}/v1/Account/{account.auth_id}/Call/{call_id}/Stream/",
            json={"service_url": customer.url},
            auth=(account.auth_id, account.auth_token),
            timeout=10,
        )
        assert response.status_code == 201, response.text
        await feeding
        await eventually(lambda: len(customer.events("media")) >= 20)
        await gw.close()
        stream = await ended_stream(account=account)
    media = customer.events("media")
    audio = b"".join(base64.b64decode(m["media"]["payload"]) for m in media)
    first = int.from_bytes(audio[:2], "little", signed=True)
    # contiguous from wherever it started: exactly the gateway's ramp, no frame missing
    n = len(audio) // 2
    assert audio == ramp(n, start=first)
    # the stream's clock starts at the row's creation, and the audio from then on is there
    assert int(media[0]["media"]["timestamp"]) == int(stream.created_at.timestamp() * 1000)


async def test_a_gateway_that_hangs_up_during_set_up_leaves_nothing_behind(hub: Proc, account: Account) -> None:
    """Review finding: a relay stopped before its task ran never finished, and the call stayed live."""
    import requests

    async with Customer() as customer:
        for _ in range(5):
            gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
            await gw.send(ramp(160))
            await gw.close()  # while the hub is still creating the rows
        await eventually(db(lambda: Stream.objects.filter(account=account).count() == 5))
        await eventually(db(lambda: not Stream.objects.filter(account=account, end_time__isnull=True).exists()))
        await eventually(db(lambda: not Call.objects.filter(account=account, status="live").exists()))
    ready = await asyncio.to_thread(requests.get, f"{hub.http}/readyz", timeout=5)
    assert ready.json()["live_calls"] == 0
    reasons = await db(lambda: set(Stream.objects.values_list("hangup_reason", flat=True)))()
    assert reasons == {"Call hangup"}
