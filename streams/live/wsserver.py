"""uvicorn's WebSocket protocol for the hub: websockets-sansio plus a direct path for audio frames.

`uvicorn --ws streams.live.wsserver:IngestWebSocketProtocol` (streamhub/servers.py). The
ingest consumer stays a Channels consumer and the ASGI app; this class only makes the
server's side of each frame cheaper:

- Data frames (TEXT, BINARY, CONTINUATION) are parsed here, a few lines of RFC 6455 with
  the unmasking in C (websockets.speedups), instead of websockets' generator parser;
  control frames (PING, PONG, CLOSE) are handed whole to the websockets protocol, which
  answers and closes exactly as uvicorn's own class does. (A connection that agreed
  permessage-deflate is parsed by websockets as in uvicorn; the hub's command turns the
  extension off: PCM hardly compresses, and inflating it costs CPU per frame.)
- The ASGI extension `streamhub.binary_frames` (in scope["extensions"]) lets the app take
  BINARY messages in a synchronous callback: `set_binary_handler(handler)`, where
  `handler(data) -> bool` returns False for a message it does not take (that one goes to
  receive() as usual). A message reaches the handler only when nothing received earlier
  still waits in the receive queue, so the app sees the connection's messages in order.
  Per audio frame this saves the ASGI message dict, the queue, a task wake-up and a pause
  and resume of the socket's reading.
  `send_binary(data) -> bool` writes a BINARY frame at once (False, and nothing written,
  when the socket is closing or paused: then use the ASGI send()).

Servers without the extension (daphne, uvicorn's own protocols) serve the same consumer
through receive() and send(). The bench (bench/RESULTS.md) measures both.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.speedups import apply_mask

FRAMES_EXTENSION = "streamhub.binary_frames"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")

BinaryHandler = Callable[[bytes], bool]


class IngestWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.binary_handler: BinaryHandler | None = None
        self._own_parser: bool | None = None  # decided at the first data after the handshake
        self._buf = bytearray()
        self._parts: list[bytes] | None = None  # a fragmented message's frames so far
        self._parts_text = False
        self._parts_size = 0
        self._max_size = self.config.ws_max_size

    # --- the extension -------------------------------------------------------------------

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app's task was created, not run yet: it sees the extension
            scope["extensions"][FRAMES_EXTENSION] = {
                "set_binary_handler": self.set_binary_handler,
                "send_binary": self.send_binary,
            }

    def set_binary_handler(self, handler: BinaryHandler | None) -> None:
        self.binary_handler = handler

    def send_binary(self, data: bytes) -> bool:
        transport = self.transport
        if self.close_sent or self.disconnected or not self.writable.is_set() or transport.is_closing():
            return False
        n = len(data)
        if n < 126:
            head = bytes((0x82, n))
        elif n < 65536:
            head = _LEN16.pack(0x82, 126, n)
        else:
            head = _LEN64.pack(0x82, 127, n)
        transport.write(head + data)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # Leave no cycle for the garbage collector: the scope holds the extension, whose bound
        # methods hold this protocol, which holds the scope; and the app's handler holds the app,
        # which holds send_binary. (The app took the extension at connect; a call after this
        # returns False.) A cycle left here waits, with all it holds, for a collection that
        # scans every live call: ~100 ms at 370 calls (bench/RESULTS.md).
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"].pop(FRAMES_EXTENSION, None)
        self.binary_handler = None

    # --- reading -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        own = self._own_parser
        if own is None:
            if not self.handshake_complete or self.initial_response is not None or self.close_sent:
                super().data_received(data)
                return
            # websockets parsed the handshake; take over at a frame boundary, unless it holds
            # bytes already (a client that did not wait for the 101) or an extension was agreed
            own = self._own_parser = not self.conn.reader.buffer and not self.conn.extensions
        if not own:
            super().data_received(data)
            return
        buf = self._buf
        # nearly every read of a gateway socket: exactly one whole masked BINARY frame of 126-65535
        # bytes (a 20 ms frame), nothing left over from the last read, nothing queued before it
        if (
            not buf
            and len(data) > 8
            and data[0] == 0x82
            and data[1] == 0xFE
            and len(data) == 8 + ((data[2] << 8) | data[3])
            and len(data) - 8 <= self._max_size
        ):
            handler = self.binary_handler
            if handler is not None and not self.close_sent and self.queue.empty():
                payload = apply_mask(data[8:], data[4:8])
                try:
                    taken = handler(payload)
                except Exception:
                    self.logger.exception("binary frame handler failed")
                    return
                if not taken:
                    self._queue({"type": "websocket.receive", "bytes": payload})
                return
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        pos, end = 0, len(view)
        handler, queue_empty = self.binary_handler, self.queue.empty
        while end - pos >= 2:
            b0, b1 = view[pos], view[pos + 1]
            n = b1 & 0x7F
            p = pos + 2
            if n == 126:
                if end - p < 2:
                    break
                n = (view[p] << 8) | view[p + 1]
                p += 2
            elif n == 127:
                if end - p < 8:
                    break
                n = int.from_bytes(view[p : p + 8], "big")
                p += 8
            if not b1 & 0x80:
                self._fail(CloseCode.PROTOCOL_ERROR, "incorrect masking")
                return
            if b0 & 0x70:
                self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
                return
            opcode = b0 & 0x0F
            if opcode >= OP_CLOSE and (n > 125 or not b0 & 0x80):
                self._fail(CloseCode.PROTOCOL_ERROR, "invalid control frame")
                return
            if opcode < OP_CLOSE and n > self._max_size - self._parts_size:
                self._fail(CloseCode.MESSAGE_TOO_BIG, f"over size limit ({n} > {self._max_size} bytes)")
                return
            if end - p < 4 + n:
                break
            if opcode >= OP_CLOSE:
                # control frames, whole, to websockets: it answers PING, validates and echoes CLOSE
                frame = bytes(view[pos : p + 4 + n])
                pos = p + 4 + n
                self._rest(view, pos, end)
                super().data_received(frame)
                if self._own_parser is False or self.close_sent or self.conn.close_rcvd is not None:
                    return
                view, pos, end = self._buf, 0, len(self._buf)
                self._buf = bytearray()
                continue
            payload = apply_mask(view[p + 4 : p + 4 + n], view[p : p + 4])
            pos = p + 4 + n
            if b0 == 0x82 and handler is not None and not self.close_sent and queue_empty():
                # the audio path: one whole BINARY frame, nothing queued before it
                try:
                    taken = handler(payload)
                except Exception:
                    self.logger.exception("binary frame handler failed")
                    continue
                if not taken:
                    self._queue({"type": "websocket.receive", "bytes": payload})
                continue
            if not self._data_frame(b0 & 0x80, opcode, payload):
                return
        self._rest(view, pos, end)

    def _rest(self, view: bytes | bytearray, pos: int, end: int) -> None:
        """Keep what is left of `view` after `pos` (a frame not yet whole) for the next read."""
        buf = self._buf
        if view is buf:
            del buf[:pos]
        elif pos < end:
            self._buf = bytearray(view[pos:end])
        else:
            self._buf = bytearray()

    def _data_frame(self, fin: int, opcode: int, payload: bytes) -> bool:
        parts = self._parts
        if opcode == OP_CONT:
            if parts is None:
                self._fail(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
                return False
            parts.append(payload)
            self._parts_size += len(payload)
            if not fin:
                return True
            self._parts = None
            self._parts_size = 0
            return self._message(self._parts_text, b"".join(parts))
        if opcode not in (OP_TEXT, OP_BINARY):
            self._fail(CloseCode.PROTOCOL_ERROR, f"invalid opcode: {opcode}")
            return False
        if parts is not None:
            self._fail(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            return False
        if not fin:
            self._parts, self._parts_text, self._parts_size = [payload], opcode == OP_TEXT, len(payload)
            return True
        return self._message(opcode == OP_TEXT, payload)

    def send_receive_event_to_app(self) -> None:
        """uvicorn's path (a connection that agreed permessage-deflate): the same delivery."""
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        self._message(self.curr_msg_data_type == "text", data)

    def _message(self, text: bool, data: bytes) -> bool:
        if self.close_sent:
            return True  # past websocket.close: discarded, as uvicorn does
        if text:
            try:
                self._queue({"type": "websocket.receive", "text": data.decode()})
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                return False
            return True
        handler = self.binary_handler
        if handler is not None and self.queue.empty():
            try:
                if handler(data):
                    return True
            except Exception:
                self.logger.exception("binary frame handler failed")
                return True
        self._queue({"type": "websocket.receive", "bytes": data})
        return True

    def _queue(self, message: dict[str, Any]) -> None:
        self.queue.put_nowait(message)  # type: ignore[arg-type]
        if not self.read_paused:  # as uvicorn: read on once the app has taken the message
            self.read_paused = True
            self.transport.pause_reading()

    def _fail(self, code: int, reason: str) -> None:
        self._own_parser = False
        self.conn.fail(code, reason)
        self.handle_parser_exception()
