"""Event-loop lag of this hub process: how late the loop runs a callback that was due.

A ticker task sleeps TICK seconds on the loop and measures how much later than asked it
woke up. On an idle hub that is well under a millisecond; a loop that is saturated (too
many calls, a blocking call on the loop, a long garbage collection) wakes it late, and
that delay is what every audio frame of every call waits too. It is the first sign of
an overloaded hub: /readyz turns not ready past STREAMHUB_READY_MAX_LOOP_LAG_SECONDS,
/metrics has its histogram, and `current_lag()` is there for any other code that wants
the figure (an admission guard, for one).

`current_lag()` is also honest while the loop is blocked: a tick that is overdue counts
as lag up to now, so a thread asking during a stall (the /readyz view runs in one) sees
the stall, not the last tick before it. `sustained_lag()` is what readiness uses: the
median of the last second's ticks (or a stall going on now), so one late tick (a garbage
collection, the first request importing the URL configuration) does not take a process
out of the balancer, while an overloaded loop, late on every tick, does.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable

TICK = 0.1
RECENT_TICKS = 10  # one second of ticks
MIN_TICKS = 3  # fewer: not enough to call a lag sustained


class LoopLag:
    """The last measured lag and the time the next tick is due; the clock is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = 0.0
        self.due: float | None = None  # when the pending tick is due; None: no tick pending (or no ticker)
        self.observers: list[Callable[[float], None]] = []
        self.recent: deque[float] = deque(maxlen=RECENT_TICKS)

    def tick_started(self, interval: float) -> None:
        self.due = self.clock() + interval

    def tick_done(self) -> float:
        """The ticker woke: record how late it is, tell the observers (the histogram)."""
        now = self.clock()
        lag = max(0.0, now - self.due) if self.due is not None else 0.0
        self.due = None
        self.last = lag
        self.recent.append(lag)
        for observe in self.observers:
            observe(lag)
        return lag

    def current(self) -> float:
        """Seconds: the last tick's lag, or how overdue the pending tick is if that is more."""
        due = self.due  # read once: the ticker changes it on the loop while /readyz asks from a thread
        if due is None:
            return self.last
        return max(self.last, self.clock() - due)

    def sustained(self) -> float:
        """Seconds: the median lag of the last RECENT_TICKS ticks, or the stall going on now if longer."""
        due = self.due
        overdue = max(0.0, self.clock() - due) if due is not None else 0.0
        if len(self.recent) < MIN_TICKS:
            return overdue
        return max(overdue, statistics.median(self.recent))


lag = LoopLag()
_task: asyncio.Task[None] | None = None


def current_lag() -> float:
    return lag.current()


def sustained_lag() -> float:
    return lag.sustained()


async def _ticker(interval: float) -> None:
    while True:
        lag.tick_started(interval)
        await asyncio.sleep(interval)
        lag.tick_done()


def ensure_ticker(interval: float = TICK) -> None:
    """Start the ticker on the running loop once (a hub process calls this on its first connection)."""
    global _task
    if _task is not None and not _task.done():
        return
    _task = asyncio.get_running_loop().create_task(_ticker(interval), name="loop-lag-ticker")
