"""An SQLite index of one trace, built once and then extended as the trace
grows, so the viewer answers windowed queries without ever loading the
whole trace.

Tables: tracks, names (interned strings), slices (track, ts, dur, depth,
name, args as JSON), instants, counters, and `agg`, the level-of-detail
table: for each level k in LEVELS, slices shorter than 2**k ns are merged
per (track, depth, ts >> k) bucket into a count and an extent. A window of
n ns per pixel reads slices at least 2**k ns long one by one (k = the
largest level <= n ns) and the shorter ones from agg at level k, so a
query reads a few rows per pixel whatever the trace's size.

Updates read the trace from the offset of the last complete record; the
interning tables and the slices still open (dur NULL) are kept in the
index, so the next update continues where the last one stopped. A trace
that was rewritten (different first bytes, or shorter) is re-indexed."""

from __future__ import annotations

import json
import os
import sqlite3
import threading

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from .tracefile import TraceError, file_size, read_chunks

SCHEMA = 4
LEVELS = (16, 19, 22, 25, 28, 31, 34)   # buckets of 65 µs … 17 s
OPEN_LVL = 62                                # slices without an end yet
SEQ_CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
BEGIN, END = pb.TrackEvent.TYPE_SLICE_BEGIN, pb.TrackEvent.TYPE_SLICE_END
INSTANT, COUNTER = pb.TrackEvent.TYPE_INSTANT, pb.TrackEvent.TYPE_COUNTER
_EMPTY: dict = {}
CLOCK_MONOTONIC, CLOCK_REALTIME = pb.BUILTIN_CLOCK_MONOTONIC, pb.BUILTIN_CLOCK_REALTIME

DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS names(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interned(seq INTEGER, kind INTEGER, iid INTEGER, name INTEGER,
    PRIMARY KEY(seq, kind, iid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tracks(uuid INTEGER PRIMARY KEY, parent INTEGER, kind TEXT,
    name TEXT, pid INTEGER, tid INTEGER, unit TEXT, rank INTEGER, ord INTEGER,
    max_depth INTEGER, lvls INTEGER, n_slices INTEGER, n_instants INTEGER,
    n_counters INTEGER);
CREATE TABLE IF NOT EXISTS slices(id INTEGER PRIMARY KEY, track INTEGER, ts INTEGER,
    dur INTEGER, depth INTEGER, lvl INTEGER, name INTEGER, args TEXT);
CREATE INDEX IF NOT EXISTS slices_lod ON slices(track, lvl, ts);
CREATE TABLE IF NOT EXISTS instants(id INTEGER PRIMARY KEY, track INTEGER, ts INTEGER,
    name INTEGER, args TEXT);
CREATE INDEX IF NOT EXISTS instants_ts ON instants(track, ts);
CREATE TABLE IF NOT EXISTS counters(track INTEGER, ts INTEGER, value REAL);
CREATE INDEX IF NOT EXISTS counters_ts ON counters(track, ts);
CREATE TABLE IF NOT EXISTS agg(track INTEGER, k INTEGER, depth INTEGER, bucket INTEGER,
    n INTEGER, t0 INTEGER, t1 INTEGER, PRIMARY KEY(track, k, depth, bucket)) WITHOUT ROWID;
"""

AGG_UPSERT = """
INSERT INTO agg(track, k, depth, bucket, n, t0, t1) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(track, k, depth, bucket) DO UPDATE SET n = n + excluded.n,
    t0 = min(t0, excluded.t0), t1 = max(t1, excluded.t1)
"""


def aggregate(finished) -> list[tuple]:
    """Agg rows for finished slices [(track, ts, dur, depth, lvl)]: level by
    level, each folded from the one below (buckets grow 8x) plus the slices
    too long for the level below."""
    out: list[tuple] = []
    by_lvl: dict[int, list] = {}
    for s in finished:
        by_lvl.setdefault(s[4], []).append(s)
    prev: dict = {}
    prev_k = -1
    for k in LEVELS:
        cur: dict = {}
        shift = k - prev_k if prev_k >= 0 else 0
        for (tr, depth, b), (n, t0, t1) in prev.items():
            key = (tr, depth, b >> shift)
            c = cur.get(key)
            if c is None:
                cur[key] = [n, t0, t1]
            else:
                c[0] += n
                c[1] = min(c[1], t0)
                c[2] = max(c[2], t1)
        for lvl in range(prev_k + 1, k + 1):
            for tr, ts, dur, depth, _ in by_lvl.get(lvl, ()):
                key = (tr, depth, ts >> k)
                c = cur.get(key)
                if c is None:
                    cur[key] = [1, ts, ts + dur]
                else:
                    c[0] += 1
                    if ts < c[1]:
                        c[1] = ts
                    if ts + dur > c[2]:
                        c[2] = ts + dur
        out.extend((tr, k, depth, b, n, t0, t1) for (tr, depth, b), (n, t0, t1) in cur.items())
        prev, prev_k = cur, k
    return out



def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")   # a cache: rebuilt if lost
    db.execute("PRAGMA cache_size=-131072")   # 128 MiB: index inserts stay in memory
    return db


_SIMPLE = {"string_value", "int_value", "uint_value", "double_value", "bool_value",
           "pointer_value", "legacy_json_value"}
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _value(a, which: str):
    if which in _SIMPLE:
        return getattr(a, which)
    return None if which is None else str(getattr(a, which))


class Builder:
    """Extends the index of one trace; one at a time (the caller holds a lock)."""

    def __init__(self, db: sqlite3.Connection, trace: str):
        self.db = db
        self.trace = trace
        self.names: dict[str, int] = {}
        self.ev_names: dict[int, dict[int, int]] = {}     # seq -> iid -> name id
        self.arg_names: dict[int, dict[int, str]] = {}    # seq -> iid -> name
        self.tracks: dict[int, dict] = {}
        self.open: dict[int, list[list]] = {}      # track -> stack of [id, ts, depth, name, args, stored]
        self.meta: dict = {}
        self.args_cache: dict[tuple, str] = {}
        self._load()

    # -- state -------------------------------------------------------------
    def _load(self) -> None:
        db = self.db
        db.executescript(DDL)
        self.meta = dict(db.execute("SELECT key, value FROM meta"))
        if self.meta.get("schema") != SCHEMA or not self._same_file():
            self._reset()
            return
        self.names = {n: i for i, n in db.execute("SELECT id, name FROM names")}
        by_id = {i: n for n, i in self.names.items()}
        for seq, kind, iid, nid in db.execute("SELECT seq, kind, iid, name FROM interned"):
            if kind == 1:
                self.ev_names.setdefault(seq, {})[iid] = nid
            else:
                self.arg_names.setdefault(seq, {})[iid] = by_id.get(nid, f"#{iid}")
        cols = [d[1] for d in db.execute("PRAGMA table_info(tracks)")]
        for row in db.execute("SELECT * FROM tracks"):
            t = dict(zip(cols, row, strict=True))
            self.tracks[t["uuid"]] = t
        for sid, track, ts, depth in db.execute(
                "SELECT id, track, ts, depth FROM slices WHERE dur IS NULL ORDER BY track, depth"):
            self.open.setdefault(track, []).append([sid, ts, depth, 0, None, True])

    def _head(self) -> str:
        with open(self.trace, "rb") as f:
            return f.read(96).hex()

    def _same_file(self) -> bool:
        m = self.meta
        if "offset" not in m:
            return False
        size = file_size(self.trace)
        return size >= m["offset"] and self._head()[: len(m.get("head", ""))] == m.get("head")

    def _reset(self) -> None:
        db = self.db
        for t in ("meta", "names", "interned", "tracks", "slices", "instants", "counters", "agg"):
            db.execute(f"DELETE FROM {t}")
        self.names, self.tracks, self.open = {}, {}, {}
        self.ev_names, self.arg_names = {}, {}
        self.meta = {"schema": SCHEMA, "offset": 0, "head": "", "next_id": 1, "next_instant": 1,
                     "t_min": None, "t_max": None, "packets": 0, "error": None,
                     "mono0": None, "real0": None, "ord": 0}
        db.commit()

    def _name(self, s: str, new: list) -> int:
        i = self.names.get(s)
        if i is None:
            i = self.names[s] = len(self.names) + 1
            new.append((i, s))
        return i

    # -- update ------------------------------------------------------------
    def update(self, progress=None) -> bool:
        """Reads what was appended since the last update; True if anything was."""
        m = self.meta
        if m.get("error"):
            return False   # corrupt from m["offset"] on: nothing more to read
        size = file_size(self.trace)
        if size <= m["offset"]:
            return False
        try:
            for end, packets in read_chunks(self.trace, m["offset"]):
                self._ingest(packets, end)
                if progress:
                    progress(end, size)
        except TraceError as e:
            m["error"] = str(e)
            m["error_at"] = e.offset
            self._save_meta()
            self.db.commit()
        except OSError as e:
            m["error"] = f"cannot read trace: {e.strerror}"
            self._save_meta()
            self.db.commit()
        return True

    def _ingest(self, packets, end: int) -> None:
        m = self.meta
        names_new: list = []
        interned_new: list = []
        rows, closed, instants, counters = [], [], [], []
        next_id, next_instant = m["next_id"], m["next_instant"]
        t_min, t_max = m["t_min"], m["t_max"]
        ev_names, arg_names, tracks, openst = self.ev_names, self.arg_names, self.tracks, self.open
        name_of = self._name
        args_cache = self.args_cache
        for p in packets:
            seq = p.trusted_packet_sequence_id
            if p.sequence_flags & SEQ_CLEARED:
                ev_names[seq], arg_names[seq] = {}, {}
            if p.HasField("interned_data"):
                idata = p.interned_data
                tab = ev_names.setdefault(seq, {})
                for e in idata.event_names:
                    nid = tab[e.iid] = name_of(e.name, names_new)
                    interned_new.append((seq, 1, e.iid, nid))
                tab = arg_names.setdefault(seq, {})
                for e in idata.debug_annotation_names:
                    tab[e.iid] = e.name
                    interned_new.append((seq, 2, e.iid, name_of(e.name, names_new)))
            which = p.WhichOneof("data")
            if which == "track_event":
                ev = p.track_event
                ts = p.timestamp
                tr = ev.track_uuid
                if t_min is None or ts < t_min:
                    t_min = ts
                if t_max is None or ts > t_max:
                    t_max = ts
                typ = ev.type
                if typ == END:
                    st = openst.get(tr)
                    if st:
                        s = st.pop()
                        dur = max(0, ts - s[1])
                        if s[5]:
                            closed.append((dur, dur.bit_length(), s[0]))
                            td = tracks.get(tr)
                            if td is not None:
                                td["lvls"] |= 1 << dur.bit_length()
                        else:
                            rows.append((s[0], tr, s[1], dur, s[2], dur.bit_length(), s[3], s[4]))
                    continue
                if typ == COUNTER:
                    v = (ev.double_counter_value if ev.HasField("double_counter_value")
                         else ev.counter_value)
                    counters.append((tr, ts, v))
                    continue
                iid = ev.name_iid
                if iid:
                    nid = ev_names.get(seq, _EMPTY).get(iid) or name_of(f"#{iid}", names_new)
                else:
                    nid = name_of(ev.name, names_new)
                args = None
                if ev.debug_annotations:
                    an = arg_names.get(seq, _EMPTY)
                    items = []
                    for a in ev.debug_annotations:
                        which = a.WhichOneof("value")
                        items.append((an.get(a.name_iid, f"#{a.name_iid}") if a.name_iid else a.name,
                                      getattr(a, which) if which == "string_value" or which ==
                                      "int_value" else _value(a, which)))
                    key = tuple(items)
                    args = args_cache.get(key)
                    if args is None:
                        if len(args_cache) > 200_000:
                            args_cache.clear()
                        args = args_cache[key] = _encode(dict(items))
                if typ == BEGIN:
                    st = openst.get(tr)
                    if st is None:
                        st = openst[tr] = []
                    st.append([next_id, ts, len(st), nid, args, False])
                    next_id += 1
                elif typ == INSTANT:
                    instants.append((next_instant, tr, ts, nid, args))
                    next_instant += 1
            elif which == "track_descriptor":
                self._track(p.track_descriptor)
            elif which == "clock_snapshot":
                clocks = {c.clock_id: c.timestamp for c in p.clock_snapshot.clocks}
                if CLOCK_MONOTONIC in clocks and CLOCK_REALTIME in clocks and m["mono0"] is None:
                    m["mono0"], m["real0"] = clocks[CLOCK_MONOTONIC], clocks[CLOCK_REALTIME]
        # Slices still open at the end of this chunk are stored without an end.
        for tr, st in openst.items():
            for s in st:
                if not s[5]:
                    rows.append((s[0], tr, s[1], None, s[2], OPEN_LVL, s[3], s[4]))
                    s[5] = True
                    s[4] = None
        self._write(names_new, interned_new, rows, closed, instants, counters)
        m.update(next_id=next_id, next_instant=next_instant, t_min=t_min, t_max=t_max,
                 offset=end, packets=m["packets"] + len(packets))
        if not m["head"]:
            m["head"] = self._head()
        self._save_meta()
        self.db.commit()

    def _track(self, td) -> None:
        t = self.tracks.get(td.uuid)
        if t is None:
            self.meta["ord"] += 1
            t = self.tracks[td.uuid] = {
                "uuid": td.uuid, "parent": 0, "kind": "global", "name": "", "pid": 0, "tid": 0,
                "unit": "", "rank": 0, "ord": self.meta["ord"], "max_depth": -1, "lvls": 0,
                "n_slices": 0, "n_instants": 0, "n_counters": 0}
        t["parent"] = td.parent_uuid
        t["rank"] = td.sibling_order_rank
        if td.HasField("process"):
            t.update(kind="process", pid=td.process.pid,
                     name=td.process.process_name or f"pid {td.process.pid}")
        elif td.HasField("thread"):
            t.update(kind="thread", pid=td.thread.pid, tid=td.thread.tid,
                     name=td.thread.thread_name or f"tid {td.thread.tid}")
        elif td.HasField("counter"):
            c = td.counter
            unit = c.unit_name or {pb.CounterDescriptor.UNIT_TIME_NS: "ns",
                                   pb.CounterDescriptor.UNIT_COUNT: "count",
                                   pb.CounterDescriptor.UNIT_SIZE_BYTES: "bytes"}.get(c.unit, "")
            t.update(kind="counter", unit=unit, name=td.name)
        else:
            t.update(kind="child" if td.parent_uuid else "global", name=td.name)

    def _write(self, names_new, interned_new, rows, closed, instants, counters):
        db, tracks = self.db, self.tracks
        db.executemany("INSERT INTO names(id, name) VALUES (?, ?)", names_new)
        db.executemany("INSERT OR REPLACE INTO interned VALUES (?, ?, ?, ?)", interned_new)
        db.executemany("INSERT INTO slices VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("UPDATE slices SET dur = ?, lvl = ? WHERE id = ?", closed)
        db.executemany("INSERT INTO instants VALUES (?, ?, ?, ?, ?)", instants)
        db.executemany("INSERT INTO counters VALUES (?, ?, ?)", counters)
        finished = [(r[1], r[2], r[3], r[4], r[5]) for r in rows if r[3] is not None]
        for dur, lvl, sid in closed:
            tr, ts, depth = db.execute("SELECT track, ts, depth FROM slices WHERE id = ?",
                                       (sid,)).fetchone()
            finished.append((tr, ts, dur, depth, lvl))
        db.executemany(AGG_UPSERT, aggregate(finished))
        for r in rows:
            t = tracks.get(r[1])
            if t is not None:
                t["n_slices"] += 1
                t["lvls"] |= 1 << r[5]
                if r[4] > t["max_depth"]:
                    t["max_depth"] = r[4]
        for r in instants:
            if r[1] in tracks:
                tracks[r[1]]["n_instants"] += 1
        for r in counters:
            if r[0] in tracks:
                tracks[r[0]]["n_counters"] += 1
        cols = list(next(iter(tracks.values())).keys()) if tracks else []
        if cols:
            db.executemany(f"INSERT OR REPLACE INTO tracks({', '.join(cols)}) VALUES "
                           f"({', '.join('?' * len(cols))})",
                           [tuple(t[c] for c in cols) for t in tracks.values()])

    def _save_meta(self) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", self.meta.items())


class Index:
    """The index of one trace file: refreshed on demand, read by queries.
    The first build of a large trace runs in a background thread; later
    updates (a live trace growing) run in the caller's request."""

    SYNC_BYTES = 8 << 20

    def __init__(self, trace: str, db_path: str):
        self.trace = trace
        self.db_path = db_path
        self.lock = threading.Lock()
        self.progress = (0, 0)
        self._thread: threading.Thread | None = None
        self._builder: Builder | None = None
        self._local = threading.local()

    def reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.db_path, timeout=30,
                                                  check_same_thread=False)
            db.execute("PRAGMA query_only=ON")
        return db

    def meta(self) -> dict:
        try:
            return dict(self.reader().execute("SELECT key, value FROM meta"))
        except sqlite3.Error:
            return {}

    def building(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self, wait: bool = False) -> None:
        """Brings the index up to the trace's current size: in the background
        when much is missing (first build), here otherwise."""
        if self.building():
            if wait:
                self._thread.join()
            return
        with self.lock:
            if self._builder is None:
                os.makedirs(os.path.dirname(self.db_path) or ".", exist_ok=True)
                self._builder = Builder(connect(self.db_path), self.trace)
            elif not self._builder._same_file():   # replaced by a new capture of that name
                self._builder._reset()
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
        with self.lock:
            self._builder.update(self._progress)
