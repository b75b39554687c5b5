"""The flight recorder: the last N seconds of detailed events, in bounded memory.

A consumer of the pipeline: batches are kept as they come (time-ordered,
after the merge), with an estimate of their size; the oldest batches go when the window is
older than `seconds`, or the events exceed `max_events`, or the estimated
bytes exceed `max_bytes`. A snapshot is a time-ordered list ready to be
written before a capture's live events."""

from __future__ import annotations

import operator
import threading
import time
from collections import deque

from gpuscope.probes.events import CounterSample, Event, Instant, Span, StackSample

# Rough resident size of one event (slots object + args dict + small strings),
# measured with tracemalloc on real batches; strings in args are added on top.
BASE_BYTES = {Span: 360, Instant: 330, CounterSample: 120, StackSample: 200}
DEFAULT_BYTES = 150
FRAME_BYTES = 16  # frames are interned by the sampler; a tuple slot each

_ts = operator.attrgetter("ts")


def estimate(ev: Event) -> int:
    t = type(ev)
    n = BASE_BYTES.get(t, DEFAULT_BYTES)
    if type(ev) is Span or type(ev) is Instant:   # type(ev), not t: mypy narrows ev on it
        for v in ev.args.values():
            if type(v) is str:
                n += 50 + len(v)
    elif type(ev) is StackSample:
        n += FRAME_BYTES * len(ev.frames)
    return n


class FlightRecorder:
    def __init__(self, seconds: float = 60.0, max_events: int = 500_000,
                 max_bytes: int = 256 << 20):
        self.window_ns = int(seconds * 1e9)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._batches: deque[tuple[int, list[Event], int]] = deque()  # (newest ts, batch, bytes)
        self.events = 0
        self.bytes = 0
        self.evicted = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.window_ns > 0 and self.max_events > 0 and self.max_bytes > 0

    def add(self, batch: list[Event], now_ns: int) -> None:
        if not batch or not self.enabled:
            return
        newest = max(map(_ts, batch))
        size = sum(map(estimate, batch))
        with self._lock:
            self._batches.append((newest, batch, size))
            self.events += len(batch)
            self.bytes += size
            self._trim(now_ns)

    def feed(self, batch: list[Event]) -> None:
        self.add(batch, time.monotonic_ns())

    def close(self) -> None:
        """The window stays readable: the pipeline closes its consumers on stop."""

    def _trim(self, now_ns: int) -> None:
        horizon = now_ns - self.window_ns
        b = self._batches
        while b and (b[0][0] < horizon or self.events > self.max_events
                     or self.bytes > self.max_bytes):
            _, batch, size = b.popleft()
            self.events -= len(batch)
            self.bytes -= size
            self.evicted += len(batch)

    def oldest_ns(self) -> int | None:
        with self._lock:
            if not self._batches:
                return None
            return min(min(map(_ts, batch)) for _, batch, _ in list(self._batches)[:4])

    def snapshot(self, now_ns: int) -> list[Event]:
        """Every kept event of the window, oldest first."""
        with self._lock:
            self._trim(now_ns)
            horizon = now_ns - self.window_ns
            out = [ev for _, batch, _ in self._batches for ev in batch if ev.ts >= horizon]
        out.sort(key=_ts)
        return out
