"""One customer connection: the asyncio task that relays a stream (spec §1–§3, D2–D10, D14).

Contract:
- Audio reaches the relay as 20 ms PCM frames from the call session (`on_audio`, no await,
  no database). Each becomes a `media` message in the SendBuffer at once, from the moment
  the stream exists, so nothing is lost while connecting or retrying (D2).
- The relay dials `service_url` (1 attempt + 2 retries) over picows (WebSocket framing and
  masking in C, no task or queue per message), sends `start`, then writes the buffer in
  order from whoever queued to it (`pump`, synchronous) while the socket takes it. The
  kernel's share is kept small (SO_SNDBUF, the transport's 16 KiB high-water mark) so that
  what waits is counted by the buffer; 30/60/90 % -> DegradedStream, overflow -> drop. A
  paused socket resumes the pump from picows' resume_writing.
- It ends exactly once (`stop`), whoever asks: API request, call hangup, stream timeout,
  connection error; `stream_end` in the service layer makes the end idempotent.
- Its start and end are written until they succeed (`db_persist`): a database outage
  delays them, never drops them. A stream whose `start` went out always gets its
  StartStream (before its final callback) and is billed from then, even when its end
  wins the race with the start's own write.
- Debug events are queued in memory and written by a background flusher, never awaited
  on the audio path; a failed write keeps them queued for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.utils import timezone
from picows import (
    WSCloseCode,
    WSFrame,
    WSHandshakeError,
    WSInvalidStatusError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from streams import services
from streams.core import billing, framing, plivo
from streams.core.audio import Decoder, Encoder, Format
from streams.core.buffer import Degraded, Overflow, SendBuffer
from streams.core.noise import ENGINE, NoiseSuppressor
from streams.core.playback import QueueFull, TooManyCheckpoints
from streams.core.validation import AddressRefused, EgressPolicy
from streams.live import pgloop, tally
from streams.live.dbasync import RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, db_async, db_persist
from streams.models import Stream

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.020
TEXT, BINARY, CONT, CLOSE, PONG = (
    WSMsgType.TEXT,
    WSMsgType.BINARY,
    WSMsgType.CONTINUATION,
    WSMsgType.CLOSE,
    WSMsgType.PONG,
)
PING_INTERVAL = 20.0  # keepalive; a customer that stops reading is the D7 buffer's to judge (see _keepalive)
CLOSE_WAIT = 3.0
SOCKET_SNDBUF = 32 * 1024  # D7: keep the kernel's share of a backlog small and countable
WRITE_LIMIT = 16 * 1024
MAX_MESSAGE = 16 * 1024 * 1024  # D14: beyond this the hub closes with 1009
DEBUG_EVENT_LIMIT = 200  # per kind of peer-triggered event, then one "suppressed" note
SAMPLE_EVERY = 1.0
EVENT_FLUSH_DELAY = 0.5  # debug events are written in batches, at most this late
MAX_SAMPLES = 3600
CANCELLED = "the relay was cancelled without a stop request (the hub process is shutting down)"
FINAL_DRAIN_SECONDS = 2.0  # on a normal end, how long the last queued audio may take to leave
RESUME_MAX_RETRY_DELAY = 2.0  # redials after a drop back off as the first connect's, capped here
RESUME_FLAP_SECONDS = 1.0  # a connection that lasted less than this is redialled after a pause, not at once
# Closes after which a stream is not resumed even when it opted in: the customer ended it on
# purpose (1000), or the hub closed it for breaking the protocol (1002, 1007, 1009).
NOT_RESUMED_CODES = frozenset({1000, 1002, 1007, 1009})
DROPPED_WHILE_RESUMING = "terminated due to a slow connection: send buffer full while reconnecting"


def redact_url(url: str) -> str:
    """For process logs: a service URL without its query string (it may carry a token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "…" if parts.query else "", ""))


def _ssl_context(url: str) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    return _tls_context(settings.STREAMHUB_CUSTOMER_CA_BUNDLE)


@functools.cache
def _tls_context(cafile: str | None) -> ssl.SSLContext:
    # ~20 ms to build (it loads the CA store): once per process, not on the event loop per call
    return ssl.create_default_context(cafile=cafile)


async def checked_socket(url: str, policy: EgressPolicy) -> socket.socket:
    """A socket connected to an address of the URL's host that the policy allows, or AddressRefused.

    The name is resolved once and the socket goes to one of the addresses checked (no second
    lookup for a rebinding DNS to answer); websockets then speaks TLS (SNI, certificate) and
    the Host header with the name from the URL.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    refusal = policy.refusal(host, [str(info[4][0]) for info in infos])
    if refusal is not None:
        raise AddressRefused(refusal)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last or OSError(f"{host} resolves to no address")


def upgrade_headers(url: str, auth_token: str) -> dict[str, str]:
    from callbacks.signing import new_nonce, sign_ws_upgrade

    return sign_ws_upgrade(url, auth_token, new_nonce())


class RelayHost(Protocol):
    """What a relay needs from the call it belongs to; the CallSession implements it."""

    def relay_finished(self, relay: StreamRelay) -> None:
        """The relay ended (its row is being written): forget it, drop its queued playback."""

    def take_stream_end(self, end: dict[str, Any]) -> bool:
        """True when the call's own end writes this stream's end (`services.stream_end`'s
        arguments) in its transaction; False: the relay writes it."""

    def play(self, relay: StreamRelay, pcm: bytes) -> None:
        """Queue decoded `playAudio` audio for the call; raises QueueFull beyond the bound."""

    def checkpoint(self, relay: StreamRelay, name: str) -> bool:
        """False when the checkpoint is due at once; True when it waits behind queued audio.
        Raises TooManyCheckpoints when the stream has MAX_OUTSTANDING_CHECKPOINTS waiting."""

    def clear(self, relay: StreamRelay) -> tuple[int, list[str]]:
        """Drop this stream's queued audio: (frames dropped, checkpoint names dropped)."""

    def send_dtmf(self, relay: StreamRelay, digits: str) -> bool:
        """Ask the gateway to play DTMF; False when it has no such command."""


