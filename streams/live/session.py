"""A call's session: the coordinator between one gateway connection and its stream relays.

It lives in the process that holds the call's ingest socket. It creates the Call row
(decision D1 for its id), starts relays (from gateway metadata or from the service layer
through the channel layer), fans every 20 ms of gateway audio out to them without
awaiting anything, plays bidirectional streams' audio back into the call on an absolute
20 ms clock, and ends every stream with "Call hangup" when the call goes away.
Framing differences between gateways live in the consumer's GatewayLink, not here.

The Registry holds this process's sessions and its lease (`HubProcess` row): every
heartbeat says which calls it holds and applies what the database says of them (a call
or stream ended elsewhere is closed here, a stream it was never told about is started).
A process that finds its lease fenced (it stalled, or the sweep took it for dead) stops
relaying and hangs up every call it held, then beats again under a new lease id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from django.conf import settings
from django.db import DatabaseError, IntegrityError
from django.utils import timezone

from streamhub import logs
from streams import pgwrite, services
from streams.core.audio import Reframer, frame_bytes, silence, split_stereo
from streams.core.gateway import GatewayMetadata, gateway_error
from streams.core.playback import MAX_OUTSTANDING_CHECKPOINTS, Pacer, PlaybackQueue, Played, TooManyCheckpoints
from streams.core.validation import EgressPolicy, StreamParamError, StreamParams, validate_stream_params
from streams.live import pgloop
from streams.live.admission import admission
from streams.live.application import ApplicationRunner
from streams.live.dbasync import db_async, db_persist
from streams.live.mailbox import mailbox
from streams.live.relay import StreamRelay, redact_url
from streams.models import Account, Call, Stream

log = logging.getLogger(__name__)

TAP_SLACK = 0.020
RECENT_FRAMES = 150  # 3 s
CLOSE_LEASE_LOST = 4409  # the gateway socket of a call this process no longer holds
LEASE_LOST = "the hub process lost its lease on the call (it stalled or was cut off from the database)"
CALL_ENDED_ELSEWHERE = "the call was ended by another process"


class GatewayLink(Protocol):
    """What a session needs from a gateway connection; one implementation per framing."""

    async def send_audio(self, pcm: bytes) -> None: ...

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int = 1000) -> None: ...

    def send_dtmf(self, digits: str) -> str | None:
        """The TEXT frame that plays DTMF, or None when the gateway has no such command."""

    def clear_command(self) -> str | None:
        """The TEXT frame that makes the gateway drop audio it buffered (barge-in)."""

    def mark_command(self, correlation_id: str) -> str | None:
        """A TEXT frame the gateway answers once the audio before it has been played
        (Asterisk MARK_MEDIA), or None: then a checkpoint is acknowledged as soon as its
        last frame has been written (D10)."""


class CallSession:
    def __init__(self, *, account: Account, link: GatewayLink, gateway: str) -> None:
        self.account = account
        self.link = link
        self.gateway = gateway
        self.call: Call | None = None
        self.rate = 8000
        self.channels = 1
        self.relays: dict[str, StreamRelay] = {}
        self.finished: set[str] = set()  # streams whose relay ended here: never dialled again
        self._relay_list: tuple[StreamRelay, ...] = ()
        self._reframer = Reframer(frame_bytes(8000))
        self._silence = silence(8000)
        # What the hub played into the call, for mono gateways' `outbound` track: (time written, frame)
        # Two deques of untracked values, not one of tuples: a tuple per frame would live on into
        # the garbage collector's young generation (tens of thousands a second at hundreds of calls).
        self._tap: deque[bytes] = deque(maxlen=50)
        self._tap_at: deque[float] = deque(maxlen=50)
        # The last seconds of call audio, for streams started from another process (D2).
        self._recent_in: deque[bytes] = deque(maxlen=RECENT_FRAMES)
        self._recent_out: deque[bytes] = deque(maxlen=RECENT_FRAMES)
        self.playback = PlaybackQueue(frame_bytes(8000), settings.STREAMHUB_PLAYBACK_QUEUE_SECONDS)
        self.pacer = Pacer()
        self._play_wake = asyncio.Event()
        self._play_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ended = False
        self.end_reason: str = Stream.Reason.CALL_HANGUP
        self.end_error = ""
        self._ending: asyncio.Future[None] | None = None
        # stream ends handed over by relays stopped by the call's end, written with it (None: not ending)
        self._stream_ends: list[dict[str, Any]] | None = None
        self.bad_frames = 0
        self.frames_in = 0
        self.playback_paused = False
        self._marks: dict[str, tuple[str, str]] = {}  # correlation id -> (stream id, checkpoint name)
        self._marks_of: dict[str, int] = {}  # stream id -> marks the gateway has not confirmed yet
        self._mark_seq = 0
        self.audio_since = time.time()  # when the call's audio began (an application's first streams get it all)
        self.application: ApplicationRunner | None = None

    # --- setup ------------------------------------------------------------------------

    def set_format(self, *, rate: int, channels: int) -> None:
        self.rate, self.channels = rate, channels
        self._reframer = Reframer(frame_bytes(rate, channels=channels))
        self._silence = silence(rate)
        self.playback = PlaybackQueue(frame_bytes(rate), settings.STREAMHUB_PLAYBACK_QUEUE_SECONDS)

    async def begin(self, meta: GatewayMetadata, *, joined: Callable[[], Awaitable[None]] | None = None) -> Call:
        """Create the live Call row and start the streams the metadata asks for.

        `joined` runs as soon as the call exists (the consumer registers with the process's
        control mailbox there, which has kept any message sent to the call meanwhile).
        """
        self.set_format(rate=meta.sample_rate, channels=meta.channels)
        self.audio_since = time.time()
        valid: list[tuple[int, StreamParams]] = []
        refused: list[tuple[int, str]] = []
        policy = EgressPolicy.from_settings(settings)
        for index, entry in enumerate(meta.streams):
            try:
                params = validate_stream_params(entry, policy=policy)
            except StreamParamError as exc:
                refused.append((index, str(exc)))
                continue
            valid.append((index, params))
        # the call and its streams: one transaction, one trip to the database thread
        opener = _open_call_on_loop if _on_loop(meta) else db_async(_open_call)
        self.call, created = await opener(
            account=self.account,
            meta=meta,
            gateway=self.gateway,
            server_id=registry.server_id,
            control_channel=mailbox.channel,
            streams=[params for _, params in valid],
        )
        registry.add(self)
        # this connection's later log lines (bound after registry.add: its heartbeat task is no one call's)
        logs.bind(call_uuid=str(self.call.call_uuid), account=self.account.auth_id)
        if joined is not None:
            await joined()
        for error in meta.errors:
            await self.link.send_text(gateway_error(error))
        if self.call.application is not None or meta.app_id:
            self._run_application(meta.app_id)
        for index, reason in refused:
            log.warning("call %s: stream %d refused: %s", self.call.call_uuid, index, reason)
            await self.link.send_text(gateway_error(f"streams[{index}] refused: {reason}"))
        too_many = False
        for (index, params), stream in zip(valid, created, strict=True):
            if isinstance(stream, services.StreamConflict):
                message = f"streams[{index}] refused: an active stream to {params.service_url} exists on this call"
                await self.link.send_text(gateway_error(message))
                continue
            if isinstance(stream, services.TooManyStreams):
                if not too_many:  # one frame for all the rest
                    too_many = True
                    rest = f"streams[{index}]" if index == len(meta.streams) - 1 else f"streams[{index}..]"
                    await self.link.send_text(gateway_error(f"{rest} refused: {stream}"))
                continue
            stream.account, stream.call = self.account, self.call
            self.add_relay(stream)
        return self.call

    def add_relay(
        self, stream: Stream, *, backfill: bool = False, backfill_since: float | None = None
    ) -> StreamRelay | None:
        key = str(stream.stream_id)
        if key in self.relays or key in self.finished or self.ended:
            return self.relays.get(key)
        relay = StreamRelay(session=self, stream=stream, gateway_rate=self.rate)
        if backfill_since is not None:
            self._backfill_since(relay, backfill_since)
        elif backfill:
            self._backfill(relay, stream)
        self.relays[key] = relay
        self._relay_list = tuple(self.relays.values())
        with logs.log_context(call_uuid=str(stream.call.call_uuid), account=self.account.auth_id, stream_id=key):
            relay.start()  # its tasks keep these ids for their log lines
        log.info("call %s: stream %s → %s", stream.call.call_uuid, key, redact_url(stream.service_url))
        return relay

    # --- the call's application (streams.live.application) --------------------------------

    def _run_application(self, app_id: str) -> None:
        """Run the call's application; until its first streams exist, keep all the call's audio."""
        assert self.call is not None
        frames = math.ceil(settings.STREAMHUB_STREAM_BUFFER_SECONDS / 0.020)
        self._recent_in = deque(self._recent_in, maxlen=frames)
        self._recent_out = deque(self._recent_out, maxlen=frames)
        self.application = ApplicationRunner(
            host=self, call=self.call, application=self.call.application, app_id=app_id
        )
        self._spawn(self.application.run())

    def end_preanswer(self) -> None:
        if self._recent_in.maxlen != RECENT_FRAMES:
            self._recent_in = deque(self._recent_in, maxlen=RECENT_FRAMES)
            self._recent_out = deque(self._recent_out, maxlen=RECENT_FRAMES)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._spawn(coro)

    def _backfill_since(self, relay: StreamRelay, since: float) -> None:
        """The call's audio from `since` (kept while the answer URL was fetched) goes to the stream
        first, as if it had existed then; its clock starts with that audio (D2, D8)."""
        now = time.time()
        frames = min(len(self._recent_in), math.ceil(max(0.0, now - since) / 0.020))
        if not frames:
            return
        relay.backdate(max(since, now - frames * 0.020))
        recent = zip(list(self._recent_in)[-frames:], list(self._recent_out)[-frames:], strict=True)
        for inbound, outbound in recent:
            relay.on_audio(inbound, outbound, False)

    async def start_stream(self, stream_id: str) -> Stream | None:
        """A stream created elsewhere (REST, admin) on this call: dial it from here."""
        if self.call is None or self.ended:
            return None
        stream: Stream | None = await db_async(_load_stream)(call=self.call, stream_id=stream_id)
        if stream is None or str(stream.stream_id) in self.relays:
            return None
        self.add_relay(stream, backfill=True)
        return stream

    def _backfill(self, relay: StreamRelay, stream: Stream) -> None:
        """D2 for streams created in another process: the call audio since the row was created
        (it reached us a moment later, over the channel layer) comes from the recent-audio ring,
        and the stream's clock starts at its creation, so timestamps stay true."""
        age = max(0.0, time.time() - stream.created_at.timestamp())
        frames = min(len(self._recent_in), math.ceil(age / 0.020))
        if not frames:
            return
        # a stream found late (at a lease check) gets the ring's last seconds, timed as such
        relay.backdate(max(stream.created_at.timestamp(), time.time() - frames * 0.020))
        recent = zip(list(self._recent_in)[-frames:], list(self._recent_out)[-frames:], strict=True)
        for inbound, outbound in recent:
            relay.on_audio(inbound, outbound, False)

    def stop_stream(self, stream_id: str, reason: str = Stream.Reason.API_REQUEST) -> None:
        relay = self.relays.get(stream_id)
        if relay is not None:
            relay.stop(reason)

    def relay_finished(self, relay: StreamRelay) -> None:
        self.finished.add(relay.stream_id)  # its end may still be on its way to the database
        self.playback.clear(relay.stream_id)
        if self._marks_of.pop(relay.stream_id, 0):
            for correlation_id, (owner, _) in list(self._marks.items()):
                if owner == relay.stream_id:
                    del self._marks[correlation_id]
        self.relays.pop(relay.stream_id, None)
        self._relay_list = tuple(self.relays.values())

    # --- gateway -> streams (hot path: no await, no database) ---------------------------

    def feed_audio_and_pump(self, data: bytes) -> None:
        """feed_audio: each relay writes what its customer socket takes at once (see on_audio)."""
        self.feed_audio(data)

    def feed_audio(self, data: bytes, wake: bool = True) -> None:
        if len(data) % (2 * self.channels):
            self.bad_frames += 1
            for relay in self._relay_list:
                relay.log_noisy(
                    "GatewayInvalidFrame",
                    f"dropped a {len(data)}-byte audio frame: not a whole number of {2 * self.channels}-byte samples",
                )
            return
        relays = self._relay_list
        tap = self._tap
        for frame in self._reframer.push(data):
            self.frames_in += 1
            if self.channels == 2:
                inbound, outbound = split_stereo(frame)
            elif tap and (len(tap) > 1 or time.monotonic() - self._tap_at[0] >= TAP_SLACK):
                # one frame of slack, so the two 20 ms clocks' jitter cannot split a clip with silence
                self._tap_at.popleft()
                inbound, outbound = frame, tap.popleft()
            else:
                inbound, outbound = frame, self._silence
            self._recent_in.append(inbound)
            self._recent_out.append(outbound)
            for relay in relays:
                relay.on_audio(inbound, outbound, wake)

    def on_dtmf(self, digit: str) -> None:
        for relay in self._relay_list:
            relay.on_dtmf(digit)

    def log_to_streams(self, event: str, error: str) -> None:
        for relay in self._relay_list:
            relay.log_noisy(event, error)

    # --- streams -> gateway (bidirectional) ---------------------------------------------

    def play(self, relay: StreamRelay, pcm: bytes) -> None:
        self.playback.append_audio(relay.stream_id, pcm)
        if self._play_task is None:
            self._play_task = self._spawn(self._playback_loop())
        self._play_wake.set()

    def checkpoint(self, relay: StreamRelay, name: str) -> bool:
        """False when it is due at once; True when it waits behind this stream's audio or marks.

        Raises TooManyCheckpoints when the stream already has MAX_OUTSTANDING_CHECKPOINTS
        waiting (queued behind audio or sent to the gateway as marks not yet confirmed).
        """
        key = relay.stream_id
        marks = self._marks_of.get(key, 0)
        if self.playback.checkpoints_of(key) + marks >= MAX_OUTSTANDING_CHECKPOINTS:
            raise TooManyCheckpoints(
                f"checkpoint {name!r} ignored: {MAX_OUTSTANDING_CHECKPOINTS} checkpoints of this stream "
                "are still waiting for their audio to play"
            )
        if self.playback.append_checkpoint(key, name):
            return True
        if marks:
            # the gateway still has to confirm an earlier checkpoint: acks stay in order
            self._checkpoint_reached(relay, name)
            return True
        return False

    def clear(self, relay: StreamRelay) -> tuple[int, list[str]]:
        frames, names = self.playback.clear(relay.stream_id)
        if self._marks_of.pop(relay.stream_id, 0):
            for correlation_id, (owner, name) in list(self._marks.items()):
                if owner == relay.stream_id:  # the gateway flushes these marks too: never acknowledged (D12)
                    del self._marks[correlation_id]
                    names.append(name)
        dropped = frames, names
        command = self.link.clear_command()
        if command is not None:
            self._spawn(self.link.send_text(command))
        return dropped

    def send_dtmf(self, relay: StreamRelay, digits: str) -> bool:
        command = self.link.send_dtmf(digits)
        if command is None:
            return False
        self._spawn(self.link.send_text(command))
        return True

    async def _playback_loop(self) -> None:
        try:
            await self._playback()
        except asyncio.CancelledError:
            raise
        except OSError:
            # uvicorn raises ClientDisconnected (an OSError) for a write to a socket the gateway
            # has just closed: the caller hung up, the session is ending. Not an error.
            log.info(
                "call %s: the gateway hung up during playback; %d queued frames not played",
                self.call.call_uuid if self.call else "?",
                len(self.playback),
            )
        except Exception:
            log.exception("call %s: playback stopped", self.call.call_uuid if self.call else "?")
        finally:
            self._play_task = None  # the next playAudio starts a fresh loop

    async def _playback(self) -> None:
        loop = asyncio.get_running_loop()
        queue, pacer, wake = self.playback, self.pacer, self._play_wake
        while not self.ended:
            if not len(queue):
                pacer.idle()
                wake.clear()
                await wake.wait()
                continue
            delay = pacer.due_in(loop.time())
            if delay > 0:
                await asyncio.sleep(delay)
            played = queue.next_frame()
            if played is None:
                continue
            await self.link.send_audio(played.pcm)
            skip = pacer.sent(loop.time())
            self._tap.append(played.pcm)
            self._tap_at.append(time.monotonic())
            self._played(played, sent=True)
            if skip:  # a stall: these frames' slots have passed (see Pacer)
                owner = self.relays.get(played.owner)
                if owner is not None:
                    owner.log_noisy("PlaybackStall", f"playback stalled: skipped {skip} late frames to stay on time")
                for _ in range(skip):
                    late = queue.next_frame()
                    if late is None:
                        break
                    self._played(late, sent=False)
            if self.playback_paused:
                while self.playback_paused and not self.ended:
                    wake.clear()
                    await wake.wait()
                pacer.idle()  # held by the gateway (XOFF), not a stall: nothing is late

    def _played(self, played: Played, *, sent: bool) -> None:
        relay = self.relays.get(played.owner)
        if relay is None:
            return
        relay.count_playback(sent=sent)
        for name in played.checkpoints:  # a skipped frame's time has passed too
            self._checkpoint_reached(relay, name)

    def _checkpoint_reached(self, relay: StreamRelay, name: str) -> None:
        self._mark_seq += 1
        correlation_id = f"m{self._mark_seq}"
        command = self.link.mark_command(correlation_id)
        if command is None:
            relay.on_played(name)
            return
        self._marks[correlation_id] = (relay.stream_id, name)
        self._marks_of[relay.stream_id] = self._marks_of.get(relay.stream_id, 0) + 1
        self._spawn(self.link.send_text(command))

    def gateway_mark_processed(self, correlation_id: str) -> None:
        """The gateway played everything before a mark: a truthful playedStream."""
        owner_name = self._marks.pop(correlation_id, None)
        if owner_name is None:
            return
        left = self._marks_of.get(owner_name[0], 0) - 1
        if left > 0:
            self._marks_of[owner_name[0]] = left
        else:
            self._marks_of.pop(owner_name[0], None)
        relay = self.relays.get(owner_name[0])
        if relay is not None:
            relay.on_played(owner_name[1])

    def pause_playback(self, paused: bool) -> None:
        """Gateway flow control (Asterisk MEDIA_XOFF / MEDIA_XON); the queue keeps the rest."""
        self.playback_paused = paused
        if not paused:
            self._play_wake.set()

    def start_silence_clock(self, tolerance_frames: int = 3) -> None:
        """For gateways that send nothing while the caller is silent (Asterisk): keep each
        stream's 20 ms cadence by feeding silence once audio is more than
        `tolerance_frames` behind the wall clock."""
        self._spawn(self._silence_clock(tolerance_frames))

    async def _silence_clock(self, tolerance: int) -> None:
        loop = asyncio.get_running_loop()
        start, base, tick = loop.time(), self.frames_in, 0
        frame = self._silence if self.channels == 1 else self._silence * 2
        filled_to: int | None = None  # frames_in right after our last fill
        while not self.ended:
            if filled_to is None:
                # frames_in only grows, so no deficit is possible before this tick: a gateway
                # that keeps up wakes this clock every `tolerance + 1` ticks, not every tick
                tick = max(tick + 1, self.frames_in - base + tolerance + 1)
            else:  # filling a gap: every tick, to fill on time and to see the caller speak again
                tick += 1
            delay = start + tick * 0.020 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if filled_to is not None and self.frames_in > filled_to:
                # The gateway speaks again after a gap we filled; its frames follow its own clock:
                # restart ours on them with the full tolerance, or one frame of jitter puts
                # silence inside the speech.
                start, base, tick, filled_to = loop.time(), self.frames_in, 0, None
                continue
            deficit = tick - (self.frames_in - base) - tolerance
            if deficit > 0:
                self.feed_audio(frame * min(deficit, 50))
                filled_to = self.frames_in

    # --- the end ----------------------------------------------------------------------

    async def hangup(self) -> None:
        """Hang-up ordered by REST/admin (the rows are already ended): close the gateway, end relays."""
        await self.link.close(1000)
        await self.end()

    async def lease_lost(self, error: str) -> None:
        """This process no longer holds the call: stop relaying, close both sides, record why."""
        if not self.ended:
            self.end_reason, self.end_error = Stream.Reason.CONNECTION_ERROR, error
        await self.link.close(CLOSE_LEASE_LOST)
        await self.end()

    async def end(self) -> None:
        """The call is over: every stream ends with "Call hangup", then the call row.

        One shared, shielded task, so a hang-up racing the gateway's disconnect (or a
        cancelled consumer) cannot leave the session half-ended.
        """
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end())
        await asyncio.shield(self._ending)

    async def _end(self) -> None:
        self.ended = True
        ended_at = timezone.now()
        relays = list(self.relays.values())
        self._stream_ends = [] if self.call is not None else None
        for relay in relays:
            relay.stop(self.end_reason, self.end_error)
        await asyncio.gather(*(relay.wait() for relay in relays), return_exceptions=True)
        stream_ends, self._stream_ends = self._stream_ends or [], None
        for task in list(self._tasks):
            task.cancel()
        if self.call is not None and not await self._plain_end_on_loop(ended_at, stream_ends):
            # Until this succeeds the process still holds the call (it stays in its heartbeat).
            # The streams' ends go in the same transaction: a hang-up is one write, not one per stream.
            await db_persist(
                services.call_end,
                what=f"end of call {self.call.call_uuid}",
                call=self.call,
                notify_session=False,
                reason=self.end_reason,
                error=self.end_error,
                at=ended_at,
                stream_ends=stream_ends,
            )
        registry.discard(self)

    async def _plain_end_on_loop(self, ended_at: datetime, stream_ends: list[dict[str, Any]]) -> bool:
        """The plain hang-up (services.plain_hang_up_possible) on the event loop (streams.live.pgloop):
        its statement, then the check for a stream started meanwhile. True when that was all; else
        (a stream's row had changed, a cause was recorded meanwhile, a stream left, a database
        error) `stream_ends` keeps what is left for services.call_end, which writes the rest on a
        database thread until it succeeds (its steps are conditional: what was written is not
        written again)."""
        assert self.call is not None
        if not (pgloop.usable() and services.plain_hang_up_possible(self.call, stream_ends)):
            return False
        try:
            _, left, hung_up = await pgloop.run(
                services.plain_hang_up_step(call=self.call, at=ended_at, stream_ends=stream_ends)
            )
            if hung_up and not left and not await pgloop.run(services.has_active_streams_step(self.call.pk)):
                return True
        except DatabaseError as exc:
            log.warning(
                "end of call %s failed on the loop; retrying: %s: %s", self.call.call_uuid, type(exc).__name__, exc
            )
            return False
        stream_ends[:] = left
        return False

    def take_stream_end(self, end: dict[str, Any]) -> bool:
        if self._stream_ends is None:
            return False
        self._stream_ends.append(end)
        return True

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _open_call(
    *,
    account: Account,
    meta: GatewayMetadata,
    gateway: str,
    server_id: str,
    streams: list[StreamParams],
    control_channel: str = "",
) -> services.Opened:
    """D1: the gateway's call id is the CallUUID when it is a UUID not taken; else a new one.
    The metadata's streams are created with the call, in its transaction.

    The call's application is chosen here too (services.application_for_call); a named app
    that is not the account's leaves the call without one (the runner reports it).
    """
    candidate, kwargs = _call_fields(account, meta, gateway, server_id, streams, control_channel)
    # PostgreSQL's set-up statement refuses a taken call_uuid itself (IntegrityError, nothing
    # written): no look-up first, one round trip fewer for every gateway that sends its call's UUID
    if candidate is not None and (pgwrite.usable() or not Call.objects.filter(call_uuid=candidate).exists()):
        try:
            return services.call_open_with_streams(call_uuid=candidate, **kwargs)
        except IntegrityError:
            pass
    return services.call_open_with_streams(call_uuid=uuid.uuid4(), **kwargs)


