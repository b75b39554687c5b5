"""The index of one trace as the viewer uses it (collector/traceindex.py has
the tables): the collector's own live index when it has one for this trace,
else an index the viewer builds and extends as the trace grows. The first
build of a large trace runs in a background thread; later updates (a live
trace growing) run in the caller's request."""

from __future__ import annotations

import os
import sqlite3
import threading

from gpuscope.collector.fileindex import TraceIndexer
from gpuscope.collector.liveindex import index_path
from gpuscope.collector.traceindex import LEVELS, OPEN_LVL, SCHEMA, connect

from .tracefile import file_size

__all__ = ["LEVELS", "OPEN_LVL", "Index"]


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        pass
    return True


class Index:
    SYNC_BYTES = 8 << 20

    def __init__(self, trace: str, db_path: str):
        self.trace = trace
        self.db_path = db_path            # the viewer's own index
        self.live_path = index_path(trace)  # the collector's, if it wrote one
        self.lock = threading.Lock()
        self.progress = (0, 0)
        self._thread: threading.Thread | None = None
        self._builder: TraceIndexer | None = None
        self._local = threading.local()
        self._path = db_path              # the one queries read

    def reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or self._local.path != self._path:
            db = self._local.db = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
            self._local.path = self._path
            db.execute("PRAGMA query_only=ON")
        return db

    def meta(self) -> dict:
        try:
            return dict(self.reader().execute("SELECT key, value FROM meta"))
        except sqlite3.Error:
            return {}

    def building(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def live(self) -> bool:
        """True if the collector's index serves this trace: complete and still
        matching it, or being written by a collector that is running."""
        if not os.path.exists(self.live_path):
            return False
        try:
            db = sqlite3.connect(f"file:{self.live_path}?mode=ro", uri=True, timeout=5)
            try:
                m = dict(db.execute("SELECT key, value FROM meta"))
            finally:
                db.close()
        except sqlite3.Error:
            return False
        if not m.get("live") or m.get("schema") != SCHEMA:
            return False
        size = file_size(self.trace)
        try:
            with open(self.trace, "rb") as f:
                same = f.read(96).hex().startswith(m.get("head") or "")   # "": nothing flushed yet
        except OSError:
            return False
        if m.get("complete"):
            return same and size == m["offset"] and bool(m.get("head"))
        return same and size >= m["offset"] and _alive(m.get("writer_pid"))

    def refresh(self, wait: bool = False) -> None:
        """Brings the index up to the trace's current size: in the background
        when much is missing (first build), here otherwise."""
        if self.building():
            if wait and self._thread is not None:
                self._thread.join()
            return
        with self.lock:
            if self.live():
                self._path = self.live_path
                return
            self._path = self.db_path
            if self._builder is None:
                os.makedirs(os.path.dirname(self.db_path) or ".", exist_ok=True)
                self._builder = TraceIndexer(connect(self.db_path), self.trace)
            elif not self._builder._same_file():   # replaced by a new capture of that name
                self._builder.reset()
            behind = file_size(self.trace) - self._builder.meta["offset"]
            if behind <= 0 or self._builder.meta.get("error"):
                return
            if wait or behind <= self.SYNC_BYTES:
                self._builder.update(self._progress)
                return
            self._thread = threading.Thread(target=self._build, daemon=True,
                                            name=f"index {os.path.basename(self.trace)}")
            self._thread.start()

    def _progress(self, done: int, total: int) -> None:
        self.progress = (done, total)

    def _build(self) -> None:
        assert self._builder is not None   # refresh() sets it before starting this thread
        with self.lock:
            self._builder.update(self._progress)
