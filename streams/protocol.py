"""Plivo Audio Streams messages and gateway framing (pure: no sockets, no clock).

Hub -> customer builders return JSON text exactly as spec §2 (field names, types,
`extra_headers` always present). The media builder is the hot path: a template with
the stream's constants baked in, so a frame costs one base64 and one string format.
Customer and gateway parsers raise ProtocolError with a message fit for the debug log.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pybase64 import b64decode as _b64decode  # SIMD base64: the media path encodes every frame
from pybase64 import b64encode as _b64encode

MAX_CUSTOMER_MESSAGE = 1024 * 1024  # D14: larger messages are ignored with a debug event
MAX_CHECKPOINT_NAME = 256
DTMF_DIGITS = re.compile(r"^[0-9*#A-D]+$")
L16, MULAW = "audio/x-l16", "audio/x-mulaw"
PLAY_FORMATS = {(L16, 8000), (L16, 16000), (MULAW, 8000)}


class ProtocolError(ValueError):
    """A message we cannot act on; the text goes to the debug log."""


def b64encode(data: bytes) -> str:
    return _b64encode(data).decode("ascii")


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --- hub -> customer -------------------------------------------------------------------


def start_message(
    *,
    call_id: str,
    stream_id: str,
    account_id: str,
    tracks: list[str],
    encoding: str,
    sample_rate: int,
    extra_headers: str,
) -> str:
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": 1,
            "start": {
                "callId": call_id,
                "streamId": stream_id,
                "accountId": account_id,
                "tracks": tracks,
                "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate},
            },
            "extra_headers": extra_headers,
        }
    )


class MediaTemplate:
    """Builds `media` messages for one stream without per-frame dicts or json.dumps."""

    __slots__ = ("_head", "_mid", "_tail")

    def __init__(self, stream_id: str, extra_headers: str) -> None:
        self._head = '{"event":"media","sequenceNumber":'
        self._mid = ',"streamId":' + _dumps(stream_id) + ',"media":{"track":"'
        self._tail = '"},"extra_headers":' + _dumps(extra_headers) + "}"

    def render(self, seq: int, track: str, timestamp_ms: int, chunk: int, payload: bytes) -> str:
        return (
            f'{self._head}{seq}{self._mid}{track}","timestamp":"{timestamp_ms}","chunk":{chunk},'
            f'"payload":"{b64encode(payload)}{self._tail}'
        )


def dtmf_message(*, seq: int, stream_id: str, digit: str, timestamp_ms: int, extra_headers: str) -> str:
    return _dumps(
        {
            "event": "dtmf",
            "sequenceNumber": seq,
            "streamId": stream_id,
            "dtmf": {"track": "inbound", "digit": digit, "timestamp": str(timestamp_ms)},
            "extra_headers": extra_headers,
        }
    )


def played_stream(*, seq: int, stream_id: str, name: str) -> str:
    return _dumps({"event": "playedStream", "sequenceNumber": seq, "streamId": stream_id, "name": name})


def cleared_audio(*, seq: int, stream_id: str) -> str:
    return _dumps({"event": "clearedAudio", "sequenceNumber": seq, "streamId": stream_id})


def stop_message(*, seq: int, stream_id: str, reason: str) -> str:
    return _dumps({"event": "stop", "sequenceNumber": seq, "streamId": stream_id, "reason": reason})


# --- customer -> hub -------------------------------------------------------------------


@dataclass(frozen=True)
class PlayAudio:
    mulaw: bool
    rate: int
    payload: bytes


@dataclass(frozen=True)
class Checkpoint:
    name: str


@dataclass(frozen=True)
class ClearAudio:
    pass


@dataclass(frozen=True)
class SendDTMF:
    digits: str


@dataclass(frozen=True)
class UnknownEvent:
    event: str


Command = PlayAudio | Checkpoint | ClearAudio | SendDTMF | UnknownEvent


def _object(text: str | bytes, limit: int) -> dict[str, Any]:
    if isinstance(text, bytes):
        raise ProtocolError("binary frames are not part of the protocol (send JSON text)")
    if len(text) > limit:
        raise ProtocolError(f"message of {len(text)} characters is over the {limit} limit")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError also covers ints over Python's digit limit
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    return data


def _sample_rate(value: Any) -> int:
    if isinstance(value, bool):
        raise ProtocolError("media.sampleRate must be a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ProtocolError("media.sampleRate must be 8000 or 16000")


def _play_audio(data: dict[str, Any]) -> PlayAudio:
    media = data.get("media")
    if not isinstance(media, dict):
        raise ProtocolError("playAudio needs a media object")
    content_type = media.get("contentType")
    if not isinstance(content_type, str):
        raise ProtocolError("playAudio needs media.contentType (audio/x-l16 or audio/x-mulaw)")
    encoding, _, rate_part = content_type.replace(" ", "").partition(";rate=")
    raw_rate = media.get("sampleRate", rate_part or None)
    if raw_rate is None:
        raise ProtocolError("playAudio needs media.sampleRate")
    rate = _sample_rate(raw_rate)
    if (encoding, rate) not in PLAY_FORMATS:
        raise ProtocolError(
            f"unsupported format {encoding}@{rate}: use audio/x-l16 at 8000 or 16000, or audio/x-mulaw at 8000"
        )
    payload = media.get("payload")
    if not isinstance(payload, str) or not payload:
        raise ProtocolError("playAudio needs a non-empty base64 media.payload")
    try:
        audio = _b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("media.payload is not valid base64") from None
    if encoding == L16 and len(audio) % 2:
        raise ProtocolError("audio/x-l16 payload must be a whole number of 16-bit samples")
    if not audio:
        raise ProtocolError("media.payload decodes to no audio")
    return PlayAudio(mulaw=encoding == MULAW, rate=rate, payload=audio)


def parse_customer_message(text: str | bytes, *, limit: int = MAX_CUSTOMER_MESSAGE) -> Command:
    """One customer frame -> typed command; UnknownEvent for events we ignore (spec §3)."""
    data = _object(text, limit)
    event = data.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError("message has no event")
    if event == "playAudio":
        return _play_audio(data)
    if event == "checkpoint":
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError("checkpoint needs a non-empty string name")
        if len(name) > MAX_CHECKPOINT_NAME:
            raise ProtocolError(f"checkpoint name is longer than {MAX_CHECKPOINT_NAME} characters")
        return Checkpoint(name)
    if event == "clearAudio":
        return ClearAudio()
    if event == "sendDTMF":
        digits = data.get("dtmf")
        if not isinstance(digits, str) or not DTMF_DIGITS.match(digits.upper()) or len(digits) > 64:
            raise ProtocolError("sendDTMF needs dtmf: 1 to 64 of 0-9 * # A-D")
        return SendDTMF(digits.upper())
    return UnknownEvent(event[:64])


# --- gateway (mod_audio_fork / jambonz framing) -------------------------------------------


@dataclass
class GatewayMetadata:
    call_id: str = ""
    from_number: str = ""
    to_number: str = ""
    direction: str = "inbound"
    sample_rate: int = 8000
    mix_type: str = "mono"
    streams: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] | str = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return 2 if self.mix_type == "stereo" else 1


def _text(value: Any, limit: int = 128) -> str:
    return value[:limit] if isinstance(value, str) else str(value)[:limit] if isinstance(value, int | float) else ""


def parse_gateway_metadata(text: str, *, defaults: dict[str, str] | None = None) -> GatewayMetadata:
    """The first TEXT frame. Non-JSON text is kept as opaque metadata; bad fields become errors."""
    meta = GatewayMetadata()
    for key, value in (defaults or {}).items():
        _apply(meta, key, value)
    try:
        data = json.loads(text)
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
        rate = {"8k": 8000, "16k": 16000}.get(str(value).lower(), value)
        try:
            rate = int(rate)
        except (TypeError, ValueError):
            rate = 0
        if rate in (8000, 16000):
            meta.sample_rate = rate
        else:
            meta.errors.append(f"sampleRate {value!r} is not 8000 or 16000; using {meta.sample_rate}")
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
    data = _object(text, 64 * 1024)
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
    return _dumps({"type": "sendDTMF", "data": {"dtmf": digits}})


def gateway_kill_audio() -> str:
    return _dumps({"type": "killAudio"})


def gateway_error(message: str) -> str:
    return _dumps({"type": "error", "data": {"error": message}})
