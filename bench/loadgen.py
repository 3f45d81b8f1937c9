"""Load generator on raw asyncio Protocols: N mod_audio_fork (or Asterisk) gateways and N Plivo customers.

Each gateway sends
20 ms L16 8 kHz frames on an absolute clock, the first bytes of every frame carrying (send
time µs, call index, frame number); each customer decodes them from `media` and measures
the relay's added latency, loss, duplicates and reordering; with --bidi the customers answer
with playAudio and the gateways measure the playback's jitter and drift.

Why hand-rolled: the first, websockets-based generator saturated its core at ~200 calls, before
the hub did (a task per call, a sleep per frame, websockets' framing and queues). Here the
WebSocket framing is a few lines of RFC 6455 on asyncio.Protocol (run under uvloop), one
timer drives every gateway's clock, a gateway frame is one header pack + a 16-byte mask +
one transport.write, and a customer unmasks a frame in C (websockets.speedups) and decodes
only the header at the start of `payload`. Measured at 200 calls against the reference
relay: ~11 µs of generator CPU per frame (sent + received) vs ~22 µs for the old one; the
user-space part fell from ~17 to ~5 µs, the rest is the kernel's loopback TCP and wake-ups,
which fall per frame as the load grows.
1 `media` message in 50 per call is fully parsed and checked (event, track, chunk,
sequenceNumber, streamId, the whole payload); failures count as "invalid".
--url may be a comma-separated list (call i uses url i % len: hub processes side by side).
Call i's 20 ms clock is offset by frac(i·φ)·20 ms, so frames arrive spread over the period
as from independent gateways, not in bursts. The output includes invalid,
gateway_write_pauses, loadgen_cpu_s and loadgen_cpu_pct (is the generator itself
saturated?); setup_p50/p99 = from the gateway's TCP connect to the customer's `start`.
The steady window (every call set up and sending) is announced on stderr as `steady-start`
and `steady-end` when it begins and ends, so bench/run.py can read the server's CPU over it;
latencies and `steady_frames` count the media messages sent in it. With --bidi --drift every
customer plays one clip as long as the call and `play_lost` counts the frames of it that
never reached the gateway.
With --noise-cancellation every stream asks for it (`noiseCancellation`, level 85) and the gateways
send noisy speech (samples/caller-8k.wav + white noise at 5 dB SNR) instead of the header; the hub
rewrites the payload, so a frame is known by its `chunk` number and its send time is looked up in
the gateway's record. The suppressor's flushed tail (one frame after the last) is counted apart
(`tail_frames`), not as a received frame.
--customer-tls CERT,KEY makes the customers serve wss://localhost (TLS customers).
--gateway asterisk: the gateways speak Asterisk chan_websocket instead (subprotocol `media`, the
stream's attributes as v() pairs on the URI, MEDIA_START in the JSON control format, then slin
frames; the call id is the channel's), against the hub's /ingest/asterisk. The silence the hub
sends for a gap in a gateway's audio (Asterisk sends nothing while the caller is silent) is counted
apart (`silence_frames`): each call's customer hears ~1 s of it while the call connects ahead of
its audio clock.
--burst N: N more calls arrive within one second, 1 s into the steady window, on top of the
--calls live ones; latency and steady_frames then count the live calls only, and the output
adds burst_started (burst calls whose customer got audio), burst_setup_p50/p99_ms and live_lost.
--expect-refusals (bench/run.py --overload): the hub is offered more calls than it admits. A call
it refuses cleanly (HTTP 503 on the upgrade, or a close with code 4503 before any media reached
its customer; the reason is the 503's body, or the close's reason, else the hub's last error
message) is counted as refused, not as an error, and sends nothing more; anything else (another
status or close code, a refusal after media flowed, lost frames) fails as without the flag. The
output adds offered, admitted (calls whose customer got `start`), refused, refused_503,
refused_4503, refusal_reasons ({reason: calls}), refusing_frames and refusing_p99_ms (the admitted
calls' frames sent from the first refusal to the steady window, and their added latency: the
refusals happen while the calls arrive, before the window); sent, received, lost and the
latencies count the calls that were not refused. The steady window is on the clock, as without
the flag, so refused calls cannot hold it back: it begins once every call has arrived, admitted or
refused.
Usage: python bench/loadgen.py --url ws://…[,ws://…] --calls N --seconds S
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import gc
import hashlib
import heapq
import itertools
import json
import math
import os
import random
import ssl
import statistics
import struct
import sys
import time
import uuid
import wave
from array import array
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

try:
    # C; unmasking a 600-byte media message: 0.11 µs vs 1.0 µs for the big-int XOR (timeit,
    # key int precomputed) and 1.6 µs with the key int built per message; 16-byte gateway
    # header: 0.13 µs vs 0.23 µs for int.from_bytes/XOR/to_bytes.
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension

    def apply_mask(data: bytes | bytearray, mask: bytes | bytearray) -> bytes:
        n = len(data)
        key = int.from_bytes((bytes(mask) * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


HEADER = struct.Struct("<QII")  # send time µs, call index, frame number
FRAME = 320
PERIOD = 0.02
CONNECT_LEAD = 1.0  # a gateway connects this long before its first frame is due
GOLDEN = 0.6180339887498949  # frac(i·φ) spreads any number of calls evenly over the 20 ms period
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CHECK_EVERY = 50  # 1 media message in 50 per call gets the full json.loads + payload check
EARLY = 0.0005  # the clock's timer is ms-grained (libuv): send what is due within 0.5 ms
OPEN_TIMEOUT = 30.0
TAIL_SECONDS = 1.0
CLOSE_WAIT = 2.0
MAX_HEAD = 64 * 1024
PAYLOAD_KEY = b'"payload":"'
CLIP = base64.b64encode(b"\x10\x00" * 8000).decode()
CHUNK_KEY = b'"chunk":'
SPEECH = Path(__file__).resolve().parent.parent / "samples" / "caller-8k.wav"


def noisy_speech_frames(snr_db: float = 5.0) -> list[bytes]:
    """--noise-cancellation's audio: the sample caller with white noise at `snr_db`, in 20 ms frames."""
    with wave.open(str(SPEECH)) as w:
        clean = array("h", w.readframes(w.getnframes()))
    rng = random.Random(1)
    noise = [rng.gauss(0.0, 1.0) for _ in clean]
    power = sum(c * c for c in clean) / len(clean)
    gain = math.sqrt(power / 10 ** (snr_db / 10))
    pcm = array("h", [max(-32768, min(32767, round(c + gain * z))) for c, z in zip(clean, noise, strict=True)])
    return [pcm[i : i + FRAME // 2].tobytes() for i in range(0, len(pcm) - FRAME // 2 + 1, FRAME // 2)]


def now_us() -> int:
    return time.monotonic_ns() // 1000


def accept_key(key: bytes) -> str:
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bytes | None) -> bytes:
    """One FIN frame; masked (client → server) when given a mask key."""
    n = len(payload)
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((0x80 | opcode, bit | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, bit | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


def play_message() -> bytes:
    # exactly as loadgen.py builds it (json.dumps default separators)
    media = {"contentType": "audio/x-l16", "sampleRate": 8000, "payload": CLIP}
    return json.dumps({"event": "playAudio", "media": media}).encode()


PLAY_FRAME = encode_frame(OP_TEXT, play_message(), None)  # customer → hub: unmasked


class HandshakeError(Exception):
    pass


class Refused(Exception):
    """--expect-refusals: the hub refused the call cleanly (HTTP 503 on the upgrade, or close 4503)."""


class Stats:
    def __init__(self, calls: int) -> None:
        self.sent = [0] * calls
        self.received = [0] * calls
        self.last = [-1] * calls
        self.duplicates = 0
        self.out_of_order = 0
        self.latencies: list[int] = []
        self.play_gaps: list[float] = []
        self.play_drift: list[float] = []
        self.connected = 0
        self.drift_seconds = 0.0
        self.steady_from_us = 0
        self.steady_until_us = 0
        self.steady_frames = 0
        self.steady_play_frames = 0
        self.play_lost = 0
        self.opened: dict[int, float] = {}
        self.setup: list[float] = []
        self.invalid = 0
        self.write_pauses = 0
        # --noise-cancellation: each gateway's send times (µs) by frame number, the audio it sends,
        # and the frames that came after the last one sent (the suppressor's flushed tail)
        self.noise = False
        self.sent_at: list[array[int]] = [array("q") for _ in range(calls)]
        self.speech: list[bytes] = []
        self.tail_frames = 0
        self.base_calls = calls  # calls with index >= base_calls are a --burst's
        self.burst_setup: list[float] = []
        # --expect-refusals: the calls refused cleanly, {index: (how, reason)} with how "503" or
        # "4503"; the customers that got `start`; the admitted calls' latencies (µs) for frames sent
        # from the first refusal until the steady window
        self.expect_refusals = False
        self.asterisk = False  # --gateway asterisk
        self.silence_frames = 0  # media the hub made of silence (Asterisk: the gateway sent nothing for 60 ms)
        self.refused: dict[int, tuple[str, str]] = {}
        self.started = [False] * calls
        self.refusing_from_us = 1 << 62
        self.refusing_latencies: list[int] = []


class WsConn(asyncio.Protocol, abc.ABC):
    """An HTTP/1.1 head, then RFC 6455 frames; subclasses (Customer, Gateway) handle the head and each frame."""

    masked_in = False  # whether the peer's frames are masked (i.e. we are the server)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass

    @abc.abstractmethod
    def on_head(self, head: str) -> bool:
        """The peer's HTTP head (request or response); False refuses the connection."""

    def after_refused_head(self, rest: bytes) -> None:
        """What followed a head that on_head refused (a refusal's body); ignored unless overridden."""

    @abc.abstractmethod
    def on_frame(self, b0: int, payload: bytes | bytearray) -> None:
        """One whole frame: its first byte (FIN + opcode) and its unmasked payload."""

    @abc.abstractmethod
    def protocol_error(self, why: str) -> None:
        """The peer broke HTTP or RFC 6455: record why and drop the connection."""

    def data_received(self, data: bytes) -> None:
        if not self.head_done:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.protocol_error("HTTP head too long")
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            data = bytes(self.buf[end + 4 :])
            self.buf.clear()
            if not self.on_head(head):
                self.after_refused_head(data)
                return
            self.head_done = True
            if not data:
                return
        buf = self.buf
        view: bytes | bytearray
        if buf:
            buf += data
            view = buf
        else:
            view = data
        pos, end, masked_in = 0, len(view), self.masked_in
        while end - pos >= 2:
            b1 = view[pos + 1]
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
            if b1 & 0x80:
                if not masked_in:
                    self.protocol_error("masked frame from the server")
                    return
                if end - p < 4 + n:
                    break
                payload: bytes | bytearray = apply_mask(view[p + 4 : p + 4 + n], view[p : p + 4])
                p += 4 + n
            else:
                if masked_in:
                    self.protocol_error("unmasked frame from the client")
                    return
                if end - p < n:
                    break
                payload = view[p : p + n]
                p += n
            b0 = view[pos]
            pos = p
            self.on_frame(b0, payload)
        if pos == end:
            if buf:
                buf.clear()
        elif buf:
            del buf[:pos]
        else:
            buf += view[pos:]


# --- customer: the WebSocket server the hub relays to ------------------------------------


class Customer(WsConn):
    masked_in = True

    def __init__(self, stats: Stats, bidi: bool) -> None:
        super().__init__()
        self.stats = stats
        self.bidi = bidi
        self.index = -1
        self.at = 0
        self.media_seen = 0
        self.started = False
        self.stream_id: Any = None
        self.last_seq = 0
        self.last_chunk = 0
        self.fragments: bytearray | None = None

    def protocol_error(self, why: str) -> None:
        self.stats.invalid += 1
        if self.transport is not None:
            self.transport.close()

    def reject(self, status: str) -> bool:
        assert self.transport is not None
        self.transport.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        self.transport.close()
        return False

    def on_head(self, head: str) -> bool:
        assert self.transport is not None
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        if len(parts) != 3 or parts[0] != "GET" or headers.get("upgrade", "").lower() != "websocket":
            return self.reject("400 Bad Request")
        key = headers.get("sec-websocket-key", "")
        if not key or headers.get("sec-websocket-version") != "13":
            return self.reject("400 Bad Request")
        try:
            self.index = int(parts[1].split("?", 1)[0].rsplit("/", 1)[1])
        except (IndexError, ValueError):
            return self.reject("404 Not Found")
        if not 0 <= self.index < len(self.stats.sent):
            return self.reject("404 Not Found")
        reply = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(key.encode())}",
        ]
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        if offered:
            reply.append(f"Sec-WebSocket-Protocol: {offered[0]}")
        # no Sec-WebSocket-Extensions: permessage-deflate (if offered) is declined
        self.transport.write(("\r\n".join(reply) + "\r\n\r\n").encode())
        return True

    def data_received(self, data: bytes) -> None:
        self.at = time.monotonic_ns() // 1000  # one arrival time per read
        # fast path, nearly every read: exactly one FIN TEXT frame, masked, 16-bit length
        if (
            data[0] == 0x81
            and len(data) > 8
            and data[1] == 0xFE
            and self.head_done
            and not self.buf
            and len(data) == 8 + ((data[2] << 8) | data[3])
        ):
            self.on_text(apply_mask(data[8:], data[4:8]))
        else:
            WsConn.data_received(self, data)

    def on_frame(self, b0: int, payload: bytes | bytearray) -> None:
        if b0 == 0x81:  # FIN, no RSV, TEXT: every Plivo message
            self.on_text(payload)
            return
        assert self.transport is not None
        opcode = b0 & 0x0F
        if b0 & 0x70:  # RSV bits: no extension was negotiated
            self.stats.invalid += 1
            return
        if opcode == OP_PING:
            self.transport.write(encode_frame(OP_PONG, bytes(payload), None))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            if not self.transport.is_closing():
                self.transport.write(encode_frame(OP_CLOSE, bytes(payload[:2]), None))
                self.transport.close()
        elif opcode == OP_TEXT:  # first fragment (the hub is not expected to fragment; allowed)
            self.fragments = bytearray(payload)
        elif opcode == OP_CONT and self.fragments is not None:
            self.fragments += payload
            if b0 & 0x80:
                message, self.fragments = bytes(self.fragments), None
                self.on_text(message)
        else:  # BINARY, or a continuation of nothing: not Plivo
            self.stats.invalid += 1

    def on_text(self, message: bytes | bytearray) -> None:
        stats = self.stats
        pos = message.find(PAYLOAD_KEY)
        if pos < 0:
            if b'"start"' in message:
                self.on_start(message)
            return
        if stats.noise:  # suppressed audio carries no header: the chunk number says which frame it is
            idx, head = self.index, b""
            try:
                number = int(message[message.rfind(CHUNK_KEY, 0, pos) + 8 : pos - 1]) - 1
            except ValueError:
                stats.invalid += 1
                return
            sent_at = stats.sent_at[idx]
            if number >= len(sent_at):
                stats.tail_frames += 1
                return
            sent_us = sent_at[number]
        else:
            try:
                head = binascii.a2b_base64(message[pos + 11 : pos + 35])
                sent_us, idx, number = HEADER.unpack_from(head)
            except (binascii.Error, struct.error):
                stats.invalid += 1
                return
            if sent_us == 0 and stats.asterisk:  # the hub's silence, filling a gap in the gateway's audio
                stats.silence_frames += 1
                return
            if idx != self.index:  # another call's audio on this stream
                stats.invalid += 1
                return
        if stats.steady_from_us <= sent_us < stats.steady_until_us and idx < stats.base_calls:
            stats.latencies.append(self.at - sent_us)  # every (live) call up and sending
            stats.steady_frames += 1
        elif stats.refusing_from_us <= sent_us < stats.steady_from_us:  # --expect-refusals: while refusing
            stats.refusing_latencies.append(self.at - sent_us)
        stats.received[idx] += 1
        last = stats.last[idx]
        if number == last:
            stats.duplicates += 1
        elif number < last:
            stats.out_of_order += 1
        else:
            stats.last[idx] = number
        seen = self.media_seen = self.media_seen + 1
        if seen % CHECK_EVERY == 1:
            self.check_media(message, head)
        if self.bidi and not stats.drift_seconds and seen % 50 == 0:
            assert self.transport is not None
            self.transport.write(PLAY_FRAME)

    def on_start(self, message: bytes | bytearray) -> None:
        stats = self.stats
        try:
            msg = json.loads(message)
        except ValueError:
            stats.invalid += 1
            return
        if not isinstance(msg, dict) or msg.get("event") != "start":
            return
        start = msg.get("start")
        seq = msg.get("sequenceNumber")
        if self.started or not isinstance(start, dict) or type(seq) is not int:
            stats.invalid += 1
        else:
            self.stream_id = start.get("streamId")
            self.last_seq = seq
        self.started = True
        stats.connected += 1
        stats.started[self.index] = True
        if stats.drift_seconds:  # one continuous clip: playback drift over its whole length
            assert self.transport is not None
            self.transport.write(PLAY_FRAME * int(stats.drift_seconds))
        if self.index in stats.opened:
            took = time.monotonic() - stats.opened[self.index]
            (stats.burst_setup if self.index >= stats.base_calls else stats.setup).append(took)

    def check_media(self, message: bytes | bytearray, head: bytes) -> None:
        ok = False
        try:
            msg = json.loads(message)
            media = msg["media"]
            seq, chunk = msg["sequenceNumber"], media["chunk"]
            ok = (
                self.started
                and msg["event"] == "media"
                and msg["streamId"] == self.stream_id
                and media["track"] == "inbound"
                and isinstance(media["timestamp"], str)
                and type(seq) is int
                and type(chunk) is int
                and seq > self.last_seq
                and chunk > self.last_chunk
            )
            if ok:
                self.last_seq, self.last_chunk = seq, chunk
                body = base64.b64decode(media["payload"], validate=True)
                ok = len(body) == FRAME and (not head or body[: HEADER.size] == head[: HEADER.size])
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.stats.invalid += 1


# --- gateway: the mod_audio_fork client ------------------------------------------------


class Target:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise SystemExit(f"not a ws:// or wss:// URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "wss" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if parts.port is None else f"{host}:{parts.port}"
        self.resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Gateway(WsConn):
    def __init__(self, index: int, stats: Stats, bidi: bool, request: bytes, key: str) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self.index = index
        self.stats = stats
        self.bidi = bidi
        self.request = request
        self.expected_accept = accept_key(key.encode())
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()  # the last frame was sent
        self.close_seen = asyncio.Event()
        self.scheduled = False
        self.dead = False  # nothing more can be sent
        self.close_sent = False
        self.arrivals: list[float] = []
        self.last_text = b""
        self.start = 0.0
        # --expect-refusals: (how, reason) once the hub refused the call cleanly; a 503's body so far
        self.refusal: tuple[str, str] | None = None
        self.refusal_body: bytearray | None = None
        self.refusal_length = -1
        self.failure: Exception | None = None  # the first failure (one between the 101 and the clock raises there)
        self.mask = os.urandom(4)
        # 0x82 0xFE 0x01 0x40: FIN+BINARY, MASK + 16-bit length, 320; then the key. The
        # padding starts at offset 16, a multiple of 4, so it is masked once per connection.
        self.prefix = bytes((0x82, 0x80 | 126)) + FRAME.to_bytes(2, "big") + self.mask
        self.masked_pad = apply_mask(b"\x00" * (FRAME - HEADER.size), self.mask)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.write(self.request)

    def pause_writing(self) -> None:
        self.stats.write_pauses += 1  # counted only: the clock never waits

    def resume_writing(self) -> None:
        pass

    def fail(self, exc: Exception) -> None:
        self.dead = True
        if self.failure is None:
            self.failure = exc
        if not self.opened.done():
            self.opened.set_exception(exc)
        elif self.scheduled and not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def protocol_error(self, why: str) -> None:
        self.fail(ConnectionError(f"call {self.index}: {why}"))

    def refuse(self, how: str, reason: str) -> None:
        """--expect-refusals: the hub refused this call cleanly; it sends nothing more."""
        if self.dead:  # already failed (or refused)
            return
        self.dead = True
        self.refusal = (how, reason)
        self.stats.refusing_from_us = min(self.stats.refusing_from_us, now_us())
        if not self.opened.done():
            self.opened.set_exception(Refused(f"call {self.index}: refused ({how} {reason!r})"))
        elif self.scheduled and not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.refusal_body is not None:  # the rest of a 503's body
            self.refusal_body += data
            self.refusal_read()
            return
        WsConn.data_received(self, data)

    def after_refused_head(self, rest: bytes) -> None:
        if self.refusal_body is not None:
            self.refusal_body += rest
            self.refusal_read()

    def refusal_read(self, eof: bool = False) -> None:
        """A 503's body (its Content-Length, or up to the end of the connection) is the reason."""
        body = self.refusal_body
        assert body is not None
        if eof or 0 <= self.refusal_length <= len(body):
            end = self.refusal_length if self.refusal_length >= 0 else len(body)
            self.refuse("503", bytes(body[:end]).decode("utf-8", "replace").strip())

    def close_reason(self, reason: str) -> str:
        """A 4503's reason: the close frame's, else the hub's last `error` message before it."""
        if reason:
            return reason
        text = self.last_text.decode("utf-8", "replace")
        try:
            msg = json.loads(text)
            return str(msg["data"]["error"])
        except (ValueError, KeyError, TypeError):
            return text

    def on_head(self, head: str) -> bool:
        lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if self.stats.expect_refusals and lines[0].split(" ", 2)[1:2] == ["503"]:
            self.refusal_body = bytearray()  # refused on the upgrade: the reason is the body
            length = headers.get("content-length", "")
            self.refusal_length = int(length) if length.isdigit() else -1
            return False
        problem = self.handshake_problem(lines[0], headers)
        if problem:
            self.fail(HandshakeError(f"call {self.index}: {problem}"))
            return False
        if self.opened.done():  # cancelled: the open timed out
            self.fail(TimeoutError(f"call {self.index}: 101 after the open timeout"))
            return False
        self.opened.set_result(None)
        return True

    def handshake_problem(self, status_line: str, headers: dict[str, str]) -> str:
        status = status_line.split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
            return f"not an HTTP response: {status_line[:80]!r}"
        if status[1] != "101":
            return f"server rejected WebSocket connection: {status_line[:80]}"
        if headers.get("upgrade", "").lower() != "websocket":
            return "101 without Upgrade: websocket"
        if "upgrade" not in headers.get("connection", "").lower():
            return "101 without Connection: Upgrade"
        if headers.get("sec-websocket-accept") != self.expected_accept:
            return "wrong Sec-WebSocket-Accept"
        if "sec-websocket-extensions" in headers:
            return f"extension not offered: {headers['sec-websocket-extensions']}"
        offered = "media" if self.stats.asterisk else "audio.drachtio.org"
        if headers.get("sec-websocket-protocol", offered) != offered:
            return f"subprotocol not offered: {headers['sec-websocket-protocol']}"
        return ""

    def on_frame(self, b0: int, payload: bytes | bytearray) -> None:
        opcode = b0 & 0x0F
        if opcode == OP_BINARY:
            if self.bidi:
                at = time.monotonic()
                self.arrivals.append(at)
                if self.stats.steady_from_us <= at * 1e6 < self.stats.steady_until_us:
                    self.stats.steady_play_frames += 1
        elif opcode == OP_TEXT:
            self.last_text = bytes(payload[:500])  # events (ignored); kept for error messages and refusals
        elif opcode == OP_PING:
            self.send(OP_PONG, bytes(payload))
        elif opcode == OP_CLOSE:
            self.close_seen.set()
            if not self.close_sent:  # the hub hangs up on us: echo, and it is an error mid-call
                self.send(OP_CLOSE, bytes(payload[:2]))
                self.close_sent = True
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                reason = bytes(payload[2:]).decode("utf-8", "replace")
                if code == 4503 and self.stats.expect_refusals and not self.stats.received[self.index]:
                    self.refuse("4503", self.close_reason(reason))  # refused before any media reached the customer
                else:
                    said = f", last text {self.last_text!r}" if self.last_text else ""
                    self.fail(ConnectionError(f"call {self.index}: hub closed the WebSocket ({code} {reason!r}){said}"))
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_seen.set()
        if self.refusal_body is not None and not self.dead:
            self.refusal_read(eof=True)
        if not self.dead:
            said = f" ({exc!r})" if exc else ""
            self.fail(ConnectionError(f"call {self.index}: connection lost{said}"))
        self.dead = True

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload, self.mask))

    def send_audio(self, k: int) -> bool:
        """Frame k, stamped at the moment of writing; False once the call cannot send."""
        if self.dead:
            return False
        assert self.transport is not None
        stats = self.stats
        if stats.noise:
            stats.sent_at[self.index].append(time.monotonic_ns() // 1000)
            speech = stats.speech
            self.transport.write(self.prefix + apply_mask(speech[k % len(speech)], self.mask))
        else:
            head = apply_mask(HEADER.pack(time.monotonic_ns() // 1000, self.index, k), self.mask)
            self.transport.write(self.prefix + head + self.masked_pad)
        stats.sent[self.index] += 1
        return True

    async def hang_up(self) -> None:
        if self.transport is None:
            return
        if not self.dead and not self.close_sent:
            self.send(OP_CLOSE, (1000).to_bytes(2, "big"))
            self.close_sent = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.close_seen.wait(), CLOSE_WAIT)
        self.dead = True
        self.transport.close()


class Clock:
    """One timer for every gateway: a heap of (due, call, frame) on each call's absolute clock."""

    def __init__(self, frames: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.frames = frames
        self.heap: list[tuple[float, int, int]] = []
        self.gateways: dict[int, Gateway] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")

    def add(self, gateway: Gateway) -> None:
        self.gateways[gateway.index] = gateway
        gateway.scheduled = True
        if self.frames <= 0:
            gateway.done.set_result(None)
            return
        heapq.heappush(self.heap, (gateway.start, gateway.index, 0))
        self.arm()

    def arm(self) -> None:
        if not self.heap:
            return
        due = self.heap[0][0]
        if self.timer is not None:
            if self.timer_at <= due:
                return
            self.timer.cancel()
        self.timer = self.loop.call_later(max(0.0, due - time.monotonic()), self.tick)
        self.timer_at = due

    def tick(self) -> None:
        self.timer, self.timer_at = None, float("inf")
        heap, gateways, frames = self.heap, self.gateways, self.frames
        limit = time.monotonic() + EARLY
        while heap and heap[0][0] <= limit:
            _, index, k = heap[0]
            gateway = gateways[index]
            if gateway.send_audio(k) and k + 1 < frames:
                heapq.heapreplace(heap, (gateway.start + (k + 1) * PERIOD, index, k + 1))
            else:
                heapq.heappop(heap)
                del gateways[index]
                if not gateway.done.done():
                    gateway.done.set_result(None)
        self.arm()


async def gateway(
    target: Target,
    index: int,
    customer_url: str,
    stats: Stats,
    clock: Clock,
    start: float,
    auth: str,
    bidi: bool,
) -> None:
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    # FreeSWITCH's default subprotocol: say that this gateway plays audio back (the jambonz build in two-way mode)
    entry: dict[str, Any] = {"serviceUrl": f"{customer_url}/{index}", "bidirectional": bidi}
    if stats.noise:
        entry.update({"noiseCancellation": "true", "noiseCancellationLevel": 85})
    resource, subprotocol = target.resource, "audio.drachtio.org"
    if stats.asterisk:  # chan_websocket: the stream's attributes as v() pairs on the URI, subprotocol `media`
        pairs = {name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in entry.items()}
        resource += ("&" if "?" in resource else "?") + urlencode(pairs, quote_via=quote)
        subprotocol = "media"
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: {target.host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {subprotocol}",
    ]
    if auth:
        lines.append(f"Authorization: Basic {base64.b64encode(auth.encode()).decode()}")
    proto = Gateway(index, stats, bidi, ("\r\n".join(lines) + "\r\n\r\n").encode(), key)
    proto.start = start
    if stats.asterisk:  # Asterisk's first message (JSON control format); the call id is its channel's
        first: dict[str, Any] = {
            "event": "MEDIA_START",
            "connection_id": str(uuid.uuid4()),
            "channel": f"WebSocket/loadgen-{index:08x}",
            "channel_id": f"{os.getpid()}.{index}",
            "format": "slin",
            "optimal_frame_size": FRAME,
            "ptime": 20,
            "channel_variables": {},
        }
    else:
        first = {"callId": None, "playback": True, "streams": [entry]}

    async def open_() -> None:
        await loop.create_connection(
            lambda: proto,
            target.host,
            target.port,
            ssl=target.ssl,
            server_hostname=target.host if target.ssl else None,
        )
        await proto.opened

    # Calls arrive over the ramp, as on a real hub: each connects a second before its audio clock
    # starts (with room for the hub's set-up), not all at once.
    await asyncio.sleep(max(0.0, start - CONNECT_LEAD - time.monotonic()))
    stats.opened[index] = time.monotonic()  # set-up: from the TCP connect to the customer's `start`
    try:
        try:
            await asyncio.wait_for(open_(), OPEN_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"call {index}: no WebSocket after {OPEN_TIMEOUT:.0f} s") from None
        except Refused:  # --expect-refusals: HTTP 503 on the upgrade
            assert proto.refusal is not None
            stats.refused[index] = proto.refusal
            return
        proto.send(OP_TEXT, json.dumps(first).encode())
        if proto.failure is not None:  # e.g. the hub closed the call in the same read as its 101
            raise proto.failure
        if proto.refusal is None:  # (a 4503 may come in the same read as the 101)
            clock.add(proto)
            await proto.done
        if proto.refusal is not None:  # --expect-refusals: closed with 4503 before any media reached the customer
            stats.refused[index] = proto.refusal
            return
        await asyncio.sleep(TAIL_SECONDS)  # let the tail drain before hanging up
        await proto.hang_up()
    finally:
        proto.dead = True
        if proto.transport is not None:
            proto.transport.close()
        for future in (proto.opened, proto.done):  # retrieved: no "never retrieved" warnings
            if future.done() and not future.cancelled():
                future.exception()
    arrivals = proto.arrivals
    if stats.drift_seconds:  # the one clip is int(drift_seconds) s long: 50 frames a second
        stats.play_lost += max(0, 50 * int(stats.drift_seconds) - len(arrivals))
    if bidi and len(arrivals) > 10:
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        stats.play_gaps += [g for g in gaps if g < 0.2]  # gaps inside a clip, not between clips
        # Drift: within each run of contiguous frames, how far the playback clock moved against an
        # ideal 20 ms clock from the run's first second to its last. Each end is the median offset
        # (arrival − k·20 ms) of a second of frames, so one late frame (jitter) is not read as drift.
        run_start = 0
        for i, gap in enumerate([*gaps, 1.0]):
            if gap >= 0.2:
                n = i + 1 - run_start
                if n >= 100 and (not stats.drift_seconds or n >= 40 * stats.drift_seconds):
                    offsets = [arrivals[run_start + k] - k * PERIOD for k in range(n)]
                    stats.play_drift.append(statistics.median(offsets[-50:]) - statistics.median(offsets[:50]))
                run_start = i + 1


def announce(mark: str) -> None:
    """bench/run.py reads the server's CPU when it sees this line (uvloop's clock is time.monotonic)."""
    print(mark, file=sys.stderr, flush=True)


def pct(values: list[int] | list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="ws://… or a comma-separated list: call i uses url i % len")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--auth", default="")
    parser.add_argument("--bidi", action="store_true")
    parser.add_argument("--drift", action="store_true", help="with --bidi: one clip as long as the call")
    parser.add_argument("--ramp-seconds", type=float, default=2.0)
    parser.add_argument("--noise-cancellation", action="store_true", help="every stream asks for noiseCancellation")
    parser.add_argument(
        "--gateway",
        choices=("audio-fork", "asterisk"),
        default="audio-fork",
        help="the gateways' framing: mod_audio_fork (metadata first) or Asterisk chan_websocket (MEDIA_START first)",
    )
    parser.add_argument("--customer-tls", default="", help="CERT,KEY: the customers serve wss://localhost")
    parser.add_argument(
        "--burst", type=int, default=0, help="N more calls arriving within 1 s, 1 s into the steady window"
    )
    parser.add_argument(
        "--expect-refusals", action="store_true", help="a call the hub refuses (HTTP 503, close 4503) is not an error"
    )
    args = parser.parse_args()
    cpu0, wall0 = time.process_time(), time.monotonic()
    targets = [Target(u.strip()) for u in args.url.split(",") if u.strip()]
    stats = Stats(args.calls + args.burst)
    stats.base_calls = args.calls
    stats.expect_refusals = args.expect_refusals
    stats.asterisk = args.gateway == "asterisk"
    if args.noise_cancellation:
        stats.noise, stats.speech = True, noisy_speech_frames()
    if args.drift:
        # one clip of up to 60 s (the hub's default playback queue bound): drift over all of it
        stats.drift_seconds = max(2.0, min(60.0, args.seconds - 2))
    loop = asyncio.get_running_loop()
    customer_tls: ssl.SSLContext | None = None
    if args.customer_tls:
        cert, key = args.customer_tls.split(",")
        customer_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        customer_tls.load_cert_chain(cert, key)
    server = await loop.create_server(
        lambda: Customer(stats, args.bidi), "127.0.0.1", 0, backlog=4096, ssl=customer_tls
    )
    port = server.sockets[0].getsockname()[1]
    customer_base = f"wss://localhost:{port}/c" if customer_tls else f"ws://127.0.0.1:{port}/c"
    clock = Clock(int(args.seconds * 50))
    gc.freeze()  # what exists now (modules, argparse…) is never worth scanning again
    begin = time.monotonic() + 0.5
    # latency counts only while every call is up and sending (the steady window): the set-up and
    # hang-up of hundreds of calls within seconds is reported apart (setup_p50/p99; run.py's setup ms)
    stats.steady_from_us = int((begin + args.ramp_seconds + 2.0) * 1e6)
    # until the first call's clock stops (call 0 starts at begin + 1.0 and sends for --seconds)
    stats.steady_until_us = int((begin + 1.0 + args.seconds) * 1e6)
    for mark, at_us in (("steady-start", stats.steady_from_us), ("steady-end", stats.steady_until_us)):
        loop.call_at(at_us / 1e6, announce, mark)
    tasks = []
    burst_at = stats.steady_from_us / 1e6 + 1.0 + CONNECT_LEAD  # first burst call connects 1 s into the window
    for i in range(args.calls + args.burst):
        # calls arrive over the ramp; their 20 ms clocks have independent phases, as real gateways'
        if i < args.calls:
            start = begin + args.ramp_seconds * i / args.calls + (i * GOLDEN % 1.0) * PERIOD
        else:  # --burst: within one second, on top of the live calls
            start = burst_at + (i - args.calls) / args.burst + (i * GOLDEN % 1.0) * PERIOD
        tasks.append(
            asyncio.create_task(
                gateway(
                    targets[i % len(targets)],
                    i,
                    customer_base,
                    stats,
                    clock,
                    start + 1.0,
                    args.auth,
                    args.bidi,
                )
            )
        )
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    server.close()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    lat = [v / 1000 for v in stats.latencies]
    burst_started = sum(1 for i in range(args.calls, args.calls + args.burst) if stats.received[i])
    # --expect-refusals: a refused call's frames (sent before its 4503 came) were never meant to arrive
    sent = sum(n for i, n in enumerate(stats.sent) if i not in stats.refused)
    received = sum(n for i, n in enumerate(stats.received) if i not in stats.refused)
    out: dict[str, Any] = {
        "calls": args.calls,
        "connected": stats.connected,
        "errors": errors[:3],
        "error_count": len(errors),
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "duplicates": stats.duplicates,
        "out_of_order": stats.out_of_order,
        "setup_p50_ms": round(1000 * pct(stats.setup, 0.5), 1),
        "setup_p99_ms": round(1000 * pct(stats.setup, 0.99), 1),
        "p50_ms": round(pct(lat, 0.5), 2),
        "p99_ms": round(pct(lat, 0.99), 2),
        "max_ms": round(max(lat or [0]), 2),
        "steady_frames": stats.steady_frames,
        "steady_play_frames": stats.steady_play_frames,
        "invalid": stats.invalid,
        "tail_frames": stats.tail_frames,
        "silence_frames": stats.silence_frames,
        "gateway_write_pauses": stats.write_pauses,
        "loadgen_cpu_s": round(cpu, 2),
        "loadgen_cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else 0.0,
    }
    if args.burst:
        base_sent = sum(stats.sent[: args.calls])
        out.update(
            {
                "burst": args.burst,
                "burst_started": burst_started,
                "burst_setup_p50_ms": round(1000 * pct(stats.burst_setup, 0.5), 1),
                "burst_setup_p99_ms": round(1000 * pct(stats.burst_setup, 0.99), 1),
                "live_lost": base_sent - sum(stats.received[: args.calls]),
            }
        )
    if args.expect_refusals:
        how = collections.Counter(h for h, _ in stats.refused.values())
        refusing = [v / 1000 for v in stats.refusing_latencies]
        out.update(
            {
                "offered": args.calls + args.burst,
                "admitted": sum(1 for i, up in enumerate(stats.started) if up and i not in stats.refused),
                "refused": len(stats.refused),
                "refused_503": how["503"],
                "refused_4503": how["4503"],
                "refusal_reasons": dict(collections.Counter(r for _, r in stats.refused.values()).most_common()),
                "refusing_frames": len(refusing),
                "refusing_p99_ms": round(pct(refusing, 0.99), 2) if refusing else None,
            }
        )
    if args.bidi:
        jitter = [abs(g - 0.02) * 1000 for g in stats.play_gaps]
        out.update(
            {
                "play_frames": len(stats.play_gaps),
                "play_lost": stats.play_lost if args.drift else None,
                "play_jitter_p50_ms": round(pct(jitter, 0.5), 2),
                "play_jitter_p99_ms": round(pct(jitter, 0.99), 2),
                "play_drift_max_ms": round(max((abs(d) for d in stats.play_drift), default=0) * 1000, 2),
                "play_drift_mean_ms": round(statistics.fmean(stats.play_drift) * 1000, 2) if stats.play_drift else 0,
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
