"""Turns sampled Python stacks into the timeline's "Python" tracks, and
attributes probe slices (IO, CUDA, off-CPU) to the Python line that was
running on their thread at the time."""

from __future__ import annotations

import bisect
from collections import deque

from gpuscope.probes.events import Frame, Span, StackSample

HISTORY_NS = 5_000_000_000   # how far back attribution looks


def sample_label(s: StackSample) -> str:
    """The sample's name in the trace: its thread state, read back by replay."""
    return s.state + (" +GIL" if s.gil else "")


def frame_label(f: Frame) -> str:
    return f"{f.function} ({f.file}:{f.line})"


class PythonTracks:
    """Per thread, a frame is one slice for as long as it stays on the stack
    in consecutive samples (identity: function and file; the line where it
    was first seen is an argument)."""

    def __init__(self, timeline, max_gap_ns: int = 1_000_000_000):
        self.timeline = timeline
        self.open: dict[int, list[tuple[Frame, int]]] = {}   # tid -> [(frame, track)]
        self.last_ts: dict[int, int] = {}
        self.max_gap_ns = max_gap_ns
        self.samples = 0

    def add(self, s: StackSample) -> None:
        self.samples += 1
        w = self.timeline.w
        stack = self.open.setdefault(s.tid, [])
        last = self.last_ts.get(s.tid)
        if last is not None and s.ts - last > self.max_gap_ns:
            self._close(s.tid, last)  # a long gap: don't claim the thread stayed there
            stack = self.open.setdefault(s.tid, [])
        keep = 0
        for (f, _), g in zip(stack, s.frames, strict=False):
            if (f.function, f.file) != (g.function, g.file):
                break
            keep += 1
        track = self.timeline.child(s.pid, s.tid, "python")
        end_ts = s.ts
        while len(stack) > keep:
            _, t = stack.pop()
            w.end(t, end_ts)
        for g in s.frames[keep:]:
            w.begin(track, s.ts, g.function, {"file": g.file, "line": g.line})
            stack.append((g, track))
        self.last_ts[s.tid] = s.ts
        w.sample(self.timeline.child(s.pid, s.tid, "pysamples"), s.ts, sample_label(s), s.frames)

    def _close(self, tid: int, ts: int) -> None:
        for _, t in reversed(self.open.pop(tid, [])):
            self.timeline.w.end(t, ts)

    def close(self) -> None:
        for tid in list(self.open):
            self._close(tid, self.last_ts.get(tid, 0))

    def thread_exited(self, tid: int, ts: int) -> None:
        if tid in self.open:
            self._close(tid, max(ts, self.last_ts.get(tid, ts)))


class Attribution:
    """Remembers recent samples per thread (fed at ingest, ahead of writing)
    and names the Python line behind a slice: the innermost frame of a
    sample taken during the slice, else of the last one before it."""

    def __init__(self, max_age_ns: int = 250_000_000):
        self.hist: dict[int, deque[tuple[int, Frame]]] = {}
        self.max_age_ns = max_age_ns
        # id(frame) -> (frame, its label): made once per frame, not once per slice (the
        # sampler shares Frame objects; the frame is kept so its id is not reused)
        self._labels: dict[int, tuple[Frame, str]] = {}

    def remember(self, s: StackSample) -> None:
        if not s.frames:
            return
        h = self.hist.setdefault(s.tid, deque())
        h.append((s.ts, s.frames[-1]))
        while h and s.ts - h[0][0] > HISTORY_NS:
            h.popleft()

    def frame_for(self, span: Span) -> Frame | None:
        h = self.hist.get(span.tid)
        if not h:
            return None
        # (start,) sorts before every (ts, frame) with ts >= start: no key function needed
        i = bisect.bisect_left(h, (span.start,))
        if i < len(h) and h[i][0] <= span.end:
            return h[i][1]
        if i > 0 and span.start - h[i - 1][0] <= self.max_age_ns:
            return h[i - 1][1]
        return None

    def annotate(self, span: Span) -> None:
        f = self.frame_for(span)
        if f is not None:
            got = self._labels.get(id(f))
            if got is None:
                if len(self._labels) >= 65536:
                    self._labels.clear()
                got = self._labels[id(f)] = (f, frame_label(f))
            span.args["py"] = got[1]
