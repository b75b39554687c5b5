"""The viewer's index of a trace file gpuscope did not index while writing
it (a foreign or older trace): read from disk with the one trace reader,
written by traceindex's IndexWriter, and extended as the file grows."""

from __future__ import annotations

import os
import sqlite3

from . import readerproc
from .traceindex import SCHEMA, IndexWriter
from .tracereader import Interning, TraceError, file_size, read_records


class TraceIndexer(IndexWriter):
    """Indexes a trace file by reading it, and extends the index as the file
    grows: the reader's interning and the slices still open are kept in the
    index, so the next update reads on from the last complete record. A trace
    that was rewritten (different first bytes, or shorter), or an index the
    collector left unfinished, is indexed anew. One at a time (callers lock).
    A large part to read is decoded in a child process (readerproc)."""

    PARALLEL_BYTES = 16 << 20

    def __init__(self, db: sqlite3.Connection, trace: str):
        super().__init__(db)
        self.trace = trace
        self.interning = Interning(callstacks=False)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        if (meta.get("schema") != SCHEMA or meta.get("live") or meta.get("bulk")
                or not self._same_file(meta)):
            self.reset()
            return
        self.load()
        self.interning.load(db.execute("SELECT seq, kind, iid, name FROM interned"))

    def reset(self) -> None:
        super().reset()
        self.interning = Interning(callstacks=False)

    def head(self) -> str:
        with open(self.trace, "rb") as f:
            return f.read(96).hex()

    def _same_file(self, m: dict | None = None) -> bool:
        m = self.meta if m is None else m
        if "offset" not in m:
            return False
        try:
            return file_size(self.trace) >= m["offset"] and \
                self.head()[: len(m.get("head") or "")] == (m.get("head") or "")
        except OSError:
            return False

    def update(self, progress=None) -> bool:
        """Reads what was appended since the last update; True if anything was."""
        m = self.meta
        if m.get("error"):
            return False   # corrupt from m["offset"] on: nothing more to read
        size = file_size(self.trace)
        if size <= m["offset"]:
            return False
        if not m["head"]:
            m["head"] = self.head()
        parallel = size - m["offset"] >= self.PARALLEL_BYTES and (os.cpu_count() or 1) > 1
        bulk = m["offset"] == 0
        if bulk:
            self.start_bulk()
        try:
            try:
                self._consume(readerproc.read(self.trace, m["offset"], self.interning.rows())
                              if parallel else self._read(), size, progress)
            except readerproc.Died:
                self._consume(self._read(), size, progress)   # from where the child stopped
        except TraceError as e:
            m["error"] = str(e)
            m["error_at"] = e.offset
            self.save_meta()
            self.db.commit()
        except OSError as e:
            m["error"] = f"cannot read trace: {e.strerror}"
            self.save_meta()
            self.db.commit()
        if bulk:
            self.finish_bulk()
        return True

    def _consume(self, batches, size: int, progress) -> None:
        m = self.meta
        for msg in batches:
            if msg[0] == "error":
                raise TraceError(msg[1], msg[2] or 0)
            end, n, recs, interned = msg
            if interned is not None:
                self.interning = Interning(callstacks=False)
                self.interning.load(interned)
            self.ingest(recs, end, m["packets"] + n, interned)
            if progress:
                progress(end, size)

    def _read(self):
        """What readerproc.read yields, read here."""
        st = self.interning
        for end, n, recs in read_records(self.trace, self.meta["offset"], st):
            yield end, n, recs, st.rows() if st.dirty else None
            st.dirty = False
