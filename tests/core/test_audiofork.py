"""The mod_audio_fork / jambonz framing (streams/core/audiofork.py): metadata and events."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core import audiofork
from streams.core.audiofork import parse_gateway_event, parse_gateway_metadata
from streams.core.framing import ProtocolError


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
        audiofork.GatewayDtmf("1", 100),
        audiofork.GatewayDtmf("2", 100),
    ]
    assert parse_gateway_event('{"type":"mark","data":{"name":"m","event":"playout"}}') == [
        audiofork.GatewayMark("m", "playout")
    ]
    with pytest.raises(ProtocolError):
        parse_gateway_event('{"event":"dtmf","dtmf":"Z"}')
    assert json.loads(audiofork.gateway_send_dtmf("1234#")) == {"type": "sendDTMF", "data": {"dtmf": "1234#"}}


def test_jambonz_verb_metadata_may_arrive_nested() -> None:
    meta = parse_gateway_metadata(
        '{"callSid":"CA-top","from":"+1","sampleRate":16000,"mixType":"mono",'
        '"metadata":{"callSid":"ignored","streams":[{"serviceUrl":"wss://bot/ws","bidirectional":true}]}}'
    )
    assert meta.call_id == "CA-top" and meta.sample_rate == 16000
    assert meta.streams == [{"serviceUrl": "wss://bot/ws", "bidirectional": True}]


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), ("true", True), ("FALSE", False), (" true ", True)]
)
def test_the_metadata_may_say_whether_the_gateway_plays_audio(value: object, expected: bool) -> None:
    meta = parse_gateway_metadata(json.dumps({"playback": value}))
    assert meta.playback is expected and meta.errors == []
    assert parse_gateway_metadata("", defaults={"playback": "true"}).playback is True  # ?playback=true


@pytest.mark.parametrize("value", ["yes", 1, None, "", [True]])
def test_a_playback_flag_that_is_not_a_boolean_is_reported_and_ignored(value: object) -> None:
    meta = parse_gateway_metadata(json.dumps({"playback": value}))
    assert meta.playback is None
    assert meta.errors == [f"playback {str(value)[:40]!r} is not true or false; ignoring it"]


@pytest.mark.parametrize(
    ("declared", "subprotocol", "plays", "note"),
    [
        (None, "audio.jambonz.org", True, "subprotocol audio.jambonz.org, two-way"),
        (None, "audio.drachtio.org", False, 'subprotocol audio.drachtio.org, without "playback": true in the metadata'),
        (None, None, False, 'no subprotocol, without "playback": true in the metadata'),
        (True, "audio.drachtio.org", True, 'the gateway declared "playback": true'),
        (False, "audio.jambonz.org", False, 'the gateway declared "playback": false'),
    ],
)
def test_playback_is_what_the_gateway_declared_else_what_its_subprotocol_implies(
    declared: bool | None, subprotocol: str | None, plays: bool, note: str
) -> None:
    meta = parse_gateway_metadata("{}")
    meta.playback = declared
    audiofork.resolve_playback(meta, subprotocol)
    assert (meta.playback, meta.playback_note) == (plays, note)


def test_only_bidirectional_requests_on_a_one_way_connection_get_a_notice() -> None:
    meta = parse_gateway_metadata(
        json.dumps(
            {
                "streams": [
                    {"serviceUrl": "wss://a/ws", "bidirectional": "true"},
                    {"serviceUrl": "wss://b/ws"},
                    {"serviceUrl": "wss://c/ws", "bidirectional": "maybe"},  # refused by validation instead
                    {"serviceUrl": "wss://d/ws", "bidirectional": True},
                ]
            }
        )
    )
    audiofork.resolve_playback(meta, "audio.drachtio.org")
    reason = (
        "this gateway connection cannot play audio into the call "
        '(subprotocol audio.drachtio.org, without "playback": true in the metadata)'
    )
    assert audiofork.one_way_notices(meta) == [f"streams[0] is one-way: {reason}", f"streams[3] is one-way: {reason}"]
    settled = (meta.playback, meta.playback_note)
    audiofork.resolve_playback(meta, "audio.jambonz.org")  # already settled: the first answer stands
    assert (meta.playback, meta.playback_note) == settled
    two_way = parse_gateway_metadata(json.dumps({"playback": True, "streams": meta.streams}))
    audiofork.resolve_playback(two_way, "audio.drachtio.org")
    assert audiofork.one_way_notices(two_way) == []


# Numbers at and beyond the edges, spelled as a gateway may send them (Python's json module
# accepts the non-standard NaN/Infinity literals; 1e400 overflows a float to infinity).
EDGE_NUMBERS = st.one_of(
    st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "8000.0", "8000.5", "16000", "-8000", "0", "-0.0"]
    ),
    st.sampled_from(["1" + "0" * 5000, "8" + "0" * 101]),  # past Python's int digit limit; past ours
    st.floats(allow_nan=True, allow_infinity=True)
    .map(repr)
    .map(lambda r: {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(r, r)),
    st.integers().map(str),
    st.sampled_from(['"NaN"', '"Infinity"', '"8k"', '"16000"', '"²"', "true", "null", "[8000]", '{"a":1}']),
)


VALID_RATES = {"8000": 8000, "16000": 16000, "8000.0": 8000, "16000.0": 16000, '"8k"': 8000, '"16000"': 16000}


@given(rate=EDGE_NUMBERS, other=EDGE_NUMBERS)
def test_numeric_edge_values_are_refused_with_an_error_and_nothing_non_finite_is_kept(rate: str, other: str) -> None:
    """Issue 15 §8: `sampleRate: Infinity` raised OverflowError; NaN reached the database, which refused it."""
    text = f'{{"sampleRate":{rate},"extra":{other},"streams":[{{"serviceUrl":"ws://x/y","streamTimeout":{other}}}]}}'
    meta = parse_gateway_metadata(text)
    assert meta.sample_rate in (8000, 16000)
    if rate in VALID_RATES:
        assert meta.errors == [] and meta.sample_rate == VALID_RATES[rate]
    else:
        assert len(meta.errors) == 1 and meta.sample_rate == 8000
        assert meta.errors[0].startswith("sampleRate ") and meta.errors[0].endswith(" is not 8000 or 16000; using 8000")
        assert len(meta.errors[0]) < 120
    json.dumps(meta.raw, allow_nan=False)  # storable as strict JSON (PostgreSQL jsonb, SQLite's JSON check)
    assert meta.streams and meta.streams[0]["serviceUrl"] == "ws://x/y"  # the rest of the metadata is kept


@pytest.mark.parametrize(
    ("literal", "error"),
    [
        ("NaN", "sampleRate 'NaN' is not 8000 or 16000; using 8000"),
        ("Infinity", "sampleRate 'Infinity' is not 8000 or 16000; using 8000"),
        ("-Infinity", "sampleRate '-Infinity' is not 8000 or 16000; using 8000"),
        ("1e400", "sampleRate '1e400' is not 8000 or 16000; using 8000"),
        ("8000.5", "sampleRate 8000.5 is not 8000 or 16000; using 8000"),
    ],
)
def test_non_finite_and_fractional_sample_rates_get_a_clear_error(literal: str, error: str) -> None:
    meta = parse_gateway_metadata(f'{{"sampleRate":{literal},"streams":[{{"serviceUrl":"ws://x/y"}}]}}')
    assert meta.errors == [error] and meta.sample_rate == 8000
    assert meta.streams == [{"serviceUrl": "ws://x/y"}]
    assert parse_gateway_metadata('{"sampleRate":16000.0}').sample_rate == 16000