logging.getLogger("picows").setLevel(logging.WARNING)  # one INFO line per connect and disconnect


class CustomerLink(WSListener):
    """The picows callbacks of one relay's customer connection: no task, no queue per message.

    `paused` is True whenever nothing may be written now: before the upgrade, while the
    transport's buffer is over its high-water mark (picows calls pause_writing from inside
    send(), so the pump stops at once), and for good once a close frame was sent or the
    connection is gone.
    """

    def __init__(self, relay: StreamRelay) -> None:
        self.relay = relay
        self.transport: WSTransport | None = None
        self.paused = True
        self.send: Callable[[WSMsgType, str], None] = self._not_connected
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parts: list[bytes] | None = None
        self.parts_text = True
        self.parts_size = 0
        self.close_sent = False
        self.sent_code: int | None = None
        self.sent_reason = ""
        self.last_pong = time.monotonic()

    @staticmethod
    def _not_connected(kind: WSMsgType, message: str) -> None:
        raise RuntimeError("not connected")

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        underlying = transport.underlying_transport
        sock = underlying.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SNDBUF)
        underlying.set_write_buffer_limits(high=WRITE_LIMIT)
        self.send = transport.send
        self.paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        if not self.close_sent and self.transport is not None and not self.transport.is_disconnected:
            self.paused = False
            self.relay.pump()

    def close(self, code: int, reason: str) -> None:
        """Send our close frame (once); nothing is written after it."""
        if self.close_sent or self.transport is None:
            return
        self.close_sent, self.paused = True, True
        self.sent_code, self.sent_reason = code, reason
        self.transport.send_close(WSCloseCode(code), reason.encode()[:123])

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is TEXT or kind is BINARY:
            if self.parts is not None:
                self._fail("a new message inside a fragmented one", WSCloseCode.PROTOCOL_ERROR)
            elif frame.fin:
                self._message(frame.get_payload_as_bytes(), kind is TEXT)
            else:
                self.parts, self.parts_text = [frame.get_payload_as_bytes()], kind is TEXT
                self.parts_size = frame.payload_size
        elif kind is CONT:
            if self.parts is None:
                self._fail("a continuation of nothing", WSCloseCode.PROTOCOL_ERROR)
                return
            self.parts_size += frame.payload_size
            if self.parts_size > MAX_MESSAGE:  # D14 across fragments (picows checks each frame)
                self._fail("message too big", WSCloseCode.MESSAGE_TOO_BIG)
                return
            self.parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                data, self.parts = b"".join(self.parts), None
                self._message(data, self.parts_text)
        elif kind is PONG:
            self.last_pong = time.monotonic()
        elif kind is CLOSE:
            if not self.close_sent:  # the customer closes: echo (picows does not), then drop TCP
                self.close_sent, self.paused = True, True
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def _fail(self, reason: str, code: WSCloseCode) -> None:
        self.parts = None
        self.close(code.value, reason)
        assert self.transport is not None
        self.transport.disconnect()

    def _message(self, data: bytes, text: bool) -> None:
        relay = self.relay
        try:
            message: str | bytes = data.decode() if text else data
        except UnicodeDecodeError:
            relay.log_noisy("InvalidMessage", "a text frame that is not UTF-8")
            return
        try:
            relay.on_customer_message(message)
        except Exception as exc:  # rule 7: bad input never ends the stream
            log.exception("stream %s: customer message failed", relay.stream_id)
            relay.log_noisy("InvalidMessage", f"could not handle the message: {type(exc).__name__}")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.paused = self.close_sent = True
        if not self.closed.done():
            self.closed.set_result(None)

    def end_code(self) -> int | None:
        """The close code that ended the connection: the hub's if it closed first, else the
        customer's; None when it ended without a close frame (a network drop, a reset)."""
        if self.sent_code is not None:
            return self.sent_code
        handshake = self.transport.close_handshake if self.transport is not None else None
        if handshake is not None:
            if handshake.recv is not None:
                return int(handshake.recv.code.value)
            if handshake.sent is not None:
                return int(handshake.sent.code.value)
        return None

    def describe_end(self) -> str:
        """Why the connection ended, for the stream's last error."""
        sent_code, sent_reason = self.sent_code, self.sent_reason  # we closed first (size, keepalive)
        handshake = self.transport.close_handshake if self.transport is not None else None
        if sent_code is None and handshake is not None:
            if handshake.recv is not None:  # the customer closed first
                return describe_close_code(handshake.recv.code.value, handshake.recv.reason)
            if handshake.sent is not None:  # picows closed on its own (a frame over max_frame_size)
                sent_code, sent_reason = handshake.sent.code.value, handshake.sent.reason
        if sent_code == 1009:
            return describe_close_code(1009, sent_reason)
        if sent_code is not None:
            detail = f" ({sent_reason})" if sent_reason else ""
            return f"the hub closed the connection with code {sent_code}{detail}"
        return describe_close_code(None, None)


