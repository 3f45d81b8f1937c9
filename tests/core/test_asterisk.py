"""The pure chan_websocket framing (streams/core/asterisk.py): no socket, database or event loop."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core import asterisk as ast
from streams.core.framing import ProtocolError
from streams.core.validation import validate_stream_params

JSON_START = {
    "event": "MEDIA_START",
    "connection_id": "e226e283",
    "channel": "WebSocket/streamhub-00000001",
    "channel_id": "1795636886.5",
    "format": "slin16",
    "optimal_frame_size": 640,
    "ptime": 20,
    "channel_variables": {"__serviceUrl": "wss://var.example.com/s", "from": "1009"},
}
PLAIN_START = (
    "MEDIA_START connection_id:e226e283 channel:WebSocket/streamhub-00000001 channel_id:1795636860.2 "
    "format:ulaw optimal_frame_size:160 ptime:20"
)


def test_media_start_in_json_gives_codec_identity_and_control_format() -> None:
    start = ast.media_start(ast.parse_event(json.dumps(JSON_START)))
    assert start.codec == ast.CODECS["slin16"] and start.codec.rate == 16000 and start.codec.frame_bytes == 640
    assert start.json_mode is True
    assert (start.channel_id, start.channel, start.optimal_frame_size) == ("1795636886.5", JSON_START["channel"], 640)
    assert start.channel_variables["from"] == "1009"


def test_media_start_in_plain_text_is_read_the_same_way() -> None:
    start = ast.media_start(ast.parse_event(PLAIN_START))
    assert start.codec.name == "ulaw" and start.codec.mulaw and start.codec.frame_bytes == 160
    assert start.json_mode is False and start.channel_id == "1795636860.2" and start.ptime == 20
    assert start.channel_variables == {}  # Asterisk cannot send them in plain text


@pytest.mark.parametrize("fmt", ["alaw", "g722", "opus", "slin48", ""])
def test_other_codecs_are_refused_with_an_error_naming_the_ones_we_take(fmt: str) -> None:
    with pytest.raises(ast.UnsupportedFormat) as info:
        ast.media_start(ast.parse_event(json.dumps({**JSON_START, "format": fmt})))
    assert f"unsupported format {fmt or '(none)'}" in str(info.value)
    assert "c(ulaw), c(slin) or c(slin16)" in str(info.value)


@pytest.mark.parametrize(
    ("text", "name", "fields"),
    [
        ('{"event":"DTMF_END","channel_id":"1.2","digit":"5"}', "DTMF_END", {"digit": "5"}),
        ("DTMF_END digit:# channel_id:1.2", "DTMF_END", {"digit": "#", "channel_id": "1.2"}),
        ("MEDIA_MARK_PROCESSED m17", "MEDIA_MARK_PROCESSED", {"correlation_id": "m17"}),
        ("MEDIA_MARK_PROCESSED", "MEDIA_MARK_PROCESSED", {}),
        ("MEDIA_XOFF", "MEDIA_XOFF", {}),
        ("  MEDIA_XON\n", "MEDIA_XON", {}),
        ("STATUS channel_id:1.2 queue_length:43 xon_level:800", "STATUS", {"queue_length": "43"}),
        (
            '{"event":"ERROR","error_text":"Unable to parse JSON command"}',
            "ERROR",
            {"error_text": "Unable to parse JSON command"},
        ),
        (
            "ERROR channel_id:1.2 error_text:MARK_MEDIA not supported",
            "ERROR",
            {"error_text": "MARK_MEDIA not supported"},
        ),
    ],
)
def test_events_parse_in_both_control_formats(text: str, name: str, fields: dict[str, str]) -> None:
    event = ast.parse_event(text)
    assert event.name == name and event.json_mode == text.startswith("{")
    assert {k: event.text(k) for k in fields} == fields


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty"),
        ("{oops", "invalid JSON"),
        ("[1, 2]", "not an Asterisk event"),
        ('["MEDIA_XON"]', "not an Asterisk event"),
        ('{"digit":"1"}', "no event name"),
        ("hello world", "not an Asterisk event"),
        ("x" * (ast.MAX_EVENT_CHARS + 1), "limit"),
    ],
)
def test_garbage_raises_a_protocol_error_fit_for_the_debug_log(text: str, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        ast.parse_event(text)


@given(st.text(max_size=300))
def test_any_text_either_parses_or_raises_protocol_error(text: str) -> None:
    try:
        event = ast.parse_event(text)
    except ProtocolError:
        return
    assert event.name


@pytest.mark.parametrize(
    ("digit", "ok"), [("1", True), ("#", True), ("d", True), ("Z", False), ("12", False), ("", False)]
)
def test_dtmf_end_carries_exactly_one_digit(digit: str, ok: bool) -> None:
    event = ast.parse_event(f"DTMF_END digit:{digit} channel_id:1.2")
    if ok:
        assert ast.dtmf_digit(event) == digit.upper()
    else:
        with pytest.raises(ProtocolError, match="DTMF_END"):
            ast.dtmf_digit(event)


def test_commands_follow_the_call_control_format_and_stay_under_128_bytes() -> None:
    assert ast.command("MARK_MEDIA", json_mode=True, correlation_id="m1") == (
        '{"command":"MARK_MEDIA","correlation_id":"m1"}'
    )
    assert ast.command("MARK_MEDIA", json_mode=False, correlation_id="m1") == "MARK_MEDIA m1"
    assert ast.command("FLUSH_MEDIA", json_mode=True) == '{"command":"FLUSH_MEDIA"}'
    assert ast.command("HANGUP", json_mode=False) == "HANGUP"
    with pytest.raises(ValueError, match="128"):
        ast.command("MARK_MEDIA", json_mode=True, correlation_id="x" * 100)


def _start(**changes: object) -> ast.MediaStart:
    return ast.media_start(ast.parse_event(json.dumps({**JSON_START, **changes})))


def test_one_stream_comes_from_stream_attribute_names_in_the_query() -> None:
    query = {
        "callId": "6d3c1c35-4a1b-4d8e-9f0a-8d2b3c4d5e6f",
        "from": "+14155550100",
        "to": "2000",
        "serviceUrl": "wss://bot.example.com/s?x=1&y=2",
        "bidirectional": "true",
        "streamTimeout": "120",
        "extraHeaders": "tenant=acme",
        "token": "gw_secret",
    }
    meta = ast.call_metadata(query, _start(channel_variables={}))
    assert (meta.call_id, meta.from_number, meta.to_number, meta.sample_rate) == (
        query["callId"],
        "+14155550100",
        "2000",
        16000,
    )
    assert meta.streams == [
        {
            "serviceUrl": "wss://bot.example.com/s?x=1&y=2",
            "bidirectional": "true",
            "streamTimeout": "120",
            "extraHeaders": "tenant=acme",
        }
    ]
    params = validate_stream_params(meta.streams[0])  # D3: the strings validate
    assert params.bidirectional is True and params.stream_timeout == 120
    assert meta.errors == []
    assert "token" not in meta.raw["query"]  # type: ignore[index]
    assert meta.raw["media_start"]["control_format"] == "json"  # type: ignore[index]


def test_several_streams_come_as_a_json_list_and_add_to_a_single_one() -> None:
    listed = json.dumps([{"serviceUrl": "wss://a.example.com/"}, {"serviceUrl": "wss://b.example.com/"}])
    meta = ast.call_metadata({"serviceUrl": "wss://one.example.com/", "streams": listed}, _start())
    assert [s["serviceUrl"] for s in meta.streams] == [
        "wss://one.example.com/",
        "wss://a.example.com/",
        "wss://b.example.com/",
    ]


@pytest.mark.parametrize("bad", ["{", '{"serviceUrl":"wss://a/"}', '["wss://a/"]'])
def test_a_streams_value_that_is_not_a_json_list_of_objects_is_an_error(bad: str) -> None:
    meta = ast.call_metadata({"streams": bad}, _start(channel_variables={}))
    assert meta.streams == []
    assert meta.errors == ["streams must be a URL-encoded JSON list of objects with <Stream> attributes"]


def test_channel_variables_fill_in_and_channel_id_is_the_last_resort_call_id() -> None:
    meta = ast.call_metadata({"from": "1001"}, _start())
    assert meta.call_id == "1795636886.5"  # D1 then mints a UUID and keeps this id
    assert meta.from_number == "1001"  # the query wins over the channel variable
    assert meta.streams == [{"serviceUrl": "wss://var.example.com/s"}]


def test_the_codec_sets_the_session_rate() -> None:
    assert ast.call_metadata({}, _start(format="ulaw")).sample_rate == 8000
    assert ast.call_metadata({}, _start(format="slin")).sample_rate == 8000
    assert ast.call_metadata({}, _start(format="slin16")).sample_rate == 16000


# --- the fake Asterisk's queue is the spec's queue --------------------------------------


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e400", "1" + "0" * 5000])
def test_non_finite_numbers_in_a_json_media_start_fall_back_to_defaults(literal: str) -> None:
    """Issue 15 §8: int(Infinity) raised OverflowError, which nothing caught."""
    text = json.dumps(JSON_START).replace('"optimal_frame_size": 640', f'"optimal_frame_size": {literal}')
    text = text.replace('"ptime": 20', f'"ptime": {literal}')
    start = ast.media_start(ast.parse_event(text))
    assert (start.optimal_frame_size, start.ptime) == (640, 20)
    meta = ast.call_metadata({}, start)
    json.dumps(meta.raw, allow_nan=False)
