"""A WebSocket client that behaves as Asterisk's chan_websocket does on the wire.

Written from spec/asterisk-chan-websocket.md and chan_websocket.c (Asterisk 23):
- the upgrade: `GET <path>?<v() pairs>`, subprotocol `media`, HTTP Basic, no Origin, no
  User-Agent, no compression offered; messages over 65,535 bytes close the socket (1009);
- MEDIA_START first (JSON or plain text), then BINARY codec frames, one per 20 ms while the
  caller talks and nothing while the caller is silent; the last frame of a burst may be short;
- commands parsed in the call's control format only; TEXT over 128 bytes ignored; invalid
  JSON answered with ERROR; unknown commands answered with nothing;
- the playback queue (`FrameQueue`): audio messages cut into whole frames (a partial tail is
  dropped), one frame played per 20 ms tick, MEDIA_XOFF when the queue reaches 900 frames,
  MEDIA_XON once it is below 800 at a tick, whole messages dropped while it holds 1000;
  MARK_MEDIA answered when the mark reaches the front; FLUSH_MEDIA drops frames and marks;
- HANGUP: the channel hangs up and the socket closes 1000.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

FRAME_SECONDS = 0.020
MAX_MESSAGE = 65535
MAX_TEXT_COMMAND = 128
CODEC_FRAME = {"ulaw": 160, "alaw": 160, "slin": 320, "slin16": 640, "g722": 160}


@dataclass
class Mark:
    correlation_id: str


@dataclass
class FrameQueue:
    """chan_websocket's frame queue (pure): what the app sent, waiting for the 20 ms timer."""

    frame_bytes: int
    xoff_level: int = 900
    xon_level: int = 800
    max_length: int = 1000
    items: deque[bytes | Mark] = field(default_factory=deque)
    length: int = 0  # audio frames only: marks take no media timeslot
    full: bool = False
    paused: bool = False
    dropped_messages: int = 0
    dropped_tail_bytes: int = 0

    def push_media(self, data: bytes) -> list[str]:
        """Queue one BINARY message; returns the events to send (MEDIA_XOFF)."""
        if self.length >= self.max_length:
            self.dropped_messages += 1
            return []
        events: list[str] = []
        whole = len(data) - len(data) % self.frame_bytes
        self.dropped_tail_bytes += len(data) - whole
        for i in range(0, whole, self.frame_bytes):
            self.items.append(data[i : i + self.frame_bytes])
            self.length += 1
            if not self.full and self.length >= self.xoff_level:
                self.full = True
                events.append("MEDIA_XOFF")
        return events

    def push_mark(self, correlation_id: str) -> None:
        self.items.append(Mark(correlation_id))

    def flush(self) -> list[str]:
        dropped = [item.correlation_id for item in self.items if isinstance(item, Mark)]
        self.items.clear()
        self.length = 0
        self.paused = False
        return dropped

    def tick(self) -> tuple[bytes | None, list[tuple[str, str]]]:
        """One 20 ms timer tick: the frame played (None: silence) and events (name, id)."""
        if self.paused:
            return None, []
        events: list[tuple[str, str]] = []
        if self.full and self.length < self.xon_level:
            self.full = False
            events.append(("MEDIA_XON", ""))
        while self.items and isinstance(self.items[0], Mark):
            mark = self.items.popleft()
            assert isinstance(mark, Mark)
            events.append(("MEDIA_MARK_PROCESSED", mark.correlation_id))
        if not self.items:
            return None, events
        frame = self.items.popleft()
        assert isinstance(frame, bytes)
        self.length -= 1
        return frame, events


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class FakeAsterisk:
    """One call leg: Dial(WebSocket/<client>/c(<codec>)f(<format>)v(<params>))."""

    url: str  # ws://host:port/ingest/asterisk, as websocket_client.conf's uri
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)  # the v() pairs
    codec: str = "slin"
    json_mode: bool = True
    channel_id: str = "1795636886.5"
    channel_variables: dict[str, str] = field(default_factory=dict)
    xoff_level: int = 900
    xon_level: int = 800
    max_length: int = 1000
    ws: ClientConnection | None = None
    queue: FrameQueue = field(init=False)
    played: list[tuple[float, bytes]] = field(default_factory=list)  # (time, frame) the caller heard
    commands: list[tuple[float, str]] = field(default_factory=list)  # every TEXT from the hub
    binary_sizes: list[int] = field(default_factory=list)
    events_sent: list[str] = field(default_factory=list)
    marks_processed: list[tuple[float, str]] = field(default_factory=list)
    unknown_commands: list[str] = field(default_factory=list)
    hangup_received: bool = False
    close_code: int | None = None
    closed = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = FrameQueue(CODEC_FRAME[self.codec], self.xoff_level, self.xon_level, self.max_length)

    @property
    def frame_bytes(self) -> int:
        return CODEC_FRAME[self.codec]

    @property
    def full_url(self) -> str:
        # Asterisk appends the v() pairs verbatim; the dialplan URIENCODE()s each value.
        return f"{self.url}?{urlencode(self.params, quote_via=quote)}" if self.params else self.url

    async def dial(self, *, send_media_start: bool = True) -> FakeAsterisk:
        self.ws = await connect(
            self.full_url,
            additional_headers=self.headers,
            subprotocols=["media"],  # type: ignore[list-item]
            compression=None,
            max_size=MAX_MESSAGE,
            user_agent_header=None,
            open_timeout=5,
        )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._play())]
        if send_media_start:
            await self.send_text(self.media_start_text())
        return self

    def media_start_text(self, fmt: str | None = None) -> str:
        fmt = fmt or self.codec
        fields: dict[str, Any] = {
            "connection_id": "e226e283-c90a-4ea9-9e37-389000b9ef47",
            "channel": "WebSocket/streamhub-00000001",
            "channel_id": self.channel_id,
            "format": fmt,
            "optimal_frame_size": CODEC_FRAME.get(fmt, 160),
            "ptime": 20,
        }
        if self.json_mode:
            return json.dumps({"event": "MEDIA_START", **fields, "channel_variables": self.channel_variables})
        return "MEDIA_START " + " ".join(f"{k}:{v}" for k, v in fields.items())

    def event_text(self, name: str, **fields: str) -> str:
        if self.json_mode:
            return json.dumps({"event": name, "channel_id": self.channel_id, **fields})
        if name in ("MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"):
            return f"{name} {fields['correlation_id']}" if fields.get("correlation_id") else name
        if name in ("MEDIA_XOFF", "MEDIA_XON", "QUEUE_DRAINED"):
            return name
        # chan_websocket's own field order: DTMF_END names the digit first, the others the channel
        ordered = (
            {**fields, "channel_id": self.channel_id}
            if name == "DTMF_END"
            else {"channel_id": self.channel_id, **fields}
        )
        return " ".join([name, *(f"{k}:{v}" for k, v in ordered.items())])

    async def send_text(self, text: str) -> None:
        assert self.ws is not None
        self.events_sent.append(text)
        await self.ws.send(text)

    async def send_event(self, name: str, **fields: str) -> None:
        await self.send_text(self.event_text(name, **fields))

    async def dtmf(self, digit: str) -> None:
        await self.send_event("DTMF_END", digit=digit)

    async def talk(self, data: bytes, *, interval: float = FRAME_SECONDS) -> None:
        """Caller audio in the codec: one frame per `interval` on an absolute clock, the last may be short."""
        assert self.ws is not None
        start = time.monotonic()
        for k, i in enumerate(range(0, len(data), self.frame_bytes)):
            if interval:
                delay = start + k * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.ws.send(data[i : i + self.frame_bytes])

    async def send_binary(self, data: bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    async def hang_up(self, code: int = 1000) -> None:
        """The caller hangs up: Asterisk closes the socket."""
        if self.ws is not None:
            await self.ws.close(code)
        await self.wait_closed()

    async def drop(self) -> None:
        """The Asterisk box vanishes: TCP goes away without a close frame."""
        assert self.ws is not None
        self.ws.transport.abort()
        await self.wait_closed()

    async def wait_closed(self, timeout: float = 10) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks[:1], timeout=timeout)  # the reader ends with the socket
        for task in self._tasks:
            task.cancel()

    @property
    def heard(self) -> bytes:
        return b"".join(frame for _, frame in self.played)

    @property
    def command_names(self) -> list[str]:
        names = []
        for _, text in self.commands:
            try:
                names.append(str(json.loads(text).get("command")) if self.json_mode else text.split(" ")[0])
            except (ValueError, AttributeError):
                names.append(text)
        return names

    # --- the channel driver ---------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.binary_sizes.append(len(message))
                    for event in self.queue.push_media(message):
                        await self.send_event(event)
                else:
                    self.commands.append((time.monotonic(), message))
                    await self._command(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            # the code of whoever closed first: ours (e.g. 1009 for an oversize message) or the hub's
            proto = self.ws.protocol
            first = proto.close_rcvd if proto.close_rcvd_then_sent else proto.close_sent or proto.close_rcvd
            self.close_code = first.code if first is not None else 1006

    async def _command(self, text: str) -> None:
        assert self.ws is not None
        if len(text.encode()) > MAX_TEXT_COMMAND:
            self.unknown_commands.append(text)  # chan_websocket logs a warning and ignores it
            return
        text = text.strip()
        correlation_id: str | None
        if self.json_mode:
            try:
                body = json.loads(text)
            except ValueError:
                await self.send_event("ERROR", error_text="Unable to parse JSON command")
                return
            name = body.get("command") if isinstance(body, dict) else None
            correlation_id = body.get("correlation_id") if isinstance(body, dict) else None
        else:
            name, _, rest = text.partition(" ")
            correlation_id = rest or None
        if name == "HANGUP":
            self.hangup_received = True
            await self.ws.close(1000)
        elif name == "MARK_MEDIA":
            self.queue.push_mark(correlation_id or "")
        elif name == "FLUSH_MEDIA":
            self.queue.flush()
        elif name == "PAUSE_MEDIA":
            self.queue.paused = True
        elif name == "CONTINUE_MEDIA":
            self.queue.paused = False
        elif name == "GET_STATUS":
            q = self.queue
            await self.send_event(
                "STATUS",
                queue_length=str(q.length),
                xon_level=str(q.xon_level),
                xoff_level=str(q.xoff_level),
                queue_full=str(q.full).lower(),
                bulk_media="false",
                media_paused=str(q.paused).lower(),
            )
        elif name == "ANSWER":
            pass
        else:
            self.unknown_commands.append(text)

    async def _play(self) -> None:
        """The channel timer: one frame off the queue every 20 ms, on an absolute clock."""
        start, tick = time.monotonic(), 0
        while not self.closed:
            tick += 1
            delay = start + tick * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            frame, events = self.queue.tick()
            now = time.monotonic()
            for name, correlation_id in events:
                if name == "MEDIA_MARK_PROCESSED":
                    self.marks_processed.append((now, correlation_id))
                    await self._event_or_stop(name, correlation_id=correlation_id)
                else:
                    await self._event_or_stop(name)
            if frame is not None:
                self.played.append((now, frame))

    async def _event_or_stop(self, name: str, **fields: str) -> None:
        try:
            await self.send_event(name, **fields)
        except ConnectionClosed:
            raise asyncio.CancelledError from None
