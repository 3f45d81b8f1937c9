"""Plivo Audio Streams messages, hub <-> customer (pure: no sockets, no clock).

Hub -> customer builders return JSON text exactly as spec §2 (field names, types,
`extra_headers` always present). The media builder is the hot path: a template with
the stream's constants baked in, so a frame costs one base64 and one string format.
The customer parser raises ProtocolError with a message fit for the debug log.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

from pybase64 import b64decode as _b64decode  # SIMD base64: the media path encodes every frame
from pybase64 import b64encode as _b64encode

from streams.core.framing import DTMF_DIGITS, ProtocolError, json_object
from streams.core.framing import dumps as _dumps

MAX_CUSTOMER_MESSAGE = 1024 * 1024  # D14: larger messages are ignored with a debug event
MAX_CHECKPOINT_NAME = 256
L16, MULAW = "audio/x-l16", "audio/x-mulaw"
PLAY_FORMATS = {(L16, 8000), (L16, 16000), (MULAW, 8000)}


def b64encode(data: bytes) -> str:
    return _b64encode(data).decode("ascii")


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
    resume: Resume | None = None,
) -> str:
    """The `start` frame; with `resume`, the `start` of a resumed connection (docs/resume.md):
    the same frame plus `start.resume`, which says where the stream's counters continue."""
    start: dict[str, Any] = {
        "callId": call_id,
        "streamId": stream_id,
        "accountId": account_id,
        "tracks": tracks,
        "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate},
    }
    if resume is not None:
        start["resume"] = {
            "resumed": True,
            "sequenceNumber": resume.sequence_number,
            "chunk": dict(resume.chunks),
            "timestamp": str(resume.timestamp_ms),
            "resumeCount": resume.count,
        }
    return _dumps({"event": "start", "sequenceNumber": 1, "start": start, "extra_headers": extra_headers})


@dataclass(frozen=True)
class Resume:
    """Where a resumed stream continues: the sequenceNumber of the first frame after `start`, the
    chunk of each track's first media frame after it, that frame's audio position (epoch ms),
    and how many times this stream was resumed so far (1 for the first)."""

    sequence_number: int
    chunks: tuple[tuple[str, int], ...]
    timestamp_ms: int
    count: int


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
    data = json_object(text, limit)
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