async def _open_call_on_loop(
    *,
    account: Account,
    meta: GatewayMetadata,
    gateway: str,
    server_id: str,
    streams: list[StreamParams],
    control_channel: str = "",
) -> services.Opened:
    """_open_call's PostgreSQL statement on the event loop (streams.live.pgloop), for a call with
    streams and no application named (nothing to look up: the call has no application)."""
    candidate, kwargs = _call_fields(account, meta, gateway, server_id, streams, control_channel)
    if candidate is not None:
        try:
            return await pgloop.run(services.call_open_step(call_uuid=candidate, **kwargs))
        except IntegrityError:
            pass
    return await pgloop.run(services.call_open_step(call_uuid=uuid.uuid4(), **kwargs))


def _on_loop(meta: GatewayMetadata) -> bool:
    """Whether a call's set-up takes the event loop's way (_open_call_on_loop)."""
    return bool(meta.streams) and not meta.app_id and pgloop.usable()


def _call_fields(
    account: Account,
    meta: GatewayMetadata,
    gateway: str,
    server_id: str,
    streams: list[StreamParams],
    control_channel: str,
) -> tuple[uuid.UUID | None, dict[str, Any]]:
    """The gateway's call id when it is a UUID, and the rest of call_open_with_streams' arguments."""
    metadata: dict[str, Any] = {"raw": meta.raw, "sampleRate": meta.sample_rate, "mixType": meta.mix_type}
    # read by services.stream_create: a call whose gateway cannot play audio gets no bidirectional stream
    metadata.update(playback=meta.playback is not False, playbackNote=meta.playback_note)
    if meta.plivo_params:
        metadata["plivo"] = meta.plivo_params
    try:  # no query for a call with streams and no app named: it has no application
        application = services.application_for_call(
            account=account, app_id=meta.app_id, wants_streams=bool(meta.streams)
        )
    except services.ApplicationNotFound:
        application = None
    if meta.app_id:
        metadata["appId"] = meta.app_id
    candidate: uuid.UUID | None = None
    if meta.call_id:
        metadata["gateway_call_id"] = meta.call_id
        try:
            candidate = uuid.UUID(meta.call_id)
        except ValueError:
            candidate = None
    kwargs: dict[str, Any] = {
        "account": account,
        "from_number": meta.from_number,
        "to_number": meta.to_number,
        "direction": meta.direction,
        "gateway": gateway,
        "metadata": metadata,
        "application": application,
        "server_id": server_id,
        "control_channel": control_channel,
        "streams": streams,
    }
    return candidate, kwargs


