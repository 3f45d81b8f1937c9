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
