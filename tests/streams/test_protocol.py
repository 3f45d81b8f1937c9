from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import protocol
from streams.protocol import (
    Checkpoint,
    ClearAudio,
    PlayAudio,
    ProtocolError,
    SendDTMF,
    UnknownEvent,
    parse_customer_message,
    parse_gateway_event,
    parse_gateway_metadata,
)

SID = "6f1e7c22-3a9b-4f0e-8c55-2b7d9e41a0c3"


def test_media_template_matches_a_json_built_message() -> None:
    template = protocol.MediaTemplate(SID, "tenant=acme,agent=7")
    text = template.render(42, "inbound", 1732560000020, 41, b"\x01\x02\xff")
    assert json.loads(text) == {
        "event": "media",
        "sequenceNumber": 42,
        "streamId": SID,
        "media": {"track": "inbound", "timestamp": "1732560000020", "chunk": 41, "payload": "AQL/"},
        "extra_headers": "tenant=acme,agent=7",
    }


def test_start_message_has_the_spec_shape() -> None:
    data = json.loads(
        protocol.start_message(
            call_id="c",
            stream_id=SID,
            account_id="MA1",
            tracks=["inbound", "outbound"],
            encoding="audio/x-mulaw",
            sample_rate=8000,
            extra_headers="",
        )
    )
    assert data["sequenceNumber"] == 1 and data["extra_headers"] == ""
    assert data["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000}


def test_acks_have_the_spec_shape() -> None:
    assert json.loads(protocol.played_stream(seq=7, stream_id=SID, name="n ü")) == {
        "event": "playedStream",
        "sequenceNumber": 7,
        "streamId": SID,
        "name": "n ü",
    }
    assert json.loads(protocol.cleared_audio(seq=8, stream_id=SID)) == {
        "event": "clearedAudio",
        "sequenceNumber": 8,
        "streamId": SID,
    }


def play(content_type: str, rate: object, payload: str) -> str:
    return json.dumps(
        {"event": "playAudio", "media": {"contentType": content_type, "sampleRate": rate, "payload": payload}}
    )


def test_play_audio_variants_real_clients_send() -> None:
    b64 = base64.b64encode(b"\x00\x01" * 80).decode()
    assert parse_customer_message(play("audio/x-mulaw", 8000, b64)) == PlayAudio(True, 8000, b"\x00\x01" * 80)
    assert parse_customer_message(play("audio/x-l16", "16000", b64)).rate == 16000  # numeric string
    # pipecat adds streamId; unknown keys are ignored
    msg = json.loads(play("audio/x-l16", 8000, b64))
    msg["streamId"] = SID
    assert isinstance(parse_customer_message(json.dumps(msg)), PlayAudio)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{nope", "invalid JSON"),
        ("[1,2]", "JSON object"),
        ('{"x":1}', "no event"),
        ('{"event":"playAudio"}', "media object"),
        (play("audio/x-l16", 8000, "!!!"), "base64"),
        (play("audio/x-l16", 8000, ""), "non-empty"),
        (play("audio/x-l16", 24000, "AAAA"), "unsupported format"),
        (play("audio/x-mulaw", 16000, "AAAA"), "unsupported format"),
        (play("audio/wav", 8000, "AAAA"), "unsupported format"),
        (play("audio/x-l16", True, "AAAA"), "sampleRate"),
        (play("audio/x-l16", 8000, "AAAA"), "whole number"),
        ('{"event":"checkpoint"}', "name"),
        ('{"event":"sendDTMF","dtmf":"12x"}', "0-9"),
    ],
)
def test_bad_customer_messages_raise_clear_errors(text: str, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        parse_customer_message(text)


def test_binary_and_oversized_messages_are_refused() -> None:
    with pytest.raises(ProtocolError, match="binary"):
        parse_customer_message(b"\x00")
    with pytest.raises(ProtocolError, match="limit"):
        parse_customer_message('{"event":"x","pad":"' + "a" * 100 + '"}', limit=50)


def test_other_commands() -> None:
    assert parse_customer_message('{"event":"checkpoint","streamId":"s","name":"g"}') == Checkpoint("g")
    assert parse_customer_message('{"event":"clearAudio","streamId":"s"}') == ClearAudio()
    assert parse_customer_message('{"event":"sendDTMF","dtmf":"12*#a"}') == SendDTMF("12*#A")
    assert parse_customer_message('{"event":"transcript","text":"hi"}') == UnknownEvent("transcript")


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=400),
        st.binary(max_size=100),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
            ),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_the_customer_parser_only_returns_commands_or_protocol_errors(message: str | bytes) -> None:
    try:
        result = parse_customer_message(message)
    except ProtocolError:
        return
    assert isinstance(result, PlayAudio | Checkpoint | ClearAudio | SendDTMF | UnknownEvent)


