"""The call's playback queue and its pacing clock (decisions D10–D12). Pure: no I/O, time passed in.

Clips from `playAudio` are queued whole, in order (never overlapping), and handed out
as 20 ms frames at the gateway's rate. A checkpoint is a marker behind the audio queued before it; it
is due right after the last of that audio has been written to the gateway, or at once
when nothing is queued. `clear(owner)` drops that stream's frames and markers without
acknowledging them (D12). Several bidirectional streams on one call share the queue,
each clearing only its own audio. The queue counts each owner's checkpoints, so the call
session can bound what one stream may leave outstanding (MAX_OUTSTANDING_CHECKPOINTS).

The Pacer schedules frame k at t0 + k·20 ms on the monotonic clock; after a stall it
skips the frames whose slots have passed rather than bursting the backlog or sliding
the schedule, and it resets when the queue runs empty (nothing is sent while idle, D11).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

FRAME_SECONDS = 0.020
# Checkpoints of one stream waiting for their audio to play (or for the gateway to confirm a
# mark): beyond this a customer could make the hub hold names without limit, so more are ignored.
MAX_OUTSTANDING_CHECKPOINTS = 1000


class QueueFull(Exception):
    pass


class TooManyCheckpoints(Exception):
    pass


class Clip:
    """One `playAudio` clip, padded to whole frames; `pos` bytes of it have been taken. Its
    checkpoints are due right after its last frame. The queue holds clips, not frames: a 60 s
    clip is one object, not 3,000 for the garbage collector to scan while it waits to play."""

    __slots__ = ("checkpoints", "owner", "pcm", "pos")

    def __init__(self, owner: str, pcm: bytes) -> None:
        self.owner = owner
        self.pcm = pcm
        self.pos = 0
        self.checkpoints: list[str] = []


@dataclass(frozen=True)
class Played:
    """What `next_frame` hands the writer: the frame and the checkpoints due once it is written."""

    owner: str
    pcm: bytes
    checkpoints: tuple[str, ...]


class PlaybackQueue:
    def __init__(self, frame_size: int, max_seconds: float) -> None:
        self.frame_size = frame_size
        self.max_frames = int(max_seconds / FRAME_SECONDS)
        self._clips: deque[Clip] = deque()
        self._frames = 0  # frames left in all clips
        self._checkpoints: dict[str, int] = {}

    def __len__(self) -> int:
        return self._frames

    def _left(self, clip: Clip) -> int:
        return (len(clip.pcm) - clip.pos) // self.frame_size

    def queued_seconds(self, owner: str | None = None) -> float:
        if owner is None:
            return self._frames * FRAME_SECONDS
        return sum(self._left(c) for c in self._clips if c.owner == owner) * FRAME_SECONDS

    def checkpoints_of(self, owner: str) -> int:
        """How many of this owner's checkpoints wait behind queued audio."""
        return self._checkpoints.get(owner, 0)

    def _count(self, owner: str, delta: int) -> None:
        count = self._checkpoints.get(owner, 0) + delta
        if count > 0:
            self._checkpoints[owner] = count
        else:
            self._checkpoints.pop(owner, None)

    def append_audio(self, owner: str, pcm: bytes) -> int:
        """Queue a clip; the tail shorter than 20 ms is padded with silence. Returns frames added."""
        size = self.frame_size
        count = -(-len(pcm) // size)
        if self._frames + count > self.max_frames:
            raise QueueFull(
                f"clip of {count * FRAME_SECONDS:.2f} s would exceed the playback queue bound of "
                f"{self.max_frames * FRAME_SECONDS:.0f} s ({self._frames * FRAME_SECONDS:.2f} s queued)"
            )
        if count:
            pad = count * size - len(pcm)
            self._clips.append(Clip(owner, bytes(pcm) + b"\x00" * pad if pad else bytes(pcm)))
            self._frames += count
        return count

    def append_checkpoint(self, owner: str, name: str) -> bool:
        """Place a marker behind this owner's queued audio. False: nothing queued, it is due now."""
        for clip in reversed(self._clips):
            if clip.owner == owner:
                clip.checkpoints.append(name)
                self._count(owner, 1)
                return True
        return False

    def clear(self, owner: str) -> tuple[int, list[str]]:
        """Drop the owner's frames and markers; returns (frames dropped, checkpoint names dropped)."""
        kept: deque[Clip] = deque()
        dropped, names = 0, []
        for clip in self._clips:
            if clip.owner == owner:
                dropped += self._left(clip)
                names.extend(clip.checkpoints)
            else:
                kept.append(clip)
        self._clips = kept
        self._frames -= dropped
        self._checkpoints.pop(owner, None)
        return dropped, names

    def next_frame(self) -> Played | None:
        if not self._clips:
            return None
        clip = self._clips[0]
        start = clip.pos
        end = start + self.frame_size
        self._frames -= 1
        if end < len(clip.pcm):
            clip.pos = end
            return Played(clip.owner, clip.pcm[start:end], ())
        self._clips.popleft()
        if clip.checkpoints:
            self._count(clip.owner, -len(clip.checkpoints))
        return Played(clip.owner, clip.pcm[start:end], tuple(clip.checkpoints))


class Pacer:
    """Absolute-deadline 20 ms clock: frame k is due at t0 + k·period, for as long as audio plays.

    A frame a little late (up to `max_late`) is sent at once and the next ones follow
    back to back until the schedule is met again: a small burst a gateway's jitter buffer
    absorbs. After a longer stall the frames whose slots have passed are skipped (their
    audio is dropped) so that the schedule stays anchored: a stall never turns into
    permanent latency or drift.
    """

    __slots__ = ("late_frames", "max_late", "next_at", "period", "resyncs")

    def __init__(self, period: float = FRAME_SECONDS, max_late_frames: int = 3) -> None:
        self.period = period
        self.max_late = period * max_late_frames
        self.next_at: float | None = None
        self.resyncs = 0
        self.late_frames = 0

    def due_in(self, now: float) -> float:
        """Seconds until the next frame may leave (0 when due). Starts the clock when idle."""
        if self.next_at is None:
            self.next_at = now
        return max(0.0, self.next_at - now)

    def sent(self, now: float) -> int:
        """A frame left; schedule the next. Returns how many frames to skip after a stall."""
        assert self.next_at is not None
        self.next_at += self.period
        late = now - self.next_at
        if late <= self.max_late:
            return 0
        skip = int(late // self.period)
        self.next_at += skip * self.period
        self.resyncs += 1
        self.late_frames += skip
        return skip

    def idle(self) -> None:
        self.next_at = None
