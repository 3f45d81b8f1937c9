"""Micro-benchmark: what pacing playback costs per 20 ms frame, by how the frames are timed.

    .venv/bin/python bench/playback_timers.py [--calls 370] [--seconds 5] [--repeats 3]

A playing call sends one frame every 20 ms. The hub paces each call with its own task that
sleeps until the next frame is due (`CallSession._playback`: `asyncio.sleep`, then a send that
returns at once on the hub's frame extension). This measures the timing alone, with a send that
does nothing, for --calls calls on asyncio and on uvloop (the loop the README runs):
- sleep:  one task per call sleeping until its next frame (today's hub);
- call_at: one timer callback per call re-armed for its next frame (no task, no future);
- tick:   one process-wide timer that sends a frame for every call each 20 ms.
Prints this process's CPU (`time.process_time`) as % of a core and µs per frame, the best of
--repeats runs. What it leaves out (the frame's write to the socket, the queue, the pacer's
bookkeeping) is the same whichever way the frames are timed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

FRAME = 0.020


def send(frame: bytes) -> None:
    """Stands in for the frame extension's send: a call, no I/O."""


async def sleeping(loop: asyncio.AbstractEventLoop) -> None:
    due = loop.time()
    while True:
        due += FRAME
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        send(b"\0" * 320)


class Rearmed:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.due = loop, loop.time()
        self.handle = loop.call_at(self.due, self.tick)

    def tick(self) -> None:
        send(b"\0" * 320)
        self.due += FRAME
        self.handle = self.loop.call_at(self.due, self.tick)


class Tick:
    def __init__(self, loop: asyncio.AbstractEventLoop, calls: int) -> None:
        self.loop, self.calls, self.due = loop, calls, loop.time()
        self.handle = loop.call_at(self.due, self.tick)

    def tick(self) -> None:
        for _ in range(self.calls):
            send(b"\0" * 320)
        self.due += FRAME
        self.handle = self.loop.call_at(self.due, self.tick)


async def measure(mode: str, calls: int, seconds: float) -> float:
    """CPU seconds per second of this process while `calls` calls play, timed the `mode` way."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    handles: list[Rearmed | Tick] = []
    if mode == "sleep":
        tasks = [loop.create_task(sleeping(loop)) for _ in range(calls)]
    elif mode == "call_at":
        handles = [Rearmed(loop) for _ in range(calls)]
    else:
        handles = [Tick(loop, calls)]
    await asyncio.sleep(0.5)  # every call started
    before = time.process_time()
    await asyncio.sleep(seconds)
    used = (time.process_time() - before) / seconds
    for task in tasks:
        task.cancel()
    for handle in handles:
        handle.handle.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=370)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loops: dict[str, Callable[[Coroutine[Any, Any, float]], float]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}
    print(f"{args.calls} playing calls, {args.seconds:g} s, best of {args.repeats}")
    for name, run in loops.items():
        for mode in ("sleep", "call_at", "tick"):
            cpu = min(run(measure(mode, args.calls, args.seconds)) for _ in range(args.repeats))
            per_frame = cpu / (args.calls / FRAME) * 1e6
            print(f"  {name:8} {mode:8} {100 * cpu:5.1f} % of a core   {per_frame:5.2f} µs per frame")


if __name__ == "__main__":
    main()
