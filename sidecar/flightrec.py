"""The flight recorder: the last N seconds of detailed events, in bounded memory.

A consumer of the pipeline: each batch (time-ordered, after the merge) is kept
encoded, as one marshal blob of plain tuples (a type tag per event, the spans'
fields as rows of their own), not as event objects. Measured on
bench_sidecar's stream: about 110 bytes per event held instead of about 550
(objects, argument dicts, strings), and nothing for Python's garbage collector
to walk (a 60 s window at 5k events/s was a million tracked objects, traversed
by every full collection). Encoding is C loops but for the rare non-span event
(map/compress to tuples, then marshal); a snapshot decodes back to equal events,
which only a capture does. zlib would cut the bytes ten-fold but doubled the
encoding's CPU, the scarcer of the two here.

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
from collections import deque
from collections.abc import Iterator
from itertools import compress, repeat, starmap

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

BLOB_OVERHEAD = 120  # a bytes object and its deque entry

_ts = operator.attrgetter("ts")
_SPAN = operator.attrgetter("cat", "name", "pid", "tid", "start", "end", "args")
_GETTERS = {Instant: operator.attrgetter("cat", "name", "pid", "tid", "ts", "args"),
            CounterSample: operator.attrgetter("track", "unit", "ts", "value", "pid"),
            ThreadName: operator.attrgetter("pid", "tid", "ts", "name", "is_process"),
            Loss: operator.attrgetter("source", "ts", "count", "reason")}
_FRAME = operator.attrgetter("function", "file", "line")
# One tag byte per event says its type; spans (most events) are rows of their own, so
# that the whole batch is turned into tuples by C loops (map, compress), not Python.
_CLASSES = (Span, Instant, CounterSample, StackSample, ThreadName, Loss)
_TAGS = {cls: i for i, cls in enumerate(_CLASSES)}


def encode(batch: list[Event]) -> bytes:
    """One batch as bytes: marshal (C, exact for str/int/float/bool/dict/tuple), or
    pickle if some argument is of another type."""
    types = list(map(type, batch))
    tags = bytes(map(_TAGS.__getitem__, types))
    spans = list(map(_SPAN, compress(batch, map(operator.is_, types, repeat(Span)))))
    others: list[tuple] = []
    if len(spans) < len(batch):
        for ev in compress(batch, map(operator.is_not, types, repeat(Span))):
            if type(ev) is StackSample:
                others.append((ev.pid, ev.tid, ev.ts, ev.state, ev.gil,
                               tuple(map(_FRAME, ev.frames))))
            else:
                others.append(_GETTERS[type(ev)](ev))
    doc = (tags, spans, others)
    try:
        return b"m" + marshal.dumps(doc)
    except ValueError:   # an argument marshal cannot write
        return b"p" + pickle.dumps(doc, pickle.HIGHEST_PROTOCOL)


def decode(blob: bytes, frames: dict[tuple, Frame] | None = None) -> list[Event]:
    """The events of one blob; `frames` shares Frame objects across blobs."""
    raw = memoryview(blob)[1:]
    tags, spans, others = marshal.loads(raw) if blob[:1] == b"m" else pickle.loads(raw)
    frames = {} if frames is None else frames
    if not others:
        return list(starmap(Span, spans))
    out: list[Event] = []
    add = out.append
    next_span, next_other = iter(spans).__next__, iter(others).__next__
    for tag in tags:
        if tag == 0:
            add(Span(*next_span()))
            continue
        r = next_other()
        if tag == 3:
            fs = []
            for f in r[5]:
                fr = frames.get(f)
                if fr is None:
                    fr = frames[f] = Frame(*f)
                fs.append(fr)
            add(StackSample(r[0], r[1], r[2], r[3], r[4], tuple(fs)))
        else:
            add(_CLASSES[tag](*r))
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
        later: list[int | None] = [None] * len(kept)   # the oldest event of all later batches
        low: int | None = None
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
