"""FreeSWITCH mod_audio_fork / jambonz `listen` framing (pure).

The first TEXT frame is metadata (JSON, or opaque text kept as is); later TEXT frames
are events (DTMF, mark echoes); the hub answers with `sendDTMF` (D13) and `killAudio`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.core.framing import DTMF_DIGITS, ProtocolError, dumps, json_object, loads
from streams.core.gateway import GatewayMetadata


def _text(value: Any, limit: int = 128) -> str:
    return value[:limit] if isinstance(value, str) else str(value)[:limit] if isinstance(value, int | float) else ""


def sample_rate(value: Any) -> int | None:
    """8000 or 16000 from a number, a numeric string or "8k"/"16k"; None for anything else."""
    if isinstance(value, str):
        text = value.strip().lower()
        value = {"8k": 8000, "16k": 16000}.get(text, text)
        if isinstance(value, str):
            value = int(value) if value.isascii() and value.isdigit() and len(value) <= 6 else None
    if isinstance(value, float) and value.is_integer():  # false for NaN and the infinities
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in (8000, 16000):
        return value
    return None


def parse_gateway_metadata(text: str, *, defaults: dict[str, str] | None = None) -> GatewayMetadata:
    """The first TEXT frame. Non-JSON text is kept as opaque metadata; bad fields become errors."""
    meta = GatewayMetadata()
    for key, value in (defaults or {}).items():
        _apply(meta, key, value)
    try:
        data = loads(text)
    except (ValueError, RecursionError):
        meta.raw = text[:8192]
        return meta
    if not isinstance(data, dict):
        meta.raw = text[:8192]
        return meta
    meta.raw = data
    nested = data.get("metadata")
    if isinstance(nested, dict):  # jambonz may carry the verb's `metadata` as an object of its own
        for key, value in nested.items():
            _apply(meta, key, value)
    for key, value in data.items():  # the gateway's own attributes win
        if key != "metadata":
            _apply(meta, key, value)
    return meta


def _apply(meta: GatewayMetadata, key: str, value: Any) -> None:
    if key in ("callId", "callSid", "call_id", "callUUID"):
        if _text(value):
            meta.call_id = _text(value, 200)
    elif key == "from":
        meta.from_number = _text(value)
    elif key == "to":
        meta.to_number = _text(value)
    elif key == "direction":
        meta.direction = "outbound" if _text(value).lower().startswith("outbound") else "inbound"
    elif key == "sampleRate":
        rate = sample_rate(value)
        if rate is not None:
            meta.sample_rate = rate
        else:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "…"
            meta.errors.append(f"sampleRate {shown} is not 8000 or 16000; using {meta.sample_rate}")
    elif key == "mixType":
        if value in ("mono", "mixed", "stereo"):
            meta.mix_type = value
        else:
            meta.errors.append(f"mixType {value!r} is not mono, mixed or stereo; using {meta.mix_type}")
    elif key == "streams":
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            meta.streams = value
        else:
            meta.errors.append("streams must be a list of objects with <Stream> attributes")


@dataclass(frozen=True)
class GatewayDtmf:
    digit: str
    duration_ms: int = 0


@dataclass(frozen=True)
class GatewayMark:
    name: str
    event: str


@dataclass(frozen=True)
class GatewayOther:
    data: dict[str, Any]


GatewayEvent = GatewayDtmf | GatewayMark | GatewayOther


def parse_gateway_event(text: str) -> list[GatewayEvent]:
    """A later TEXT frame: DTMF (jambonz `{"event":"dtmf","dtmf":"5","duration":100}`), mark echoes, others."""
    data = json_object(text, 64 * 1024)
    if data.get("event") == "dtmf":
        digits = data.get("dtmf")
        if not isinstance(digits, str) or not DTMF_DIGITS.match(digits.upper()):
            raise ProtocolError("dtmf event needs dtmf: digits of 0-9 * # A-D")
        duration = data.get("duration", 0)
        ms = duration if isinstance(duration, int) and not isinstance(duration, bool) else 0
        return [GatewayDtmf(d, ms) for d in digits.upper()]
    if data.get("type") == "mark" and isinstance(data.get("data"), dict):
        inner = data["data"]
        return [GatewayMark(str(inner.get("name", "")), str(inner.get("event", "")))]
    return [GatewayOther(data)]


def gateway_send_dtmf(digits: str) -> str:
    """D13: the TEXT frame that asks the gateway to play DTMF."""
    return dumps({"type": "sendDTMF", "data": {"dtmf": digits}})


def gateway_kill_audio() -> str:
    return dumps({"type": "killAudio"})