def _load_stream(*, call: Call, stream_id: str) -> Stream | None:
    stream = (
        Stream.objects.select_related("account", "call")
        .filter(call=call, stream_id=stream_id, end_time__isnull=True)
        .first()
    )
    return stream


def new_lease_id() -> str:
    """A lease id: the configured server id with a fresh nonce (a fenced lease is never revived)."""
    base = settings.STREAMHUB_SERVER_ID.rpartition("#")[0] or settings.STREAMHUB_SERVER_ID
    return f"{base}#{secrets.token_hex(4)}"


class Registry:
    """The sessions of this process, and its lease: a heartbeat that is also a check of its calls."""

    def __init__(self) -> None:
        self.sessions: set[CallSession] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._server_id: str | None = None
        self.leases_lost = 0

    @property
    def server_id(self) -> str:
        if self._server_id is None:
            self._server_id = settings.STREAMHUB_SERVER_ID
        return self._server_id

    def add(self, session: CallSession) -> None:
        self.sessions.add(session)
        loop = asyncio.get_running_loop()
        if self._heartbeat is None or self._heartbeat.done() or self._heartbeat.get_loop() is not loop:
            # Beats from the first call on for the life of the process, so an idle process
            # keeps its lease and the sweep can tell it from a dead one.
            self._heartbeat = loop.create_task(self._beat())

    def discard(self, session: CallSession) -> None:
        self.sessions.discard(session)

    def _held(self) -> dict[int, list[str]]:
        return {s.call.pk: [*s.relays, *s.finished] for s in self.sessions if s.call is not None}

    async def _beat(self) -> None:
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Try again soon: after a database outage a prompt beat clears the sweep's suspicion.
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(min(1.0, settings.STREAMHUB_HEARTBEAT_SECONDS))
                continue
            await asyncio.sleep(settings.STREAMHUB_HEARTBEAT_SECONDS)

    async def beat(self) -> None:
        held = self._held()
        server_id = self.server_id
        lease: services.Lease = await db_async(services.hub_lease)(
            server_id=server_id, live_calls=len(self.sessions), capacity=admission.limit, relays=held
        )
        if not lease.held:
            await self._lease_lost(server_id)
            return
        by_call = {s.call.pk: s for s in self.sessions if s.call is not None}
        ended_calls = set(lease.ended_calls)
        for call_id in ended_calls:
            session = by_call.get(call_id)
            if session is not None and not session.ended:
                log.warning("call %s was ended by another process: hanging up here", session.call)
                self._spawn(session.lease_lost(CALL_ENDED_ELSEWHERE))
        for session in by_call.values():
            for stream_id, reason in lease.ended_streams.items():
                relay = session.relays.get(stream_id)
                if relay is not None:
                    relay.stop(reason or Stream.Reason.CONNECTION_ERROR)
        for call_id, stream_ids in lease.unknown_streams.items():
            session = by_call.get(call_id)
            if session is None or call_id in ended_calls:
                continue
            for stream_id in stream_ids:
                log.info("call %s: stream %s found at the lease check: starting it", session.call, stream_id)
                self._spawn(session.start_stream(stream_id))

    async def _lease_lost(self, server_id: str) -> None:
        """Fenced: new calls beat under a new lease id; every call of the old one is hung up."""
        self.leases_lost += 1
        if self._server_id == server_id or self._server_id is None:
            self._server_id = new_lease_id()
        doomed = [s for s in self.sessions if s.call is not None and s.call.server_id == server_id]
        log.error(
            "lease %s was fenced by the orphan sweep: hanging up its %d calls; new calls run as %s",
            server_id,
            len(doomed),
            self._server_id,
        )
        for session in doomed:
            self._spawn(session.lease_lost(LEASE_LOST))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[Any]] = set()
registry = Registry()
