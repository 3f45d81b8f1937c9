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
