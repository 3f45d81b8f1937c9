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
the stall, not the last tick before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

TICK = 0.1


class LoopLag:
    """The last measured lag and the time the next tick is due; the clock is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = 0.0
        self.due: float | None = None  # None: no ticker running (e.g. a worker process)
        self.observers: list[Callable[[float], None]] = []

    def tick_started(self, interval: float) -> None:
        self.due = self.clock() + interval

    def tick_done(self) -> float:
        """The ticker woke: record how late it is, tell the observers (the histogram)."""
        now = self.clock()
        lag = max(0.0, now - self.due) if self.due is not None else 0.0
        self.last = lag
        for observe in self.observers:
            observe(lag)
        return lag

    def current(self) -> float:
        """Seconds: the last tick's lag, or how overdue the pending tick is if that is more."""
        if self.due is None:
            return self.last
        return max(self.last, self.clock() - self.due)


lag = LoopLag()
_task: asyncio.Task[None] | None = None


def current_lag() -> float:
    return lag.current()


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