@settings(max_examples=200)
@given(
    event=st.sampled_from(["playAudio", "checkpoint", "clearAudio", "sendDTMF", "other"]),
    media=st.dictionaries(
        st.sampled_from(["contentType", "sampleRate", "payload"]),
        st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans()),
    ),
    name=st.one_of(st.text(max_size=300), st.integers(), st.none()),
    dtmf=st.one_of(st.text(max_size=70), st.none()),
)
def test_structured_fuzz_never_escapes(event: str, media: dict[str, object], name: object, dtmf: object) -> None:
    with contextlib.suppress(ProtocolError):
        parse_customer_message(json.dumps({"event": event, "media": media, "name": name, "dtmf": dtmf}))


def test_gateway_metadata_variants() -> None:
    meta = parse_gateway_metadata(
        '{"callSid":"CA1","from":"+1","to":"+2","direction":"outbound-api","sampleRate":16000,"mixType":"stereo",'
        '"streams":[{"serviceUrl":"wss://x/y"}]}'
    )
    assert (meta.call_id, meta.from_number, meta.to_number, meta.direction) == ("CA1", "+1", "+2", "outbound")
    assert (meta.sample_rate, meta.channels, meta.streams) == (16000, 2, [{"serviceUrl": "wss://x/y"}])
    opaque = parse_gateway_metadata("tenant 7 / queue sales")
    assert opaque.raw == "tenant 7 / queue sales" and opaque.sample_rate == 8000 and opaque.channels == 1
    bad = parse_gateway_metadata('{"sampleRate":44100,"mixType":"quad","streams":"wss://x"}')
    assert bad.sample_rate == 8000 and bad.mix_type == "mono" and len(bad.errors) == 3
    with_query = parse_gateway_metadata("", defaults={"callId": "abc", "sampleRate": "16k"})
    assert with_query.call_id == "abc" and with_query.sample_rate == 16000


@given(st.text(max_size=300))
def test_gateway_metadata_never_raises(text: str) -> None:
    meta = parse_gateway_metadata(text)
    assert meta.sample_rate in (8000, 16000) and meta.mix_type in ("mono", "mixed", "stereo")


def test_gateway_events() -> None:
    assert parse_gateway_event('{"event":"dtmf","dtmf":"12","duration":100}') == [
        protocol.GatewayDtmf("1", 100),
        protocol.GatewayDtmf("2", 100),
    ]
    assert parse_gateway_event('{"type":"mark","data":{"name":"m","event":"playout"}}') == [
        protocol.GatewayMark("m", "playout")
    ]
    with pytest.raises(ProtocolError):
        parse_gateway_event('{"event":"dtmf","dtmf":"Z"}')
    assert json.loads(protocol.gateway_send_dtmf("1234#")) == {"type": "sendDTMF", "data": {"dtmf": "1234#"}}


def test_numbers_beyond_pythons_digit_limit_are_protocol_errors() -> None:
    huge = "1" * 5000
    with pytest.raises(ProtocolError, match="invalid JSON"):
        parse_customer_message('{"event":"checkpoint","name":' + huge + "}")
    with pytest.raises(ProtocolError, match="invalid JSON"):
        parse_gateway_event('{"event":"dtmf","duration":' + huge + "}")
    meta = parse_gateway_metadata('{"callId":' + huge + "}")
    assert meta.call_id == "" and isinstance(meta.raw, str)


def test_jambonz_verb_metadata_may_arrive_nested() -> None:
    meta = parse_gateway_metadata(
        '{"callSid":"CA-top","from":"+1","sampleRate":16000,"mixType":"mono",'
        '"metadata":{"callSid":"ignored","streams":[{"serviceUrl":"wss://bot/ws","bidirectional":true}]}}'
    )
    assert meta.call_id == "CA-top" and meta.sample_rate == 16000
    assert meta.streams == [{"serviceUrl": "wss://bot/ws", "bidirectional": True}]
