"""Reads a finished gpuscope trace back into events, in the order they were
written, so the stall analysis can be re-run on it (`gpuscope report`).
Decoding is tracereader's; this only maps its records onto events."""

from __future__ import annotations

import os

from gpuscope.probes.events import CounterSample, Instant, Span, StackSample, ThreadName
from gpuscope.probes.summed import TITLES

from .tracereader import BEGIN, COUNTER, END, INSTANT, TRACK, TraceError, read, read_chunks

__all__ = ["TraceError", "events", "target_pid", "truncation"]

# Track titles (timeline.CATEGORY_TITLE) back to event categories.
# The summed tracks too: the analysis counts their preempted time, and a
# report that skipped them would not give the live verdict.
_CATS = {"IO": "io", "Off-CPU": "sched", "CUDA": "cuda", "NCCL": "nccl", "PyTorch": "torch",
         **{title: cat for cat, title in TITLES.items()}}


def events(path: str, seen: dict | None = None):
    """Yields the analysable events of a trace (spans, samples, names, process
    instants, counters: the sampling rate the budget set, GPU counters) in
    file order, so that the analysis gives the live capture's verdict. `seen`, if given, is filled with how far the
    whole records went ("end", bytes) and how many slices never ended
    ("open"): a finished capture ends every slice it began."""
    tracks: dict = {}
    threads: dict[int, tuple[int, int]] = {}
    procs: dict[int, int] = {}
    open_: dict[int, list] = {}
    if seen is not None:
        seen.update(end=0, open=0)
    for end, recs in read(path):
        if seen is not None:
            seen["end"] = end
        for r in recs:
            kind = r[0]
            if kind == END:
                stack = open_.get(r[2])
                if stack:
                    span = stack.pop()
                    if span is not None:
                        span.end = r[1]
                        yield span
            elif kind == BEGIN:
                _, ts, tr, name, args = r
                track = tracks.get(tr)
                owner = track and (threads.get(track.parent) or threads.get(tr))
                cat = _CATS.get(track.name) if track else None
                open_.setdefault(tr, []).append(
                    Span(cat, name, owner[0], owner[1], ts, 0, dict(args or ()))
                    if cat and owner else None)
            elif kind == INSTANT:
                _, ts, tr, name, args, stack = r
                track = tracks.get(tr)
                if track is None:
                    continue
                owner = threads.get(track.parent) or threads.get(tr)
                if stack is not None and owner:
                    state, _, gil = name.partition(" +")
                    yield StackSample(owner[0], owner[1], ts, state, gil == "GIL", stack)
                elif tr in procs or owner:
                    pid = procs.get(tr) or (owner[0] if owner else 0)
                    yield Instant("proc", name, pid, owner[1] if owner else 0, ts,
                                  dict(args or ()))
            elif kind == COUNTER:
                _, ts, tr, value = r
                track = tracks.get(tr)
                if track is not None:
                    yield CounterSample(track.name, track.unit, ts, value, procs.get(track.parent, 0))
            elif kind == TRACK:
                t = r[1]
                tracks[t.uuid] = t
                if t.kind == "thread":
                    threads[t.uuid] = (t.pid, t.tid)
                    yield ThreadName(t.pid, t.tid, 0, t.name)
                elif t.kind == "process":
                    procs[t.uuid] = t.pid
    if seen is not None:
        seen["open"] = sum(len(v) for v in open_.values())


def truncation(path: str, seen: dict, summary: dict | None) -> str | None:
    """Why the trace is not the whole capture, if it is not: a torn last
    record, the summary's own size or stop reason, slices left open."""
    size = os.path.getsize(path)
    if seen["end"] < size:
        return f"its last record is cut off at byte {seen['end']} of {size}"
    if summary:
        if summary.get("stop_reason") == "trace not writable":
            return "the capture could not write all of it (" + "; ".join(
                n for n in summary.get("notices", []) if "cannot write" in n or "deleted" in n
            ) + ")"
        if isinstance(summary.get("trace_bytes"), int) and summary["trace_bytes"] > size:
            return f"it holds {size} of the {summary['trace_bytes']} bytes its summary counts"
    if seen["open"]:
        return (f"{seen['open']} slice(s) never ended: the capture did not finish "
                "(killed, or its disk filled up)")
    return None


def target_pid(path: str) -> int | None:
    """The attached process: the first process track written."""
    for _, packets in read_chunks(path, 0, 256 << 10):
        for p in packets:
            if p.HasField("track_descriptor") and p.track_descriptor.HasField("process"):
                return p.track_descriptor.process.pid
    return None
