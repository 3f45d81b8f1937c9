"""FreeSWITCH mod_audio_fork / jambonz `listen` framing (pure).

The first TEXT frame is metadata (JSON, or opaque text kept as is); later TEXT frames
are events (DTMF, mark echoes); the hub answers with `sendDTMF` (D13) and `killAudio`.

Playback (decision, docs/freeswitch.md): only some of these gateways play the hub's BINARY
audio into the call — the jambonz fork of mod_audio_fork started in two-way mode, and jambonz
`listen` with `bidirectionalAudio`; the original (drachtio) build discards it. Both FreeSWITCH
builds offer the subprotocol `audio.drachtio.org` unless FreeSWITCH was started with
MOD_AUDIO_FORK_SUBPROTOCOL_NAME, so the subprotocol alone cannot tell them apart. The metadata's
`"playback": true|false` says it; without it, only `audio.jambonz.org` (jambonz's own) counts as
two-way. A call that cannot play gets no bidirectional stream: the hub never acknowledges
audio nobody heard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.core.framing import DTMF_DIGITS, ProtocolError, dumps, json_object, loads
from streams.core.gateway import GatewayMetadata
from streams.core.validation import parse_bool

SUBPROTOCOLS = ("audio.drachtio.org", "audio.jambonz.org")
# Offered by jambonz, whose mod_audio_fork plays the hub's audio (in two-way mode): two-way unless told otherwise.
PLAYBACK_SUBPROTOCOLS = frozenset({"audio.jambonz.org"})


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


# Plivo request parameters a gateway may hand on to the application, under either spelling
PLIVO_PARAM_KEYS = {
    "ForwardedFrom": "ForwardedFrom",
    "forwardedFrom": "ForwardedFrom",
    "ALegUUID": "ALegUUID",
    "aLegUUID": "ALegUUID",
    "ALegRequestUUID": "ALegRequestUUID",
    "aLegRequestUUID": "ALegRequestUUID",
    "CallerName": "CallerName",
    "callerName": "CallerName",
}


def _apply(meta: GatewayMetadata, key: str, value: Any) -> None:
    if key in ("appId", "app_id"):
        meta.app_id = _text(value, 20).strip()
    elif key in PLIVO_PARAM_KEYS:
        if _text(value):
            meta.plivo_params[PLIVO_PARAM_KEYS[key]] = _text(value, 200)
    elif key in ("callId", "callSid", "call_id", "callUUID"):
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
    elif key == "playback":
        try:
            meta.playback = parse_bool(value)
        except ValueError:
            meta.errors.append(f"playback {str(value)[:40]!r} is not true or false; ignoring it")


def resolve_playback(meta: GatewayMetadata, subprotocol: str | None) -> None:
    """Settle `meta.playback` for this connection (see the module's docstring) and say why; once."""
    if meta.playback_note:
        return
    if meta.playback is not None:
        meta.playback_note = f'the gateway declared "playback": {"true" if meta.playback else "false"}'
        return
    meta.playback = subprotocol in PLAYBACK_SUBPROTOCOLS
    offered = f"subprotocol {subprotocol}" if subprotocol else "no subprotocol"
    verdict = "two-way" if meta.playback else 'without "playback": true in the metadata'
    meta.playback_note = f"{offered}, {verdict}"


def one_way_notices(meta: GatewayMetadata) -> list[str]:
    """The gateway error texts for stream requests that ask for playback this connection cannot do."""
    if meta.playback is not False:
        return []
    notices = []
    for index, entry in enumerate(meta.streams):
        try:
            asks = parse_bool(entry.get("bidirectional", False))
        except ValueError:
            continue  # the stream's own validation refuses it
        if asks:
            notices.append(f"streams[{index}] is one-way: {no_playback_reason(meta.playback_note)}")
    return notices


def no_playback_reason(note: str) -> str:
    """Why a bidirectional stream was refused or made one-way, for logs, the debug log and the API."""
    reason = "this gateway connection cannot play audio into the call"
    return f"{reason} ({note})" if note else reason


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
