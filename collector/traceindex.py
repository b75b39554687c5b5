"""The SQLite index of one trace, which the viewer queries instead of ever
loading the whole trace. Written from trace records (tracereader's tuples),
whoever produces them: the collector while it writes the trace (liveindex),
or the viewer reading a trace it did not index itself (fileindex).

Tables: tracks, names (event names), slices (track, ts, dur, depth, lvl,
name, args as JSON), instants, counters, and `agg`, the level-of-detail
table: for each level k in LEVELS, slices shorter than 2**k ns are merged
per (track, depth, ts >> k) bucket into a count and an extent. A window of
n ns per pixel reads slices at least 2**k ns long one by one (k = the
largest level <= n ns) and the shorter ones from agg at level k, so a
query reads a few rows per pixel whatever the trace's size.

Each batch of records is one transaction; `meta.offset` is the trace byte
the index covers. Slices still open at the end of a batch are stored with
dur NULL and completed by a later batch. An index built from nothing in one
go (`bulk`) writes its rows into tables without their indexes and computes
agg in SQLite at the end, from all finished slices at once: the same rows
as folding it batch by batch, for a fraction of the work."""

from __future__ import annotations

import sqlite3
from collections import Counter

from .indexargs import cached_json, pairs_json, text
from .tracereader import (
    BEGIN,
    CLOCK,
    COUNTER,
    END,
    INSTANT,
    SLICE,
    TRACK,
)

SCHEMA = 5
LEVELS = (16, 19, 22, 25, 28, 31, 34)   # buckets of 65 µs … 17 s
OPEN_LVL = 62                            # slices without an end yet
CLOCK_MONOTONIC, CLOCK_REALTIME = 3, 1   # Perfetto's builtin clock ids

DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS names(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interned(seq INTEGER, kind INTEGER, iid INTEGER, name TEXT,
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
INDEXES = """
CREATE INDEX IF NOT EXISTS slices_lod ON slices(track, lvl, ts);
CREATE INDEX IF NOT EXISTS instants_ts ON instants(track, ts);
CREATE INDEX IF NOT EXISTS counters_ts ON counters(track, ts);
"""
TABLES = ("meta", "names", "interned", "tracks", "slices", "instants", "counters", "agg")
TRACK_COLS = ("uuid", "parent", "kind", "name", "pid", "tid", "unit", "rank", "ord",
              "max_depth", "lvls", "n_slices", "n_instants", "n_counters")

AGG_UPSERT = """
INSERT INTO agg(track, k, depth, bucket, n, t0, t1) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(track, k, depth, bucket) DO UPDATE SET n = n + excluded.n,
    t0 = min(t0, excluded.t0), t1 = max(t1, excluded.t1)
"""


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")      # a cache: rebuilt if lost
    db.execute("PRAGMA cache_size=-65536")    # 64 MiB: index inserts stay in memory
    return db


def aggregate(finished) -> list[tuple]:
    """Agg rows for finished slices, rows of the slices table (id, track, ts,
    dur, depth, lvl, ...): level by level, each folded from the one below
    (buckets grow 8x) plus the slices too long for the level below."""
    out: list[tuple] = []
    by_lvl: dict[int, list] = {}
    for s in finished:
        lv = by_lvl.get(s[5])
        if lv is None:
            lv = by_lvl[s[5]] = []
        lv.append(s)
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
            for s in by_lvl.get(lvl, ()):
                tr, ts, dur, depth = s[1], s[2], s[3], s[4]
                key = (tr, depth, ts >> k)
                c = cur.get(key)
                end = ts + dur
                if c is None:
                    cur[key] = [1, ts, end]
                else:
                    c[0] += 1
                    if ts < c[1]:
                        c[1] = ts
                    if end > c[2]:
                        c[2] = end
        out.extend((tr, k, depth, b, n, t0, t1) for (tr, depth, b), (n, t0, t1) in cur.items())
        prev, prev_k = cur, k
    return out


class IndexWriter:
    """Turns trace records into index rows; one writer per index file."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        db.executescript(DDL + INDEXES)
        self.bulk = False   # see the module's docstring
        self.names: dict[str, int] = {}
        self.tracks: dict[int, dict] = {}
        self.dirty: set[int] = set()  # tracks changed since the last write: only these are rewritten
        self.open: dict[int, list[list]] = {}      # track -> stack of [id, ts, depth, name, args, stored]
        self.meta: dict = {}
        self.args_cache: dict = {}
        self.frags: dict = {}                       # see _pairs_json

    def fresh_meta(self) -> dict:
        return {"schema": SCHEMA, "offset": 0, "head": "", "next_id": 1, "next_instant": 1,
                "t_min": None, "t_max": None, "packets": 0, "error": None,
                "mono0": None, "real0": None, "ord": 0}

    def reset(self) -> None:
        for t in TABLES:
            self.db.execute(f"DELETE FROM {t}")
        self.names, self.tracks, self.open, self.args_cache, self.frags = {}, {}, {}, {}, {}
        self.dirty = set()
        self.meta = self.fresh_meta()
        self.db.commit()

    def load(self) -> None:
        """Continues an index that this class wrote before."""
        db = self.db
        self.meta = dict(db.execute("SELECT key, value FROM meta"))
        self.names = {n: i for i, n in db.execute("SELECT id, name FROM names")}
        for row in db.execute(f"SELECT {', '.join(TRACK_COLS)} FROM tracks"):
            self.tracks[row[0]] = dict(zip(TRACK_COLS, row, strict=True))
        for sid, track, ts, depth in db.execute(
                "SELECT id, track, ts, depth FROM slices WHERE dur IS NULL ORDER BY track, depth"):
            self.open.setdefault(track, []).append([sid, ts, depth, 0, None, True])

    # -- one batch ------------------------------------------------------------
    def ingest(self, recs, offset: int, packets: int, interned=None) -> None:
        """Writes one batch of records, covering the trace up to byte `offset`,
        in one transaction; `interned`, if given, replaces the reader's saved
        interning."""
        m = self.meta
        names = self.names
        names_new: list = []
        rows, closed, instants, counters = [], [], [], []
        next_id, next_instant = m["next_id"], m["next_instant"]
        t_min, t_max = m["t_min"], m["t_max"]
        openst, args_cache, frags = self.open, self.args_cache, self.frags
        lo = hi = None
        for r in recs:
            kind = r[0]
            if kind == SLICE:   # a whole slice (the live index): its row at once
                ts, tr, name, args, end = r[1], r[2], r[3], r[4], r[5]
                nid = names.get(name)
                if nid is None:
                    nid = names[name] = len(names) + 1
                    names_new.append((nid, text(name)))
                if args is not None:
                    args = pairs_json(frags, args.items())
                st = openst.get(tr)
                dur = end - ts
                if dur < 0:
                    dur = 0
                rows.append((next_id, tr, ts, dur, len(st) if st else 0, dur.bit_length(), nid, args))
                next_id += 1
                if lo is None:
                    lo = hi = ts
                elif ts < lo:
                    lo = ts
                elif ts > hi:
                    hi = ts
                if end > hi:
                    hi = end
                elif end < lo:
                    lo = end
                continue
            if kind == END:
                ts, tr = r[1], r[2]
                st = openst.get(tr)
                if st:
                    s = st.pop()
                    dur = ts - s[1]
                    if dur < 0:
                        dur = 0
                    if s[5]:
                        closed.append((dur, dur.bit_length(), s[0], tr, s[1], s[2]))
                    else:
                        rows.append((s[0], tr, s[1], dur, s[2], dur.bit_length(), s[3], s[4]))
            elif kind == BEGIN or kind == INSTANT:
                ts, tr, name, args = r[1], r[2], r[3], r[4]
                nid = names.get(name)
                if nid is None:
                    nid = names[name] = len(names) + 1
                    names_new.append((nid, text(name)))
                if args is not None:
                    args = cached_json(args_cache, args)
                if kind == BEGIN:
                    st = openst.get(tr)
                    if st is None:
                        st = openst[tr] = []
                    st.append([next_id, ts, len(st), nid, args, False])
                    next_id += 1
                else:
                    instants.append((next_instant, tr, ts, nid, args))
                    next_instant += 1
            elif kind == COUNTER:
                ts = r[1]
                counters.append((r[2], ts, r[3]))
            elif kind == TRACK:
                self._track(r[1])
                continue
            elif kind == CLOCK:
                c = r[1]
                if m["mono0"] is None and CLOCK_MONOTONIC in c and CLOCK_REALTIME in c:
                    m["mono0"], m["real0"] = c[CLOCK_MONOTONIC], c[CLOCK_REALTIME]
                continue
            else:
                continue
            if lo is None:
                lo = hi = ts
            elif ts < lo:
                lo = ts
            elif ts > hi:
                hi = ts
        if lo is not None:
            t_min = lo if t_min is None or lo < t_min else t_min
            t_max = hi if t_max is None or hi > t_max else t_max
        # Slices still open at the end of this batch are stored without an end.
        for tr, st in openst.items():
            for s in st:
                if not s[5]:
                    rows.append((s[0], tr, s[1], None, s[2], OPEN_LVL, s[3], s[4]))
                    s[5] = True
                    s[4] = None
        self._write(names_new, interned, rows, closed, instants, counters)
        m.update(next_id=next_id, next_instant=next_instant, t_min=t_min, t_max=t_max,
                 offset=offset, packets=packets)
        self.save_meta()
        self.db.commit()

    def _track(self, td) -> None:
        t = self.tracks.get(td.uuid)
        if t is None:
            self.meta["ord"] += 1
            t = self.tracks[td.uuid] = {
                "uuid": td.uuid, "parent": 0, "kind": "global", "name": "", "pid": 0, "tid": 0,
                "unit": "", "rank": 0, "ord": self.meta["ord"], "max_depth": -1, "lvls": 0,
                "n_slices": 0, "n_instants": 0, "n_counters": 0}
        t.update(parent=td.parent, kind=td.kind, name=text(td.name), pid=td.pid, tid=td.tid,
                 unit=td.unit, rank=td.rank)
        self.dirty.add(td.uuid)

    def _write(self, names_new, interned, rows, closed, instants, counters):
        db, tracks = self.db, self.tracks
        db.executemany("INSERT INTO names(id, name) VALUES (?, ?)", names_new)
        if interned is not None:
            db.execute("DELETE FROM interned")
            db.executemany("INSERT INTO interned VALUES (?, ?, ?, ?)", interned)
        db.executemany("INSERT INTO slices VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("UPDATE slices SET dur = ?, lvl = ? WHERE id = ?",
                       [c[:3] for c in closed])
        db.executemany("INSERT INTO instants VALUES (?, ?, ?, ?, ?)", instants)
        db.executemany("INSERT INTO counters VALUES (?, ?, ?)", counters)
        if not self.bulk:
            finished = [r for r in rows if r[3] is not None]
            finished += [(sid, tr, ts, dur, depth, lvl) for dur, lvl, sid, tr, ts, depth in closed]
            db.executemany(AGG_UPSERT, aggregate(finished))
        # Per track: counted and folded over the few distinct values, not row by row.
        dirty = self.dirty
        for tr, n in Counter([r[1] for r in rows]).items():
            t = tracks.get(tr)
            if t is not None:
                t["n_slices"] += n
                dirty.add(tr)
        for tr, lvl, depth in {(r[1], r[5], r[4]) for r in rows}:
            t = tracks.get(tr)
            if t is not None:
                t["lvls"] |= 1 << lvl
                if depth > t["max_depth"]:
                    t["max_depth"] = depth
        for c in closed:
            t = tracks.get(c[3])
            if t is not None:
                t["lvls"] |= 1 << c[1]
                dirty.add(c[3])
        for tr, n in Counter([r[1] for r in instants]).items():
            if tr in tracks:
                tracks[tr]["n_instants"] += n
                dirty.add(tr)
        for tr, n in Counter([r[0] for r in counters]).items():
            if tr in tracks:
                tracks[tr]["n_counters"] += n
                dirty.add(tr)
        db.executemany(f"INSERT OR REPLACE INTO tracks({', '.join(TRACK_COLS)}) VALUES "
                       f"({', '.join('?' * len(TRACK_COLS))})",
                       [tuple(tracks[u][c] for c in TRACK_COLS) for u in dirty if u in tracks])
        dirty.clear()

    def save_meta(self) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", self.meta.items())

    # -- one build from nothing -------------------------------------------------
    def start_bulk(self) -> None:
        """Batches from here on leave agg and the indexes to finish_bulk; an
        index left in this state (the builder killed) is built anew."""
        self.bulk = True
        self.meta["bulk"] = 1
        for name in ("slices_lod", "instants_ts", "counters_ts"):
            self.db.execute(f"DROP INDEX IF EXISTS {name}")
        self.save_meta()
        self.db.commit()

    def finish_bulk(self) -> None:
        """agg from every finished slice, level by level (each folded from
        the one below, as aggregate() does), and the indexes."""
        db = self.db
        k0 = LEVELS[0]
        db.execute("CREATE TEMP TABLE IF NOT EXISTS long_slices(track, depth, ts, dur, lvl)")
        db.execute("DELETE FROM long_slices")
        db.execute(f"INSERT INTO long_slices SELECT track, depth, ts, dur, lvl FROM slices "
                   f"WHERE dur IS NOT NULL AND lvl > {k0}")
        db.execute(f"INSERT INTO agg SELECT track, {k0}, depth, ts >> {k0}, count(*), min(ts), "
                   f"max(ts + dur) FROM slices WHERE dur IS NOT NULL AND lvl <= {k0} "
                   f"GROUP BY track, depth, ts >> {k0}")
        prev = k0
        for k in LEVELS[1:]:
            db.execute(
                f"INSERT INTO agg SELECT track, {k}, depth, b, sum(n), min(t0), max(t1) FROM ("
                f"SELECT track, depth, ts >> {k} AS b, 1 AS n, ts AS t0, ts + dur AS t1 "
                f"FROM long_slices WHERE lvl > {prev} AND lvl <= {k} UNION ALL "
                f"SELECT track, depth, bucket >> {k - prev}, n, t0, t1 FROM agg WHERE k = {prev}"
                f") GROUP BY track, depth, b")
            prev = k
        db.execute("DROP TABLE long_slices")
        db.executescript(INDEXES)
        self.bulk = False
        self.meta.pop("bulk", None)
        db.execute("DELETE FROM meta WHERE key = 'bulk'")
        self.save_meta()
        db.commit()
