"""Asterisk `chan_websocket` framing (pure: no sockets, no clock, no ORM).

Contract (spec/asterisk-chan-websocket.md, checked against chan_websocket.c):
- Events arrive as TEXT in one of two control formats, fixed per call by the dial
  string's `f()` option: JSON (`{"event":"DTMF_END","digit":"1",…}`) or plain text
  (`DTMF_END digit:1 channel_id:…`, `MEDIA_MARK_PROCESSED <id>`). `parse_event` reads
  both; `MEDIA_START` tells which one the call uses.
- Commands must go back in the call's own format: a plain-text Asterisk treats a JSON
  command as an unknown command and ignores it, and so does a JSON one with plain text.
  Commands over 128 bytes are ignored by Asterisk, so `command` refuses to build one.
- The call's metadata (id, from, to, requested streams) comes from the upgrade's query
  string (the dial string's `v()` pairs), with MEDIA_START's `channel_variables` as a
  fallback and its `channel_id` as the call id of last resort (D1 then mints a UUID).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from streams.core.audiofork import parse_gateway_metadata
from streams.core.framing import DTMF_DIGITS, ProtocolError, loads
from streams.core.gateway import GatewayMetadata
from streams.core.validation import FIELD_NAMES

MAX_COMMAND_BYTES = 128  # chan_websocket MAX_TEXT_MESSAGE_LEN: longer TEXT is dropped silently
MAX_EVENT_CHARS = 64 * 1024  # MEDIA_START carries every channel variable
MAX_RAW_VALUE = 2048

CALL_KEYS = ("callId", "from", "to", "direction", "appId", "forwardedFrom", "aLegUUID", "aLegRequestUUID", "callerName")
# One stream requested in the query string uses the <Stream> attribute names (decision in the spec).
STREAM_KEYS = tuple(spellings[-1] for spellings in FIELD_NAMES.values())
SECRET_KEYS = frozenset({"token"})
# Plain-text events whose single parameter is a bare id rather than key:value.
BARE_ID_EVENTS = frozenset({"MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"})


class UnsupportedFormat(ProtocolError):
    """MEDIA_START named a codec the hub does not take; the call is refused."""


@dataclass(frozen=True)
class Codec:
    name: str
    rate: int
    mulaw: bool = False

    @property
    def frame_bytes(self) -> int:
        """Bytes in 20 ms of this codec on the wire (Asterisk's optimal_frame_size)."""
        samples = self.rate // 50
        return samples if self.mulaw else samples * 2


CODECS = {
    "ulaw": Codec("ulaw", 8000, mulaw=True),
    "slin": Codec("slin", 8000),
    "slin16": Codec("slin16", 16000),
}


@dataclass(frozen=True)
class Event:
    name: str
    fields: dict[str, Any]
    json_mode: bool

    def text(self, key: str) -> str:
        value = self.fields.get(key)
        return value if isinstance(value, str) else "" if value is None else str(value)


@dataclass(frozen=True)
class MediaStart:
    codec: Codec
    json_mode: bool
    channel_id: str = ""
    channel: str = ""
    connection_id: str = ""
    optimal_frame_size: int = 0
    ptime: int = 20
    channel_variables: dict[str, Any] = field(default_factory=dict)


def parse_event(text: str) -> Event:
    """One TEXT message from Asterisk, in either control format. Garbage raises ProtocolError."""
    if len(text) > MAX_EVENT_CHARS:
        raise ProtocolError(f"event of {len(text)} characters is over the {MAX_EVENT_CHARS} limit")
    stripped = text.strip()
    if not stripped:
        raise ProtocolError("empty text message")
    if stripped.startswith("{"):
        try:
            data = loads(stripped)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProtocolError("a JSON event must be an object")
        name = data.get("event")
        if not isinstance(name, str) or not name:
            raise ProtocolError("JSON event has no event name")
        return Event(name, data, json_mode=True)
    name, _, rest = stripped.partition(" ")
    if not name.isascii() or not name.replace("_", "").isalnum() or not name.isupper():
        raise ProtocolError(f"not an Asterisk event: {stripped[:80]!r}")
    fields: dict[str, Any] = {}
    rest = rest.strip()
    if name in BARE_ID_EVENTS:
        if rest:
            fields["correlation_id"] = rest
    else:
        # error_text is ERROR's last field and the only one whose value has spaces
        head, marker, error_text = rest.partition("error_text:")
        for token in head.split():
            key, sep, value = token.partition(":")
            if sep and key:
                fields[key] = value
        if marker:
            fields["error_text"] = error_text.strip()
    return Event(name, fields, json_mode=False)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        return default


def media_start(event: Event) -> MediaStart:
    """MEDIA_START -> the call's codec and identity; a codec we cannot carry raises UnsupportedFormat."""
    if event.name != "MEDIA_START":
        raise ProtocolError(f"expected MEDIA_START first, got {event.name}")
    name = event.text("format")
    codec = CODECS.get(name)
    if codec is None:
        shown = name[:40] or "(none)"
        raise UnsupportedFormat(f"unsupported format {shown}: dial with c(ulaw), c(slin) or c(slin16)")
    variables = event.fields.get("channel_variables")
    return MediaStart(
        codec=codec,
        json_mode=event.json_mode,
        channel_id=event.text("channel_id")[:200],
        channel=event.text("channel")[:200],
        connection_id=event.text("connection_id")[:200],
        optimal_frame_size=_int(event.fields.get("optimal_frame_size"), codec.frame_bytes),
        ptime=_int(event.fields.get("ptime"), 20),
        channel_variables=variables if isinstance(variables, dict) else {},
    )


def dtmf_digit(event: Event) -> str:
    digit = event.text("digit").upper()
    if len(digit) != 1 or not DTMF_DIGITS.match(digit):
        raise ProtocolError(f"DTMF_END needs one digit of 0-9 * # A-D, got {digit[:10]!r}")
    return digit


def command(name: str, *, json_mode: bool, correlation_id: str | None = None) -> str:
    """A command in the call's control format (JSON `{"command":…}` or plain `NAME [id]`)."""
    if json_mode:
        body: dict[str, str] = {"command": name}
        if correlation_id is not None:
            body["correlation_id"] = correlation_id
        text = json.dumps(body, separators=(",", ":"))
    else:
        text = name if correlation_id is None else f"{name} {correlation_id}"
    if len(text.encode()) > MAX_COMMAND_BYTES:
        raise ValueError(f"{name} command of {len(text.encode())} bytes: Asterisk ignores commands over 128 bytes")
    return text


def call_metadata(query: dict[str, str], start: MediaStart) -> GatewayMetadata:
    """The call as streamhub sees it: v() query pairs first, channel variables second."""
    # `Set(__serviceUrl=…)` is how a dialplan hands a variable down to the WebSocket channel;
    # the leading underscores only mark inheritance
    variables = {k.lstrip("_"): v for k, v in start.channel_variables.items() if isinstance(v, str)}

    def pick(key: str) -> str | None:
        if key in query:
            return query[key]
        return variables.get(key)

    data: dict[str, Any] = {"sampleRate": start.codec.rate}
    for key in CALL_KEYS:
        value = pick(key)
        if value:
            data[key] = value
    if "callId" not in data and start.channel_id:
        data["callId"] = start.channel_id
    streams: list[Any] = []
    errors: list[str] = []
    single = {key: value for key in STREAM_KEYS if (value := pick(key)) is not None}
    if single:
        streams.append(single)
    listed = pick("streams")
    if listed:
        try:
            parsed = loads(listed)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, list) and all(isinstance(item, dict) for item in parsed):
            streams.extend(parsed)
        else:
            errors.append("streams must be a URL-encoded JSON list of objects with <Stream> attributes")
    data["streams"] = streams
    meta = parse_gateway_metadata(json.dumps(data))
    meta.errors.extend(errors)
    meta.raw = {
        "query": {k: v[:MAX_RAW_VALUE] for k, v in query.items() if k not in SECRET_KEYS},
        "media_start": {
            "format": start.codec.name,
            "channel": start.channel,
            "channel_id": start.channel_id,
            "connection_id": start.connection_id,
            "optimal_frame_size": start.optimal_frame_size,
            "ptime": start.ptime,
            "control_format": "json" if start.json_mode else "plain-text",
        },
    }
    return meta
