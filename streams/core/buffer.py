"""The per-stream send buffer (decisions D6, D7). Pure: no sockets, no clock.

Everything the hub sends a customer waits here, in order, until the writer hands it
to the socket. It is measured in seconds of call audio: a `both` stream's two track
messages for one 20 ms tick count 20 ms together. Crossing 30/60/90 % upwards yields
Degraded(pct) once per crossing (re-armed when usage falls back below that level);
going over capacity yields Overflow, and the relay drops the stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

THRESHOLDS = (30, 60, 90)


@dataclass(frozen=True)
class Degraded:
    usage: int


@dataclass(frozen=True)
class Overflow:
    queued_seconds: float


BufferEvent = Degraded | Overflow


class SendBuffer:
    __slots__ = ("_armed", "_level", "capacity", "items", "queued", "thresholds")

    def __init__(self, capacity_seconds: float, thresholds: tuple[int, ...] = THRESHOLDS) -> None:
        if capacity_seconds <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity_seconds
        self.thresholds = thresholds
        # (message, seconds of audio): read-only outside this class; the relay's hot path tests
        # `buffer.items` rather than calling __len__ per frame
        self.items: deque[tuple[str, float]] = deque()
        self.queued = 0.0
        self._armed = set(thresholds)
        self._level = [capacity_seconds * t / 100 for t in thresholds]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def usage_pct(self) -> float:
        return 100.0 * self.queued / self.capacity

    def push(self, item: str, seconds: float) -> list[BufferEvent]:
        self.items.append((item, seconds))
        self.queued += seconds
        if seconds == 0 or self.queued < self._level[0]:
            return []
        events: list[BufferEvent] = []
        for pct, level in zip(self.thresholds, self._level, strict=True):
            if pct in self._armed and self.queued >= level - 1e-9:
                self._armed.discard(pct)
                events.append(Degraded(pct))
        if self.queued > self.capacity + 1e-9:
            events.append(Overflow(self.queued))
        return events

    def popleft(self) -> str:
        item, seconds = self.items.popleft()
        if seconds:
            self.queued = max(0.0, self.queued - seconds)
            if len(self._armed) != len(self.thresholds):
                for pct, level in zip(self.thresholds, self._level, strict=True):
                    if self.queued < level:
                        self._armed.add(pct)
        return item

    def clear(self) -> None:
        self.items.clear()
        self.queued = 0.0
        self._armed = set(self.thresholds)
