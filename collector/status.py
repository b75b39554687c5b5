"""The live status line on stderr: elapsed, events/s per source, processes
followed, losses. Redrawn in place on a terminal, one line every few
seconds otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time


class StatusLine:
    def __init__(self, stream=None, every_s: float = 1.0, plain_every_s: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if self.tty else plain_every_s
        self.last = 0.0
        self.prev: dict[str, int] = {}
        self.prev_t = time.monotonic()
        self.shown = False

    def update(self, counts: dict[str, int], elapsed_s: float, processes: int,
               lost: int, overhead: str = "") -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        counts = dict(counts)
        dt = max(now - self.prev_t, 1e-6)
        rates = " ".join(f"{k} {int((v - self.prev.get(k, 0)) / dt)}/s"
                         for k, v in sorted(counts.items()))
        self.prev, self.prev_t = counts, now
        line = (f"gpuscope {elapsed_s:6.1f}s | {rates or 'no events yet'} | "
                f"{processes} proc | lost {lost}" + (f" | {overhead}" if overhead else ""))
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