class StreamRelay:
    def __init__(self, *, session: RelayHost, stream: Stream, gateway_rate: int) -> None:
        self.session = session
        self.stream = stream
        self.stream_id = str(stream.stream_id)
        self.fmt = Format.from_content_type(stream.content_type)
        self.tracks: tuple[str, ...] = tuple(stream.tracks)
        self.encoders = {track: Encoder(gateway_rate, self.fmt) for track in self.tracks}
        self.chunks = dict.fromkeys(self.tracks, 0)
        # noiseCancellation: a suppressor per streamed track, on the call's audio before its encoder
        # (docs/noise-cancellation.md); none at all for the streams that did not ask.
        self.noise = (
            {track: NoiseSuppressor(gateway_rate, stream.noise_cancellation_level) for track in self.tracks}
            if stream.noise_cancellation
            else {}
        )
        self.suppressors = self.noise  # the ones still on the audio path (emptied by the end's flush)
        # One inbound track in the gateway's own format: a session frame is exactly one message
        # (its encoder would pass it through), so on_audio takes a short path with its own counter.
        self._plain_inbound = (
            self.tracks == ("inbound",) and self.encoders["inbound"].passthrough and not self.suppressors
        )
        self._chunk = 0
        self.template = plivo.MediaTemplate(self.stream_id, stream.extra_headers)
        self.decoder = Decoder(gateway_rate)
        self.buffer = SendBuffer(
            settings.STREAMHUB_STREAM_BUFFER_SECONDS, min_interval=settings.STREAMHUB_DEGRADED_MIN_INTERVAL_SECONDS
        )
        self.seq = 1  # `start` is 1; every later frame takes the next number when it is queued
        self.start_ms = int(time.time() * 1000)
        self.started_mono = time.monotonic()
        self.link: CustomerLink | None = None
        self.end_reason: str | None = None
        self.end_error = ""
        self.connected = False
        self.started_at: datetime | None = None  # when `start` went out (wall clock)
        self._started_at_mono = 0.0  # and by the monotonic clock (the end's, see stepless_end)
        self._running = False
        self.frames_sent = 0
        self.bytes_sent = 0  # of the messages' text; with frames_sent, exported by live.metrics
        self.gateway_rate = gateway_rate
        self.played_ms = 0
        self.skipped_ms = 0
        self.samples: list[list[float]] = []
        self._next_sample = self.started_mono
        self._sample_every = SAMPLE_EVERY
        self._ping: asyncio.TimerHandle | None = None
        self._events: list[tuple[str, str, dict[str, Any]]] = []
        self._event_counts: dict[str, int] = {}
        self._events_wake = asyncio.Event()
        # one DB write of this stream at a time, so debug events and callbacks keep their order
        self._db_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._start_in_flight = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timeout: asyncio.TimerHandle | None = None
        self.resumes = 0  # times the customer connection was resumed (opt-in, docs/resume.md)
        self.reconnecting = False
        self._linked_at = 0.0  # monotonic time the current connection got its `start`
        self._outage_deadline: float | None = None  # when the current drop's window ends
        self._flaps = 0  # resumed connections in a row that dropped within RESUME_FLAP_SECONDS
        self.done = asyncio.Event()
        if self.noise:
            first = next(iter(self.noise.values()))
            self.log_event(
                "NoiseCancellation",
                "",
                {
                    "Level": first.level,
                    "MaxAttenuationDb": first.attenuation_db,
                    "Tracks": ",".join(self.noise),
                    "SampleRate": gateway_rate,
                    "DelayMs": round(1000 * first.delay_samples / gateway_rate, 3),
                    "Engine": ENGINE,
                },
            )

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"relay-{self.stream_id}")
        self._spawn(self._flush_events())
        elapsed = time.monotonic() - self.started_mono
        self._timeout = loop.call_later(
            max(0.0, self.stream.stream_timeout - elapsed), self.stop, Stream.Reason.STREAM_TIMEOUT
        )

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stop(self, reason: str, error: str = "") -> None:
        """Ask the relay to end with `reason`; the first reason wins."""
        if self.end_reason is not None:
            return
        if self.suppressors and reason != Stream.Reason.CONNECTION_ERROR:
            self._flush_noise()
        self.end_reason, self.end_error = reason, error
        task = self._task
        # Only a task that is running can be cancelled safely: cancelling one that has not
        # started yet would skip its `finally` (and `done` would never be set).
        if self._running and task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def wait(self) -> None:
        await self.done.wait()

    def backdate(self, created_at: float) -> None:
        """Start the stream's clock at `created_at` (epoch seconds), for audio backfilled from before
        this process heard of the stream (D2), so timestamps stay the audio's position."""
        age = max(0.0, time.time() - created_at)
        self.start_ms = int(created_at * 1000)
        self.started_mono -= age

    def count_playback(self, *, sent: bool) -> None:
        """One 20 ms frame of this stream's playback left for the call (or was skipped after a stall)."""
        if sent:
            self.played_ms += 20
        else:
            self.skipped_ms += 20

    async def _run(self) -> None:
        self._running = True
        try:
            if self.end_reason is None:
                link = await self._connect()
                if link is not None and self.end_reason is None:
                    await self._serve(link)
        except asyncio.CancelledError:
            if self.end_reason is None:  # not stop(): the event loop is being shut down
                log.warning("stream %s: %s", self.stream_id, CANCELLED)
                self.end_reason, self.end_error = Stream.Reason.CONNECTION_ERROR, CANCELLED
        except Exception as exc:  # a relay bug must end this stream only, loudly
            log.exception("relay %s failed", self.stream_id)
            self.stop(Stream.Reason.CONNECTION_ERROR, f"internal error: {type(exc).__name__}")
        finally:
            await self._finish()

    async def _connect(self) -> CustomerLink | None:
        url = self.stream.service_url
        policy = EgressPolicy.from_settings(settings)
        timeout = settings.STREAMHUB_CONNECT_TIMEOUT
        attempts = 3
        last = ""
        for attempt in range(1, attempts + 1):
            tally.connect_attempt()
            try:
                link = await self._dial(url, policy, timeout)
            except asyncio.CancelledError:
                raise
            except AddressRefused as exc:  # no retry can change the policy's answer
                self.log_event("ConnectAttemptFailed", f"refused: {exc}", {"Attempt": attempt, "MaxAttempts": attempts})
                self.stop(Stream.Reason.CONNECTION_ERROR, f"refused: {exc}")
                return None
            except Exception as exc:
                tally.connect_failed(exc)
                last = describe_connect_error(exc)
                self.log_event("ConnectAttemptFailed", last, {"Attempt": attempt, "MaxAttempts": attempts})
                log.info("stream %s: attempt %d to %s failed: %s", self.stream_id, attempt, redact_url(url), last)
                if attempt < attempts:
                    await asyncio.sleep(settings.STREAMHUB_CONNECT_RETRY_DELAY * attempt)
                continue
            self.link = link
            self.log_event("Connected", "", {"Attempt": attempt})
            return link
        self.stop(Stream.Reason.CONNECTION_ERROR, f"could not connect after {attempts} attempts: {last}")
        return None

    async def _dial(self, url: str, policy: EgressPolicy, limit: float) -> CustomerLink:
        """One upgrade to the customer (signed anew: a fresh nonce per attempt)."""
        extra: dict[str, Any] = {}
        if policy.forbid_private_services:
            # resolve once, check every address, connect to a checked one (no DNS-rebinding
            # window); picows then speaks TLS (SNI, certificate) and Host with the URL's name
            extra["socket_factory"] = lambda _parsed: checked_socket(url, policy)
        _, link = await asyncio.wait_for(
            ws_connect(
                lambda: CustomerLink(self),
                url,
                ssl_context=_ssl_context(url),
                extra_headers={
                    **upgrade_headers(url, self.stream.account.auth_token),
                    "User-Agent": "streamhub",
                },
                # also bounds the socket of an upgrade cancelled midway (picows keeps it until then)
                websocket_handshake_timeout=limit,
                max_frame_size=MAX_MESSAGE,
                enable_auto_ping=False,  # our own keepalive (_keepalive): picows' cannot wait 60 s
                enable_auto_pong=True,
                max_redirects=0,
                use_aiofastnet=False,  # the event loop's own transports and TLS
                **extra,
            ),
            limit,
        )
        assert isinstance(link, CustomerLink)
        return link

    async def _serve(self, link: CustomerLink) -> None:
        if link.close_sent:  # gone already
            self.stop(Stream.Reason.CONNECTION_ERROR, link.describe_end())
            return
        link.send(TEXT, self._start_message(None))
        self.connected = True
        self.started_at = timezone.now()
        self._linked_at = self._started_at_mono = time.monotonic()
        self._start_task = self._spawn(self._record_started())  # the audio does not wait for the database
        self._ping = asyncio.get_running_loop().call_later(self._ping_interval(), self._keepalive)
        self.pump()  # what was queued while connecting
        while True:
            await asyncio.shield(link.closed)
            if not self.stream.reconnect or link.end_code() in NOT_RESUMED_CODES:
                # the connection is gone without the hub asking (D5: no reconnect unless opted in)
                self.stop(Stream.Reason.CONNECTION_ERROR, link.describe_end())
                return
            resumed = await self._resume(link)
            if resumed is None:
                return
            link = resumed

    def _start_message(self, resume: plivo.Resume | None) -> str:
        stream = self.stream
        return plivo.start_message(
            call_id=str(stream.call.call_uuid),
            stream_id=self.stream_id,
            account_id=stream.account.auth_id,
            tracks=list(self.tracks),
            encoding=self.fmt.encoding,
            sample_rate=self.fmt.rate,
            extra_headers=stream.extra_headers,
            resume=resume,
        )

    # --- opt-in resume (docs/resume.md) -----------------------------------------------

    async def _resume(self, old: CustomerLink) -> CustomerLink | None:
        """The customer connection dropped after `start` on a stream that opted in: keep
        buffering, redial until the window ends, then `start` again with `start.resume` and
        the buffered frames. None when the window ended (the stream was stopped)."""
        why = old.describe_end()
        lost = time.monotonic()
        self.link = None
        self.reconnecting = True
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
        window = min(float(self.stream.reconnect_window), float(settings.STREAMHUB_STREAM_BUFFER_SECONDS))
        flapped = lost - self._linked_at < RESUME_FLAP_SECONDS
        self._flaps = self._flaps + 1 if flapped else 0
        # a resumed connection that dropped at once did not end the outage: its window goes on,
        # so a service that accepts and drops cannot keep the stream redialling for ever
        outage = self._outage_deadline if flapped else None
        deadline = outage if outage is not None else lost + window
        self._outage_deadline = deadline
        resume_from = self.seq - len(self.buffer.items) + 1
        self.log_noisy(  # bounded: a flapping service cannot flood the callbacks
            "DegradedStream",
            why,
            {
                "BufferUsage": int(self.buffer.usage_pct),
                "ConnectionState": "reconnecting",
                "ReconnectWindow": f"{window:g}",
                "ResumeSequenceNumber": resume_from,
            },
        )
        log.info(
            "stream %s: connection to %s lost (%s); reconnecting for up to %g s",
            self.stream_id,
            redact_url(self.stream.service_url),
            why,
            window,
        )
        if self.stream.bidirectional:
            # playback queued before the drop is discarded with its checkpoints, as on clearAudio (D12),
            # and the customer is told first thing after the resumed `start` and the audio before it
            frames, names = self.session.clear(self)
            self.send_text(lambda seq: plivo.cleared_audio(seq=seq, stream_id=self.stream_id))
            self.log_event(
                "ClearAudio",
                "the customer connection dropped: queued playback discarded",
                {"FramesDropped": frames, "CheckpointsDropped": ",".join(names)[:500]},
            )
        if flapped:  # a customer that accepts and drops at once: a pause that grows, as between failed attempts
            pause = min(settings.STREAMHUB_CONNECT_RETRY_DELAY * self._flaps, RESUME_MAX_RETRY_DELAY)
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        url = self.stream.service_url
        policy = EgressPolicy.from_settings(settings)
        attempt, last = 0, "the window ended before a first attempt"
        while self.end_reason is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempt += 1
            tally.connect_attempt()
            try:
                link = await self._dial(url, policy, min(settings.STREAMHUB_CONNECT_TIMEOUT, remaining))
            except asyncio.CancelledError:
                raise
            except AddressRefused as exc:  # no retry can change the policy's answer
                last = f"refused: {exc}"
                self.log_noisy("ReconnectAttemptFailed", last, {"Attempt": attempt})
                break
            except Exception as exc:
                tally.connect_failed(exc)
                last = describe_connect_error(exc)
            else:
                if not link.close_sent:
                    return self._resumed(link, attempt=attempt, offline=time.monotonic() - lost)
                last = link.describe_end()  # accepted and gone at once: a failed attempt too
            self.log_noisy("ReconnectAttemptFailed", last, {"Attempt": attempt})
            delay = min(settings.STREAMHUB_CONNECT_RETRY_DELAY * attempt, RESUME_MAX_RETRY_DELAY)
            await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        self.reconnecting = False
        self.stop(
            Stream.Reason.CONNECTION_ERROR,
            f"the connection dropped ({why}) and could not be resumed within {window:g} s "
            f"({attempt} attempts; last: {last})",
        )
        return None

    def _resumed(self, link: CustomerLink, *, attempt: int, offline: float) -> CustomerLink:
        """Send the resumed `start`, then what was buffered meanwhile (no await in between:
        no frame can precede the `start`)."""
        self.resumes += 1
        resume = self._resume_point()
        self.link = link
        self.reconnecting = False
        link.send(TEXT, self._start_message(resume))
        self._linked_at = time.monotonic()
        self._ping = asyncio.get_running_loop().call_later(self._ping_interval(), self._keepalive)
        self.log_noisy(  # bounded: a flapping service cannot flood the callbacks
            "DegradedStream",
            "",
            {
                "BufferUsage": int(self.buffer.usage_pct),
                "ConnectionState": "resumed",
                "Attempt": attempt,
                "OfflineMs": int(offline * 1000),
                "ResumeSequenceNumber": resume.sequence_number,
                "ResumeChunk": ",".join(f"{track}:{chunk}" for track, chunk in resume.chunks),
                "ResumeCount": resume.count,
            },
        )
        log.info("stream %s: resumed after %.1f s (attempt %d)", self.stream_id, offline, attempt)
        self.pump()
        return link

    def _resume_point(self) -> plivo.Resume:
        """Where the resumed stream continues: the first frame not handed to the dropped connection.

        Every frame takes its sequenceNumber when it is queued and the buffer is first in, first
        out, so the queued frames are exactly the last len(buffer) numbers. A track's next chunk
        is that of its first queued media frame, else the one it will take next."""
        items = self.buffer.items
        chunks: dict[str, int] = {}
        for message, _ in items:
            if len(chunks) == len(self.tracks):
                break
            if message.startswith('{"event":"media"'):
                media = json.loads(message)["media"]
                chunks.setdefault(media["track"], int(media["chunk"]))
        for track in self.tracks:
            chunks.setdefault(track, (self._chunk if self._plain_inbound else self.chunks[track]) + 1)
        first = min(chunks.values())
        return plivo.Resume(
            sequence_number=self.seq - len(items) + 1,
            chunks=tuple((track, chunks[track]) for track in self.tracks),
            timestamp_ms=self.start_ms + 20 * (first - 1),
            count=self.resumes,
        )

    def _ping_interval(self) -> float:
        return float(settings.STREAMHUB_RESUME_KEEPALIVE_SECONDS) if self.stream.reconnect else PING_INTERVAL

    def _keepalive(self) -> None:
        """A ping every 20 s. A customer that stops reading stops answering pings too: the D7
        buffer (Degraded 30/60/90, then Dropped) decides first, so the pong may be up to the
        buffer's length + 20 s late before the connection counts as dead.

        A stream with reconnect pings every STREAMHUB_RESUME_KEEPALIVE_SECONDS and counts three
        of them without a pong as a drop (1011), which it then resumes: a connection that died
        silently (a NAT or a load balancer forgot it) is redialled in seconds, not left to fill
        the buffer and end as a slow consumer."""
        link = self.link
        if link is None or link.transport is None or link.close_sent:
            return
        interval = self._ping_interval()
        slack = 3 * interval if self.stream.reconnect else 2 * PING_INTERVAL + settings.STREAMHUB_STREAM_BUFFER_SECONDS
        if time.monotonic() - link.last_pong > slack:
            link.close(1011, "keepalive ping timeout")
            link.transport.disconnect(graceful=False)
            return
        link.transport.send_ping()
        self._ping = asyncio.get_running_loop().call_later(interval, self._keepalive)

    async def _record_started(self) -> None:
        """StartStream, retried until written or until the stream ends: then the end's own
        transaction records the start (`stream_end(started_at=…)`), so the end never waits
        for a database that keeps failing this write. A try in flight is never cancelled
        (its debug events might be written twice)."""
        async with self._db_lock:
            entries, self._events = self._events, []  # debug events so far, in order, before StartStream
            delay = RETRY_FIRST_SECONDS
            try:
                while True:
                    self._start_in_flight = True
                    try:
                        if pgloop.usable() and not self.stream.status_callback_url:  # one statement, on the loop
                            await pgloop.run(
                                services.stream_mark_started_step(
                                    stream=self.stream, at=self.started_at, log_entries=entries
                                )
                            )
                        else:
                            await db_async(services.stream_mark_started)(
                                stream=self.stream, at=self.started_at, log_entries=entries
                            )
                        return
                    except Exception as exc:
                        log.warning("could not record the start of stream %s: %s", self.stream_id, exc)
                    finally:
                        self._start_in_flight = False
                    if self.end_reason is not None:
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
            except asyncio.CancelledError:
                pass  # cancelled between tries: nothing of this try reached the database
            self._events[:0] = entries  # not written: they go with the end

    def pump(self) -> None:
        """Write what is queued, from the caller, without waiting, while the socket takes it.

        picows frames and masks each message in C and writes it straight to the socket (no
        task, no drain). Once the transport's buffer passes its high-water mark picows calls
        pause_writing from inside send(), and the loop stops; resume_writing pumps again.
        """
        link = self.link
        if link is None or link.paused or self.end_reason is not None:
            return
        self._write_out(link)

    def _write_out(self, link: CustomerLink) -> None:
        items = self.buffer.items
        if not items:
            return
        popleft, send = self.buffer.popleft, link.send
        sent = size = 0
        while items and not link.paused:
            message = popleft()
            send(TEXT, message)
            size += len(message)
            sent += 1
        self.frames_sent += sent
        self.bytes_sent += size

    async def _finish(self) -> None:
        try:
            await self._finish_inner()
        finally:
            for task in list(self._tasks):
                task.cancel()
            self.done.set()

    async def _finish_inner(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
        if self._start_task is not None and not self._start_in_flight:
            self._start_task.cancel()  # between tries; a try in flight finishes first (the lock)
        ended_at = self._end_time()  # the end is the stream's, not the (possibly much later) write's
        reason = self.end_reason or Stream.Reason.CONNECTION_ERROR
        self.end_reason = reason
        if self._ping is not None:
            self._ping.cancel()
        link, self.link = self.link, None
        if link is not None:
            await self._close_socket(link, reason)
        tally.relay_finished(self)
        self.session.relay_finished(self)
        if self.end_error:
            log.info("stream %s ended: %s (%s)", self.stream_id, reason, self.end_error)
        self._log_noise_summary()
        self._sample(time.monotonic(), force=True)
        stats = {
            "frames_sent": self.frames_sent,
            "played_ms": self.played_ms,
            "buffer_samples": self.samples,
            "resumes": self.resumes,
        }
        async with self._db_lock:
            entries, self._events = self._events, []
            end: dict[str, Any] = {
                "stream": self.stream,
                "reason": reason,
                "error": self.end_error,
                "stats": stats,
                "started_at": self.started_at if self.connected else None,
                "at": ended_at,
                "log_entries": entries,
            }
            if self.session.take_stream_end(end):  # the call is ending: one transaction for it and its streams
                return
            await db_persist(services.stream_end, what=f"end of stream {self.stream_id}", notify_session=False, **end)

    def _end_time(self) -> datetime:
        """Now, but a stream that started bills only the time the monotonic clock saw pass:
        a wall-clock step forward mid-stream (NTP, a resumed VM) adds no seconds to it."""
        now = timezone.now()
        if self.started_at is None:
            return now
        return billing.stepless_end(start=self.started_at, elapsed=time.monotonic() - self._started_at_mono, now=now)

    async def _close_socket(self, link: CustomerLink, reason: str) -> None:
        transport = link.transport
        if transport is None or transport.is_disconnected:
            return
        if self.end_error == services.DROPPED_SLOW:
            transport.disconnect(graceful=False)  # a consumer that does not read would stall the closing handshake
            return
        if self.connected and reason != Stream.Reason.CONNECTION_ERROR and not link.close_sent:
            # A normal end: the audio still queued and the encoders' tail go out first.
            self._queue_tail()
            with contextlib.suppress(TimeoutError):  # a customer that stopped reading: the rest is not sent
                await asyncio.wait_for(self._drain(link), FINAL_DRAIN_SECONDS)
        if settings.STREAMHUB_SEND_STOP_FRAME and self.connected and not link.close_sent:
            self.seq += 1
            transport.send(TEXT, plivo.stop_message(seq=self.seq, stream_id=self.stream_id, reason=reason))
        link.close(1000, reason)
        try:
            await asyncio.wait_for(asyncio.shield(link.closed), CLOSE_WAIT)
        except TimeoutError:
            transport.disconnect(graceful=False)

    def _queue_tail(self) -> None:
        """The resamplers' remainder as the last frame of each track, padded with silence, so
        the stream lasts as long as the call audio it was given."""
        for track in self.tracks:
            for payload in self.encoders[track].flush():
                chunk = self.chunks[track] + 1
                self.chunks[track] = chunk
                self.seq += 1
                message = self.template.render(self.seq, track, self.start_ms + 20 * (chunk - 1), chunk, payload)
                self.buffer.push(message, 0.0, 0.0)

    async def _drain(self, link: CustomerLink) -> None:
        """Write what is queued while the socket takes it; picows' resume_writing pumps the rest."""
        while self.buffer.items and not link.close_sent:
            self._write_out(link)
            if self.buffer.items:
                await asyncio.sleep(0.005)

    # --- audio path (no await, no database) ------------------------------------------

    def on_audio(self, inbound: bytes, outbound: bytes, wake: bool = True) -> None:
        """Relay 20 ms of call audio: written at once when nothing waits and the socket takes it,
        else queued; `wake=False` when the caller will `pump()` right after."""
        if self.end_reason is not None:
            return
        buffer, template, start_ms = self.buffer, self.template, self.start_ms
        now = time.monotonic()
        if self._plain_inbound:  # the common case, without the general loop's lookups
            chunk = self._chunk = self._chunk + 1
            seq = self.seq = self.seq + 1
            message = template.render(seq, "inbound", start_ms + 20 * (chunk - 1), chunk, inbound)
            link = self.link
            # An empty buffer and a socket that takes more: what push + pump would do, without the
            # round trip through the buffer. (`link` is set just before `start` is written: no
            # await between the two, so no media can precede it.)
            if link is not None and not link.paused and not buffer.items:
                link.send(TEXT, message)
                self.frames_sent += 1
                self.bytes_sent += len(message)
            else:
                events = buffer.push(message, FRAME_SECONDS, now)
                if events:
                    self._on_buffer_events(events)
                if wake:
                    self.pump()
        else:
            first = True
            suppressors = self.suppressors
            for track in self.tracks:
                pcm = inbound if track == "inbound" else outbound
                if suppressors:
                    pcm = suppressors[track].process(pcm)
                for payload in self.encoders[track].encode(pcm):
                    chunk = self.chunks[track] + 1
                    self.chunks[track] = chunk
                    self.seq += 1
                    message = template.render(self.seq, track, start_ms + 20 * (chunk - 1), chunk, payload)
                    events = buffer.push(message, FRAME_SECONDS if first else 0.0, now)
                    first = False
                    if events:
                        self._on_buffer_events(events)
            if wake:
                self.pump()
        if now >= self._next_sample:
            self._sample(now)

    def _flush_noise(self) -> None:
        """The stream ends: the audio its suppressors still hold (their fixed 10 ms delay) goes out
        as one last frame per track, padded with silence, behind what is queued."""
        suppressors, self.suppressors = self.suppressors, {}
        tails = {track: s.flush() for track, s in suppressors.items()}
        if not any(tails.values()):  # no audio went in
            return
        size = next(iter(suppressors.values())).rate // 50 * 2
        silence = bytes(size)
        self.on_audio(
            tails.get("inbound", silence).ljust(size, b"\x00"),
            tails.get("outbound", silence).ljust(size, b"\x00"),
            False,
        )
        self.pump()

    def _log_noise_summary(self) -> None:
        if not self.noise:
            return
        first = next(iter(self.noise.values()))
        levels = {
            f"{track.capitalize()}OutputLevelDb": s.output_level_db
            for track, s in self.noise.items()
            if s.output_level_db is not None  # a track that carried only silence has nothing to compare
        }
        self.log_event("NoiseCancellationSummary", "", {"Level": first.level, "Frames": first.frames, **levels})

    def _sample(self, now: float, *, force: bool = False) -> None:
        if not force and now < self._next_sample:
            return
        self._next_sample = now + self._sample_every
        at, usage = round(now - self.started_mono, 2), round(self.buffer.usage_pct, 1)
        samples = self.samples
        if len(samples) >= 2 and samples[-1][1] == usage and samples[-2][1] == usage:
            # a flat stretch keeps its two ends: the same picture, and a healthy stream's samples
            # stay two or three lists, not one per second (600 calls x 10 min grew RSS by 48 MB
            # and gave the collector 360,000 more objects to walk)
            samples[-1][0] = at
        else:
            samples.append([at, usage])
        if len(samples) >= MAX_SAMPLES:  # a long stream keeps a coarser picture, not a bigger one
            self.samples = self.samples[::2]
            self._sample_every *= 2

    def _on_buffer_events(self, events: list[Degraded | Overflow]) -> None:
        # the buffer's picture (stats) records every crossing, not only the once-a-second samples:
        # a stuck customer can fill the buffer between two of them
        self._sample(time.monotonic(), force=True)
        for event in events:
            if isinstance(event, Degraded):
                tally.degraded(event.usage)
                self.log_event("DegradedStream", "", {"BufferUsage": event.usage})
            else:
                self.buffer.clear()
                error = DROPPED_WHILE_RESUMING if self.reconnecting else services.DROPPED_SLOW
                self.stop(Stream.Reason.CONNECTION_ERROR, error)
                return

    def send_text(self, message_for_seq: Any) -> None:
        """Queue a non-media frame behind the media already queued; it takes the next sequenceNumber."""
        if self.end_reason is not None:
            return
        self.seq += 1
        events = self.buffer.push(message_for_seq(self.seq), 0.0, time.monotonic())
        if events:  # the item bound: a customer that never reads cannot pile these up
            self._on_buffer_events(events)
        self.pump()

    def on_dtmf(self, digit: str) -> None:
        timestamp = self.start_ms + int((time.monotonic() - self.started_mono) * 1000)
        self.send_text(
            lambda seq: plivo.dtmf_message(
                seq=seq,
                stream_id=self.stream_id,
                digit=digit,
                timestamp_ms=timestamp,
                extra_headers=self.stream.extra_headers,
            )
        )

    def on_played(self, name: str) -> None:
        self.send_text(lambda seq: plivo.played_stream(seq=seq, stream_id=self.stream_id, name=name))

    # --- customer -> hub ------------------------------------------------------------

    def on_customer_message(self, message: str | bytes) -> None:
        if not self.stream.bidirectional:
            self.log_noisy("IgnoredMessage", "stream is not bidirectional: customer messages are ignored")
            return
        try:
            command = plivo.parse_customer_message(message)
        except framing.ProtocolError as exc:
            self.log_noisy("InvalidMessage", str(exc))
            return
        session = self.session
        if isinstance(command, plivo.PlayAudio):
            pcm = self.decoder.decode(command.payload, mulaw=command.mulaw, rate=command.rate)
            try:
                session.play(self, pcm)
            except QueueFull as exc:
                self.log_noisy("InvalidMessage", str(exc))
        elif isinstance(command, plivo.Checkpoint):
            try:
                queued = session.checkpoint(self, command.name)
            except TooManyCheckpoints as exc:
                self.log_noisy("CheckpointIgnored", str(exc))
                return
            self.log_noisy("Checkpoint", "", {"Name": command.name, "Queued": "true" if queued else "false"})
            if not queued:
                self.on_played(command.name)
        elif isinstance(command, plivo.ClearAudio):
            frames, names = session.clear(self)
            self.send_text(lambda seq: plivo.cleared_audio(seq=seq, stream_id=self.stream_id))
            self.log_noisy("ClearAudio", "", {"FramesDropped": frames, "CheckpointsDropped": ",".join(names)[:500]})
        elif isinstance(command, plivo.SendDTMF):
            supported = session.send_dtmf(self, command.digits)
            self.log_noisy(
                "SendDTMF", "" if supported else "this gateway has no DTMF command", {"Digits": command.digits}
            )
        else:
            self.log_noisy("IgnoredMessage", f"unknown event {command.event!r} ignored")

    # --- debug log ------------------------------------------------------------------

    def log_event(self, event: str, error: str = "", extra: dict[str, Any] | None = None) -> None:
        self._events.append((event, error, extra or {}))
        self._events_wake.set()

    def log_noisy(self, event: str, error: str, extra: dict[str, Any] | None = None) -> None:
        """A debug event a peer can trigger at will: the first DEBUG_EVENT_LIMIT of each kind are kept."""
        count = self._event_counts.get(event, 0) + 1
        self._event_counts[event] = count
        if count <= DEBUG_EVENT_LIMIT:
            self.log_event(event, error[:1000], extra)
        elif count == DEBUG_EVENT_LIMIT + 1:
            self.log_event(event, f"more than {DEBUG_EVENT_LIMIT} such events; further ones are not logged")

    async def _flush_events(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            await self._events_wake.wait()
            # gather what follows (a burst of events is one transaction; the start and the end
            # take whatever is queued into their own transaction)
            await asyncio.sleep(EVENT_FLUSH_DELAY)
            self._events_wake.clear()
            if await self._flush_now():
                delay = RETRY_FIRST_SECONDS
                continue
            self._events_wake.set()  # kept queued: try again after a pause
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _flush_now(self) -> bool:
        """Write the queued debug events; False (and they stay queued, in order) when that failed."""
        async with self._db_lock:
            if not self._events:
                return True
            entries, self._events = self._events, []
            try:
                await db_async(services.stream_log_batch)(stream=self.stream, entries=entries)
            except Exception as exc:
                self._events[:0] = entries
                log.warning("could not write %d debug events of stream %s: %s", len(entries), self.stream_id, exc)
                return False
            return True


def describe_connect_error(exc: BaseException) -> str:
    if isinstance(exc, WSInvalidStatusError) and exc.response is not None:
        return f"server answered HTTP {int(exc.response.status)} instead of switching protocols"
    if isinstance(exc, WSHandshakeError):
        return f"WebSocket handshake failed: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out while connecting"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def describe_close_code(code: int | None, reason: str | None) -> str:
    if code is None or code == 1006:
        return "connection disconnected with the remote service (closed without a close frame)"
    detail = f" ({reason})" if reason else ""
    if code == 1009:
        return f"the remote service sent a message over {MAX_MESSAGE} bytes: closed with 1009{detail}"
    return f"connection closed by the remote service with code {code}{detail}"
