"""What the simulator prints while a call runs: a redrawn bar on a terminal, lines otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from streams.simulator.wavio import progress_bar


class Console:
    """A redrawn progress bar on a terminal; a plain line per second of audio otherwise."""

    def __init__(self, out: TextIO, *, tty: bool, total: float) -> None:
        self.out, self.tty, self.total = out, tty, total
        self._bar = ""
        self._drawn_at = 0.0
        self._last_second = -1

    def line(self, text: str) -> None:
        if self.tty and self._bar:
            self.out.write("\r\x1b[2K")
        self.out.write(text + "\n")
        if self.tty and self._bar:
            self.out.write(self._bar)
        self.out.flush()

    def progress(self, position: float, played: float, *, force: bool = False) -> None:
        position = min(position, self.total)
        status = f"{position:5.1f} / {self.total:.1f} s streamed, {played:5.1f} s played back"
        if self.tty:
            now = time.monotonic()
            if force or now - self._drawn_at >= 0.1:
                self._drawn_at = now
                self._bar = f"{progress_bar(position, self.total)} {status}"
                self.out.write("\r\x1b[2K" + self._bar)
                self.out.flush()
        elif int(position) > self._last_second or force:
            self._last_second = int(position)
            self.out.write(f"  {status}\n")
            self.out.flush()

    def close_bar(self) -> None:
        if self.tty and self._bar:
            self.out.write("\n")
            self.out.flush()
            self._bar = ""
