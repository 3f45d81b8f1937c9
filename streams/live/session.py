"""A call's session: the coordinator between one gateway connection and its stream relays.

It lives in the process that holds the call's ingest socket. It creates the Call row
(decision D1 for its id), starts relays (from gateway metadata or from the service layer
through the channel layer), fans every 20 ms of gateway audio out to them without
awaiting anything, plays bidirectional streams' audio back into the call on an absolute
20 ms clock, and ends every stream with "Call hangup" when the call goes away.
Framing differences between gateways live in the consumer's GatewayLink, not here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from django.conf import settings
from django.db import IntegrityError

from streams import services
from streams.core.audio import Reframer, frame_bytes, silence, split_stereo
from streams.core.gateway import GatewayMetadata, gateway_error
from streams.core.playback import Pacer, PlaybackQueue, Played
from streams.core.validation import StreamParamError, StreamParams, validate_stream_params
from streams.live.admission import admission
from streams.live.dbasync import db_async
from streams.live.relay import StreamRelay, redact_url
from streams.models import Account, Call, Stream

log = logging.getLogger(__name__)

TAP_SLACK = 0.020
RECENT_FRAMES = 150  # 3 s


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
        self._ending: asyncio.Future[None] | None = None
        self.bad_frames = 0
        self.frames_in = 0
        self.playback_paused = False
        self._marks: dict[str, tuple[str, str]] = {}  # correlation id -> (stream id, checkpoint name)
        self._mark_seq = 0

    # --- setup ------------------------------------------------------------------------

    def set_format(self, *, rate: int, channels: int) -> None:
        self.rate, self.channels = rate, channels
        self._reframer = Reframer(frame_bytes(rate, channels=channels))
        self._silence = silence(rate)
        self.playback = PlaybackQueue(frame_bytes(rate), settings.STREAMHUB_PLAYBACK_QUEUE_SECONDS)

    async def begin(self, meta: GatewayMetadata, *, joined: Callable[[], Awaitable[None]] | None = None) -> Call:
        """Create the live Call row and start the streams the metadata asks for.

        `joined` runs as soon as the call exists (the consumer joins the call's control
        group there), so a stream started over REST meanwhile is not missed.
        """
        self.set_format(rate=meta.sample_rate, channels=meta.channels)
        valid: list[tuple[int, StreamParams]] = []
        refused: list[tuple[int, str]] = []
        for index, entry in enumerate(meta.streams):
            try:
                params = validate_stream_params(
                    entry, forbid_private_callbacks=settings.STREAMHUB_FORBID_PRIVATE_CALLBACKS
                )
            except StreamParamError as exc:
                refused.append((index, str(exc)))
                continue
            valid.append((index, params))
        # the call and its streams: one transaction, one trip to the database thread
        self.call, created = await db_async(_open_call)(
            account=self.account, meta=meta, gateway=self.gateway, streams=[params for _, params in valid]
        )
        registry.add(self)
        if joined is not None:
            await joined()
        for error in meta.errors:
            await self.link.send_text(gateway_error(error))
        for index, reason in refused:
            log.warning("call %s: stream %d refused: %s", self.call.call_uuid, index, reason)
            await self.link.send_text(gateway_error(f"streams[{index}] refused: {reason}"))
        for (index, params), stream in zip(valid, created, strict=True):
            if isinstance(stream, services.StreamConflict):
                message = f"streams[{index}] refused: an active stream to {params.service_url} exists on this call"
                await self.link.send_text(gateway_error(message))
                continue
            stream.account, stream.call = self.account, self.call
            self.add_relay(stream)
        return self.call

    def add_relay(self, stream: Stream, *, backfill: bool = False) -> None:
        key = str(stream.stream_id)
        if key in self.relays or self.ended:
            return
        relay = StreamRelay(session=self, stream=stream, gateway_rate=self.rate)
        if backfill:
            self._backfill(relay, stream)
        self.relays[key] = relay
        self._relay_list = tuple(self.relays.values())
        relay.start()
        log.info("call %s: stream %s → %s", stream.call.call_uuid, key, redact_url(stream.service_url))

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
        relay.backdate(stream.created_at.timestamp())
        recent = zip(list(self._recent_in)[-frames:], list(self._recent_out)[-frames:], strict=True)
        for inbound, outbound in recent:
            relay.on_audio(inbound, outbound, False)

    def stop_stream(self, stream_id: str, reason: str = Stream.Reason.API_REQUEST) -> None:
        relay = self.relays.get(stream_id)
        if relay is not None:
            relay.stop(reason)

    def relay_finished(self, relay: StreamRelay) -> None:
        self.playback.clear(relay.stream_id)
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
        """False when it is due at once; True when it waits behind this stream's audio or marks."""
        if self.playback.append_checkpoint(relay.stream_id, name):
            return True
        if any(owner == relay.stream_id for owner, _ in self._marks.values()):
            # the gateway still has to confirm an earlier checkpoint: acks stay in order
            self._checkpoint_reached(relay, name)
            return True
        return False

    def clear(self, relay: StreamRelay) -> tuple[int, list[str]]:
        frames, names = self.playback.clear(relay.stream_id)
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
        self._spawn(self.link.send_text(command))

    def gateway_mark_processed(self, correlation_id: str) -> None:
        """The gateway played everything before a mark: a truthful playedStream."""
        owner_name = self._marks.pop(correlation_id, None)
        if owner_name is None:
            return
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
        relays = list(self.relays.values())
        for relay in relays:
            relay.stop(Stream.Reason.CALL_HANGUP)
        await asyncio.gather(*(relay.wait() for relay in relays), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self.call is not None:
            try:
                await db_async(services.call_end)(call=self.call, notify_session=False)
            except Exception:
                log.exception("could not end call %s", self.call.call_uuid)
        registry.discard(self)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _open_call(
    *, account: Account, meta: GatewayMetadata, gateway: str, streams: list[StreamParams]
) -> tuple[Call, list[Stream | services.StreamConflict]]:
    """D1: the gateway's call id is the CallUUID when it is a UUID not taken; else a new one.
    The metadata's streams are created with the call, in its transaction."""
    metadata: dict[str, Any] = {"raw": meta.raw, "sampleRate": meta.sample_rate, "mixType": meta.mix_type}
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
        "streams": streams,
    }
    if candidate is not None and not Call.objects.filter(call_uuid=candidate).exists():
        try:
            return services.call_open_with_streams(call_uuid=candidate, **kwargs)
        except IntegrityError:
            pass
    return services.call_open_with_streams(call_uuid=uuid.uuid4(), **kwargs)


def _load_stream(*, call: Call, stream_id: str) -> Stream | None:
    stream = (
        Stream.objects.select_related("account", "call")
        .filter(call=call, stream_id=stream_id, end_time__isnull=True)
        .first()
    )
    return stream


class Registry:
    """The sessions of this process, and its heartbeat (the sweep's sign of life)."""

    def __init__(self) -> None:
        self.sessions: set[CallSession] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    def add(self, session: CallSession) -> None:
        self.sessions.add(session)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def discard(self, session: CallSession) -> None:
        self.sessions.discard(session)

    async def _beat(self) -> None:
        while True:
            try:
                await db_async(services.hub_heartbeat)(
                    server_id=settings.STREAMHUB_SERVER_ID,
                    live_calls=len(self.sessions),
                    capacity=admission.limit,
                )
            except Exception:
                log.exception("heartbeat failed")
            if not self.sessions:
                self._heartbeat = None
                return
            await asyncio.sleep(settings.STREAMHUB_HEARTBEAT_SECONDS)


registry = Registry()
