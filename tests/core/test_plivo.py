"""The Plivo customer protocol (streams/core/plivo.py): message shapes and the customer parser."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import plivo
from streams.core.audiofork import parse_gateway_event, parse_gateway_metadata
from streams.core.framing import ProtocolError
from streams.core.plivo import Checkpoint, ClearAudio, PlayAudio, SendDTMF, UnknownEvent, parse_customer_message

SID = "6f1e7c22-3a9b-4f0e-8c55-2b7d9e41a0c3"


def test_media_template_matches_a_json_built_message() -> None:
    template = plivo.MediaTemplate(SID, "tenant=acme,agent=7")
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
        plivo.start_message(
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
    assert json.loads(plivo.played_stream(seq=7, stream_id=SID, name="n ü")) == {
        "event": "playedStream",
        "sequenceNumber": 7,
        "streamId": SID,
        "name": "n ü",
    }
    assert json.loads(plivo.cleared_audio(seq=8, stream_id=SID)) == {
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


def test_numbers_beyond_pythons_digit_limit_are_protocol_errors() -> None:
    huge = "1" * 5000
    with pytest.raises(ProtocolError, match="invalid JSON"):
        parse_customer_message('{"event":"checkpoint","name":' + huge + "}")
    with pytest.raises(ProtocolError, match="invalid JSON"):
        parse_gateway_event('{"event":"dtmf","duration":' + huge + "}")
    for constant in ("NaN", "Infinity", "-Infinity", "1e400"):
        with pytest.raises(ProtocolError, match="invalid JSON"):
            parse_customer_message('{"event":"checkpoint","name":' + constant + "}")
    # gateway metadata keeps the rest of the frame: the number stays as its text (issue 15 §8)
    meta = parse_gateway_metadata('{"callId":' + huge + ',"streams":[{"serviceUrl":"ws://x/y"}]}')
    assert meta.call_id == huge[:200] and meta.streams == [{"serviceUrl": "ws://x/y"}]


def test_a_resumed_start_is_the_same_start_with_where_the_counters_continue() -> None:
    common = {
        "call_id": "0d6a2b8e-5d7c-4b1a-9a63-1f0c2e9d4b10",
        "stream_id": "6f1e7c22-3a9b-4f0e-8c55-2b7d9e41a0c3",
        "account_id": "MAZDK3OGJIMGZKNTEXAM",
        "tracks": ["inbound", "outbound"],
        "encoding": "audio/x-l16",
        "sample_rate": 8000,
        "extra_headers": "a=b",
    }
    first = json.loads(plivo.start_message(**common))  # type: ignore[arg-type]
    resume = plivo.Resume(
        sequence_number=153, chunks=(("inbound", 76), ("outbound", 75)), timestamp_ms=1732560001500, count=2
    )
    resumed = json.loads(plivo.start_message(**common, resume=resume))  # type: ignore[arg-type]
    assert "resume" not in first["start"]
    assert resumed["start"].pop("resume") == {
        "resumed": True,
        "sequenceNumber": 153,
        "chunk": {"inbound": 76, "outbound": 75},
        "timestamp": "1732560001500",
        "resumeCount": 2,
    }
    assert resumed == first
