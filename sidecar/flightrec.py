"""The flight recorder: the last N seconds of detailed events, in bounded memory.

A consumer of the pipeline: each batch (time-ordered, after the merge) is kept
encoded, as one zlib-compressed marshal blob of plain tuples, not as event
objects. Measured on bench_sidecar's stream: about 12 bytes per event held
instead of about 550 (objects, argument dicts, strings), and nothing for
Python's garbage collector to walk (a 60 s window at 5k events/s was a million
tracked objects, traversed by every full collection). Encoding costs about 1 µs
per event; a snapshot decodes back to events exactly (about 1.2 µs per event),
which only a capture does.

The oldest batches go when the window is older than `seconds`, or the events
exceed `max_events`, or the bytes held exceed `max_bytes`; what the bounds drop
is counted (`dropped`, and `evicted` for everything that left). A snapshot is a
time-ordered list of events, ready to be written before a capture's live ones."""

from __future__ import annotations

import bisect
import marshal
import operator
import pickle
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator

from gpuscope.probes.events import (
    CounterSample,
    Event,
    Frame,
    Instant,
    Loss,
    Span,
    StackSample,
    ThreadName,
)

LEVEL = 1          # zlib: level 1 already gives ~10x on these batches, at a third of the cost
BLOB_OVERHEAD = 120  # a bytes object and its deque entry

_ts = operator.attrgetter("ts")
_SPAN = operator.attrgetter("cat", "name", "pid", "tid", "start", "end", "args")
_INSTANT = operator.attrgetter("cat", "name", "pid", "tid", "ts", "args")
_COUNTER = operator.attrgetter("track", "unit", "ts", "value", "pid")
_NAME = operator.attrgetter("pid", "tid", "ts", "name", "is_process")
_LOSS = operator.attrgetter("source", "ts", "count", "reason")
_FRAME = operator.attrgetter("function", "file", "line")
# Row tags: a row is (tag, *fields); StackSample frames become (function, file, line).
_TAGS = {Span: 0, Instant: 1, CounterSample: 2, StackSample: 3, ThreadName: 4, Loss: 5}
_CLASSES = (Span, Instant, CounterSample, StackSample, ThreadName, Loss)


def encode(batch: list[Event]) -> bytes:
    """One batch as bytes: marshal (C, exact for str/int/float/bool/dict/tuple), or
    pickle if some argument is of another type; then zlib."""
    rows: list[tuple] = []
    add = rows.append
    for ev in batch:
        t = type(ev)
        if t is Span:
            add((0, *_SPAN(ev)))
        elif t is StackSample:
            add((3, ev.pid, ev.tid, ev.ts, ev.state, ev.gil, tuple(map(_FRAME, ev.frames))))
        elif t is Instant:
            add((1, *_INSTANT(ev)))
        elif t is CounterSample:
            add((2, *_COUNTER(ev)))
        elif t is ThreadName:
            add((4, *_NAME(ev)))
        elif t is Loss:
            add((5, *_LOSS(ev)))
    try:
        return b"m" + zlib.compress(marshal.dumps(rows), LEVEL)
    except ValueError:   # an argument marshal cannot write
        return b"p" + zlib.compress(pickle.dumps(rows, pickle.HIGHEST_PROTOCOL), LEVEL)


def decode(blob: bytes, frames: dict[tuple, Frame] | None = None) -> list[Event]:
    """The events of one blob; `frames` shares Frame objects across blobs."""
    raw = zlib.decompress(memoryview(blob)[1:])
    rows = marshal.loads(raw) if blob[:1] == b"m" else pickle.loads(raw)
    frames = {} if frames is None else frames
    out: list[Event] = []
    add = out.append
    for r in rows:
        tag = r[0]
        if tag == 0:
            add(Span(*r[1:]))
        elif tag == 3:
            fs = []
            for f in r[6]:
                fr = frames.get(f)
                if fr is None:
                    fr = frames[f] = Frame(*f)
                fs.append(fr)
            add(StackSample(r[1], r[2], r[3], r[4], r[5], tuple(fs)))
        else:
            add(_CLASSES[tag](*r[1:]))
    return out


class FlightRecorder:
    def __init__(self, seconds: float = 60.0, max_events: int = 500_000,
                 max_bytes: int = 256 << 20):
        self.window_ns = int(seconds * 1e9)
        self.max_events = max_events
        self.max_bytes = max_bytes
        # (oldest ts, newest ts, events, blob)
        self._batches: deque[tuple[int, int, int, bytes]] = deque()
        self.events = 0
        self.bytes = 0
        self.evicted = 0    # events that left the window, for any reason
        self.dropped = 0    # ... because of max_events or max_bytes, while still in the window
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.window_ns > 0 and self.max_events > 0 and self.max_bytes > 0

    def add(self, batch: list[Event], now_ns: int) -> None:
        if not batch or not self.enabled:
            return
        stamps = list(map(_ts, batch))
        blob = encode(batch)
        entry = (min(stamps), max(stamps), len(batch), blob)
        with self._lock:
            self._batches.append(entry)
            self.events += len(batch)
            self.bytes += len(blob) + BLOB_OVERHEAD
            self._trim(now_ns)

    def feed(self, batch: list[Event]) -> None:
        self.add(batch, time.monotonic_ns())

    def close(self) -> None:
        """The window stays readable: the pipeline closes its consumers on stop."""

    def _trim(self, now_ns: int) -> None:
        horizon = now_ns - self.window_ns
        b = self._batches
        while b and (b[0][1] < horizon or self.events > self.max_events
                     or self.bytes > self.max_bytes):
            _, newest, n, blob = b.popleft()
            self.events -= n
            self.bytes -= len(blob) + BLOB_OVERHEAD
            self.evicted += n
            if newest >= horizon:
                self.dropped += n

    def oldest_ns(self) -> int | None:
        with self._lock:
            if not self._batches:
                return None
            return min(e[0] for e in list(self._batches)[:4])

    def chunks(self, now_ns: int) -> Iterator[list[Event]]:
        """Every kept event of the window, oldest first, a batch or so at a time: only
        the batches whose times overlap are decoded together, so a capture replaying
        the window holds about one batch of event objects, not the whole window."""
        with self._lock:
            self._trim(now_ns)
            kept = list(self._batches)
        horizon = now_ns - self.window_ns
        later = [0] * len(kept)          # the oldest event of every later batch
        low = None
        for i in range(len(kept) - 1, -1, -1):
            later[i] = low
            low = kept[i][0] if low is None else min(low, kept[i][0])
        frames: dict[tuple, Frame] = {}
        pending: list[Event] = []
        for (_, _, _, blob), limit in zip(kept, later, strict=True):
            pending += [ev for ev in decode(blob, frames) if ev.ts >= horizon]
            pending.sort(key=_ts)
            cut = len(pending) if limit is None else bisect.bisect_left(pending, limit, key=_ts)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
        if pending:
            yield pending

    def snapshot(self, now_ns: int) -> list[Event]:
        """Every kept event of the window, oldest first."""
        return [ev for chunk in self.chunks(now_ns) for ev in chunk]
