"""The per-stream send buffer (decisions D6, D7). Pure: no sockets, no clock (time is passed in).

Everything the hub sends a customer waits here, in order, until the writer hands it
to the socket. It is measured in seconds of call audio: a `both` stream's two track
messages for one 20 ms tick count 20 ms together.

- Crossing 30/60/90 % upwards yields Degraded(pct). A threshold that fired re-arms
  only once usage has fallen `rearm_points` points of capacity below it (30 % re-arms
  below 20 %), and fires at most once per `min_interval` seconds: a customer that
  holds its backlog near a threshold gets one notice, not one per frame.
- Going over capacity yields Overflow, and the relay drops the stream. So does going
  over `max_items` messages: non-media messages (dtmf, playedStream, clearedAudio)
  weigh no audio time, and without an item bound a customer that never reads could
  make them pile up without limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

THRESHOLDS = (30, 60, 90)
REARM_POINTS = 10
MIN_INTERVAL_SECONDS = 30.0
FRAME_SECONDS = 0.020
# Non-media messages allowed on top of a full buffer of audio (two track messages per 20 ms).
EXTRA_ITEMS = 1000


def default_max_items(capacity_seconds: float) -> int:
    """A full buffer of `both`-track audio plus EXTRA_ITEMS other messages."""
    return 2 * round(capacity_seconds / FRAME_SECONDS) + EXTRA_ITEMS


@dataclass(frozen=True)
class Degraded:
    usage: int


@dataclass(frozen=True)
class Overflow:
    queued_seconds: float
    items: int = 0


BufferEvent = Degraded | Overflow


class SendBuffer:
    __slots__ = (
        "_armed",
        "_fired_at",
        "_level",
        "_rearm",
        "capacity",
        "items",
        "max_items",
        "min_interval",
        "queued",
        "thresholds",
    )

    def __init__(
        self,
        capacity_seconds: float,
        thresholds: tuple[int, ...] = THRESHOLDS,
        *,
        rearm_points: int = REARM_POINTS,
        min_interval: float = MIN_INTERVAL_SECONDS,
        max_items: int | None = None,
    ) -> None:
        if capacity_seconds <= 0:
            raise ValueError("capacity must be positive")
        if rearm_points < 0 or min_interval < 0:
            raise ValueError("rearm_points and min_interval must not be negative")
        self.capacity = capacity_seconds
        self.thresholds = thresholds
        self.min_interval = min_interval
        self.max_items = default_max_items(capacity_seconds) if max_items is None else max_items
        if self.max_items < 1:
            raise ValueError("max_items must be positive")
        # (message, seconds of audio): read-only outside this class; the relay's hot path tests
        # `buffer.items` rather than calling __len__ per frame
        self.items: deque[tuple[str, float]] = deque()
        self.queued = 0.0
        self._armed = set(thresholds)
        self._level = [capacity_seconds * t / 100 for t in thresholds]
        # strictly below (pct - rearm_points) % of capacity; a threshold at or under rearm_points re-arms empty
        self._rearm = [
            capacity_seconds * (t - rearm_points) / 100 - 1e-9 if t > rearm_points else 1e-9 for t in thresholds
        ]
        self._fired_at: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def usage_pct(self) -> float:
        return 100.0 * self.queued / self.capacity

    def push(self, item: str, seconds: float, now: float) -> list[BufferEvent]:
        """Queue a message weighing `seconds` of audio at monotonic time `now`."""
        items = self.items
        items.append((item, seconds))
        self.queued += seconds
        if len(items) > self.max_items:
            return [Overflow(self.queued, len(items))]
        if seconds == 0 or self.queued < self._level[0]:
            return []
        events: list[BufferEvent] = []
        for pct, level in zip(self.thresholds, self._level, strict=True):
            if pct in self._armed and self.queued >= level - 1e-9:
                last = self._fired_at.get(pct)
                if last is not None and now - last < self.min_interval:
                    continue  # stays armed: it fires once the interval has passed, if still above
                self._armed.discard(pct)
                self._fired_at[pct] = now
                events.append(Degraded(pct))
        if self.queued > self.capacity + 1e-9:
            events.append(Overflow(self.queued, len(items)))
        return events

    def popleft(self) -> str:
        item, seconds = self.items.popleft()
        if seconds:
            self.queued = max(0.0, self.queued - seconds)
            if len(self._armed) != len(self.thresholds):
                for pct, level in zip(self.thresholds, self._rearm, strict=True):
                    if self.queued < level:
                        self._armed.add(pct)
        return item

    def clear(self) -> None:
        self.items.clear()
        self.queued = 0.0
        self._armed = set(self.thresholds)
