"""The viewer's index of a capture, written by the collector while it writes
the trace, so that opening a capture gpuscope made needs no indexing at all.

IndexedWriter stands in for the TraceWriter: every track and event goes to
the trace as before and, as a tracereader record, to an IndexWriter (the
same code that indexes a trace read from disk, so the two indexes agree).
Records are only queued per event; they are written, in one transaction,
when the trace is flushed, and the index then covers exactly the bytes the
trace file holds. At close the index is marked complete; the viewer uses a
complete index whose trace still has that size and those first bytes, or an
unfinished one while its writer is alive, and otherwise indexes the trace
itself. The index never harms the capture: if it cannot be written it is
dropped (`index_error` says why) and the trace goes on."""

from __future__ import annotations

import os
import sqlite3

from .perfetto import TraceWriter
from .traceindex import IndexWriter, connect
from .tracereader import BEGIN, CLOCK, COUNTER, END, INSTANT, SLICE, TRACK, Track, read_head

INDEX_DIR = ".gpuscope-index"
TRACE_EXT = ".pftrace"


def index_path(trace_path: str) -> str:
    """Where the viewer looks for a trace's index: DIR/.gpuscope-index/NAME.sqlite."""
    d, base = os.path.split(os.path.abspath(trace_path))
    name = base[: -len(TRACE_EXT)] if base.endswith(TRACE_EXT) else base
    return os.path.join(d, INDEX_DIR, name + ".sqlite")


class IndexedWriter:
    """A TraceWriter that also writes the live index (anything else is the writer's)."""

    def __init__(self, writer: TraceWriter, path: str | None = None):
        self.w = writer
        self.index_path = path or index_path(writer.path)
        self.index_error: str | None = None
        self.recs: list[tuple] = []
        self._add = self.recs.append
        self.ix: IndexWriter | None = None
        try:
            os.makedirs(os.path.dirname(self.index_path), exist_ok=True)
            self.ix = IndexWriter(connect(self.index_path))
            self.ix.reset()
            self.ix.meta.update(live=1, complete=0, writer_pid=os.getpid())
            self.ix.save_meta()
            self.ix.db.commit()
        except (OSError, sqlite3.Error) as e:
            self._drop(e)

    @classmethod
    def for_trace(cls, path: str, **kw) -> IndexedWriter:
        """A new trace at path (TraceWriter's arguments) with its live index."""
        return cls(TraceWriter(path, **kw))

    def __getattr__(self, name):
        return getattr(self.w, name)

    # -- tracks ----------------------------------------------------------------
    def process_track(self, uuid: int, pid: int, name: str, cmdline=()) -> None:
        self.w.process_track(uuid, pid, name, cmdline)
        self._add((TRACK, Track(uuid, 0, "process", name or f"pid {pid}", pid)))

    def thread_track(self, uuid: int, pid: int, tid: int, name: str) -> None:
        self.w.thread_track(uuid, pid, tid, name)
        self._add((TRACK, Track(uuid, 0, "thread", name or f"tid {tid}", pid, tid)))

    def named_track(self, uuid: int, name: str) -> None:
        self.w.named_track(uuid, name)
        self._add((TRACK, Track(uuid, 0, "global", name)))

    def child_track(self, uuid: int, parent: int, name: str, rank: int = 0) -> None:
        self.w.child_track(uuid, parent, name, rank)
        self._add((TRACK, Track(uuid, parent, "child" if parent else "global", name, rank=rank)))

    def counter_track(self, uuid: int, name: str, unit: str, parent: int = 0) -> None:
        self.w.counter_track(uuid, name, unit, parent)
        self._add((TRACK, Track(uuid, parent, "counter", name, unit=unit)))

    # -- events ----------------------------------------------------------------
    def begin(self, track: int, ts: int, name: str, args: dict | None = None) -> None:
        self.w.begin(track, ts, name, args)
        self._add((BEGIN, ts, track, name, tuple(args.items()) if args else None))

    def end(self, track: int, ts: int) -> None:
        self.w.end(track, ts)
        self._add((END, ts, track))

    def slice(self, track: int, start: int, end: int, name: str, args: dict | None = None) -> None:
        self.w.slice(track, start, end, name, args)
        # args as is (the dict): the record is consumed at the next flush, in this feed
        self._add((SLICE, start, track, name, args or None, end))

    def instant(self, track: int, ts: int, name: str, args: dict | None = None) -> None:
        self.w.instant(track, ts, name, args)
        self._add((INSTANT, ts, track, name, tuple(args.items()) if args else None, None))

    def sample(self, track: int, ts: int, name: str, frames) -> None:
        self.w.sample(track, ts, name, frames)
        self._add((INSTANT, ts, track, name, None, ()))

    def counter(self, track: int, ts: int, value: float) -> None:
        self.w.counter(track, ts, value)
        self._add((COUNTER, ts, track, float(value)))

    # -- flushing ----------------------------------------------------------------
    def maybe_flush(self) -> None:
        n = self.w.bytes_written
        self.w.maybe_flush()
        if self.w.bytes_written != n:
            self._commit()

    def flush(self) -> None:
        self.w.flush()
        self._commit()

    def close(self) -> None:
        try:
            self.w.close()
        finally:
            if self.w.error is not None:   # records past the written bytes: the viewer reindexes
                self._drop(self.w.error)
            else:
                self._commit(final=True)

    def _commit(self, final: bool = False) -> None:
        ix = self.ix
        if ix is None:
            self.recs.clear()
            return
        try:
            m = ix.meta
            if not m["head"] and self.w.bytes_written:
                self._head(m)
            ix.ingest(self.recs, self.w.bytes_written, getattr(self.w, "packets", 0))
            self.recs.clear()
            if final:
                m["complete"] = 1
                ix.save_meta()
                ix.db.commit()
                ix.db.close()
                self.ix = None
        except (OSError, sqlite3.Error) as e:
            self._drop(e)

    def _head(self, m: dict) -> None:
        """The trace's first bytes (how the viewer knows the index is this
        trace's) and its clock snapshot, which the writer made itself."""
        with open(self.w.path, "rb") as f:
            m["head"] = f.read(96).hex()
        for p in read_head(self.w.path, 4096):
            if p.HasField("clock_snapshot"):
                self.recs.insert(0, (CLOCK, {c.clock_id: c.timestamp
                                             for c in p.clock_snapshot.clocks}))
                break

    def _drop(self, e: Exception) -> None:
        """Gives the index up; the viewer will index the trace itself."""
        self.index_error = f"viewer index not written ({self.index_path}): {e}"
        self.recs.clear()
        if self.ix is not None:
            try:
                self.ix.db.close()
            except sqlite3.Error:
                pass
            self.ix = None
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.index_path + suffix)
            except OSError:
                pass
