"""Read-only queries on a trace index (see index.py): the track tree, a
window of the timeline at a level of detail, one slice's details, search,
and counter series for the verdict charts."""

from __future__ import annotations

import json
import re
import sqlite3

from .index import LEVELS, OPEN_LVL

MAX_SLICES_PER_TRACK = 20000
MAX_RAW_COUNTERS = 4000
TRACK_COLS = ("uuid", "parent", "kind", "name", "pid", "tid", "unit", "rank", "ord",
              "max_depth", "n_slices", "n_instants", "n_counters")


def tracks(db: sqlite3.Connection) -> list[dict]:
    """All tracks in display order: gpuscope's global tracks (verdict first),
    then each process with its counters and its threads, each thread with
    its child tracks by rank. `level` is the nesting depth."""
    rows = [dict(zip(TRACK_COLS, r, strict=True)) for r in
            db.execute(f"SELECT {', '.join(TRACK_COLS)} FROM tracks")]
    by_parent: dict[int, list[dict]] = {}
    known = {t["uuid"] for t in rows}
    # A thread track names its process by pid (Perfetto's rule), not by parent_uuid.
    proc_of = {t["pid"]: t["uuid"] for t in rows if t["kind"] == "process"}
    for t in rows:
        if t["kind"] == "thread" and not t["parent"]:
            t["parent"] = proc_of.get(t["pid"], 0)
    by_parent = {}
    for t in rows:
        by_parent.setdefault(t["parent"] or 0, []).append(t)

    def key(t):
        kind_order = {"global": 0, "counter": 1, "child": 2, "thread": 3, "process": 4}
        verdict = 0 if t["kind"] == "global" and t["name"].lower() == "verdict" else 1
        lost = 1 if t["name"].startswith("lost events") else 0
        return (verdict, lost, kind_order.get(t["kind"], 5), t["rank"] or 99,
                t["pid"], t["tid"] != t["pid"], t["tid"], t["ord"])

    out: list[dict] = []

    def walk(parent: int, level: int) -> None:
        for t in sorted(by_parent.get(parent, ()), key=key):
            t["level"] = level
            out.append(t)
            walk(t["uuid"], level + 1)

    walk(0, 0)
    # Tracks whose parent was never described still show, at the top level.
    for t in rows:
        if t["parent"] and t["parent"] not in known:
            t["level"] = 0
            out.append(t)
            walk(t["uuid"], 1)
    return out


def _lvls(db: sqlite3.Connection, track: int) -> list[int]:
    row = db.execute("SELECT lvls FROM tracks WHERE uuid = ?", (track,)).fetchone()
    mask = row[0] if row else 0
    return [v for v in range(OPEN_LVL + 1) if mask >> v & 1]


def wide_slices(db, track: int, t0: int, t1: int, min_lvl: int, lvls: list[int],
                limit: int = MAX_SLICES_PER_TRACK) -> list:
    """[[id, ts, dur, depth, name]] on track overlapping [t0, t1] with lvl >= min_lvl
    (dur >= 2**(min_lvl-1)). A slice of level v is shorter than 2**v ns, so it
    starts after t0 - 2**v: one index range per level (a UNION ALL, because
    SQLite plans an OR of them as a scan of the whole track)."""
    parts, params = [], []
    for v in lvls:
        if v < min_lvl:
            continue
        parts.append("SELECT id, ts, dur, depth, name FROM slices "
                     "WHERE track = ? AND lvl = ? AND ts > ? AND ts <= ?")
        params += [track, v, t0 - (1 << v) if v != OPEN_LVL else -(1 << 62), t1]
    if not parts:
        return []
    sql = " UNION ALL ".join(parts) + f" LIMIT {int(limit)}"
    return [list(r) for r in db.execute(sql, params)
            if r[2] is None or r[1] + r[2] >= t0]


def busy_blocks(db, track: int, k: int | None, t0: int, t1: int, npx: float,
                small: list) -> list:
    """Slices too short to draw, merged into blocks [t0, t1, depth, count]: those
    shorter than 2**k from agg, plus `small` ones read one by one; blocks
    closer than a pixel are joined."""
    rows = [(s[3], s[1], s[1] + s[2], 1) for s in small]
    if k is not None:
        rows += db.execute(
            "SELECT depth, t0, t1, n FROM agg WHERE track = ? AND k = ? AND bucket BETWEEN ? AND ?",
            (track, k, (t0 >> k) - 1, t1 >> k)).fetchall()
    rows.sort()
    out: list = []
    cur = None
    for depth, a, b, n in rows:
        if b < t0 or a > t1:
            continue
        if cur is not None and cur[2] == depth and a <= cur[1] + npx:
            cur[1] = max(cur[1], b)
            cur[3] += n
        else:
            if cur is not None:
                out.append(cur)
            cur = [a, b, depth, n]
    if cur is not None:
        out.append(cur)
    return out


def instants(db, track: int, t0: int, t1: int, npx: int) -> list:
    return [list(r) for r in db.execute(
        "SELECT id, min(ts), name, count(*) FROM instants WHERE track = ? AND ts BETWEEN ? AND ?"
        " GROUP BY (ts - ?) / ? LIMIT 5000", (track, t0, t1, t0, max(1, npx)))]


def counters(db, track: int, t0: int, t1: int, npx: int) -> list:
    """[[ts, min, max]]: raw samples when few, else min/max per pixel; the sample
    before t0 and the one after t1 are included so lines reach the edges."""
    out = []
    prev = db.execute("SELECT ts, value FROM counters WHERE track = ? AND ts < ? "
                      "ORDER BY ts DESC LIMIT 1", (track, t0)).fetchone()
    if prev:
        out.append([prev[0], prev[1], prev[1]])
    n = db.execute("SELECT count(*) FROM (SELECT 1 FROM counters WHERE track = ? AND ts BETWEEN"
                   f" ? AND ? LIMIT {MAX_RAW_COUNTERS + 1})", (track, t0, t1)).fetchone()[0]
    if n <= MAX_RAW_COUNTERS:
        out += [[ts, v, v] for ts, v in db.execute(
            "SELECT ts, value FROM counters WHERE track = ? AND ts BETWEEN ? AND ? ORDER BY ts",
            (track, t0, t1))]
    else:
        out += [list(r) for r in db.execute(
            "SELECT min(ts), min(value), max(value) FROM counters WHERE track = ? AND ts BETWEEN"
            " ? AND ? GROUP BY (ts - ?) / ? ORDER BY 1", (track, t0, t1, t0, max(1, npx)))]
    nxt = db.execute("SELECT ts, value FROM counters WHERE track = ? AND ts > ? "
                     "ORDER BY ts LIMIT 1", (track, t1)).fetchone()
    if nxt:
        out.append([nxt[0], nxt[1], nxt[1]])
    return out


def level_for(npx: float) -> int | None:
    """The coarsest aggregation level whose buckets are no wider than a pixel."""
    best = None
    for k in LEVELS:
        if (1 << k) <= npx:
            best = k
    return best


def window(db, t0: int, t1: int, px: int, track_ids: list[int]) -> dict:
    """What the timeline draws for [t0, t1] at px pixels: per track, slices
    at least a pixel long, busy blocks for the rest, instants and counters.
    Times are sent relative to `base` (= t0) to keep numbers short."""
    px = max(1, min(int(px), 10000))
    npx = max(1.0, (t1 - t0) / px)
    k = level_for(npx)
    rows = {r[0]: r for r in db.execute(
        "SELECT uuid, lvls, n_slices, n_instants, n_counters FROM tracks")}
    out: dict = {}
    used: set[int] = set()
    for tr in track_ids:
        r = rows.get(tr)
        if r is None:
            continue
        _, mask, n_slices, n_instants, n_counters = r
        d: dict = {}
        if n_slices:
            lvls = [v for v in range(OPEN_LVL + 1) if mask >> v & 1]
            got = wide_slices(db, tr, t0, t1, (k + 1) if k is not None else 0, lvls)
            wide = [s for s in got if s[2] is None or s[2] >= npx]
            small = [s for s in got if s[2] is not None and s[2] < npx]
            blocks = busy_blocks(db, tr, k, t0, t1, npx, small)
            used.update(s[4] for s in wide)
            d["s"] = [[s[0], s[1] - t0, s[2], s[3], s[4]] for s in wide]
            d["b"] = [[b[0] - t0, b[1] - b[0], b[2], b[3]] for b in blocks]
        if n_instants:
            d["i"] = [[i[0], i[1] - t0, i[2], i[3]] for i in instants(db, tr, t0, t1, int(npx))]
            used.update(i[2] for i in d["i"])
        if n_counters:
            d["c"] = [[c[0] - t0, c[1], c[2]] for c in counters(db, tr, t0, t1, int(npx))]
        out[str(tr)] = d
    return {"base": t0, "t0": t0, "t1": t1, "px": px, "level": k, "tracks": out,
            "names": names(db, used)}


def names(db, ids) -> dict[str, str]:
    ids = list(ids)
    out: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        out.update((str(a), b) for a, b in db.execute(
            f"SELECT id, name FROM names WHERE id IN ({','.join('?' * len(part))})", part))
    return out


def track_path(db, uuid: int) -> list[dict]:
    """The track and its ancestors, innermost first."""
    out = []
    seen = set()
    while uuid and uuid not in seen:
        seen.add(uuid)
        r = db.execute("SELECT uuid, parent, kind, name, pid, tid FROM tracks WHERE uuid = ?",
                       (uuid,)).fetchone()
        if r is None:
            break
        out.append(dict(zip(("uuid", "parent", "kind", "name", "pid", "tid"), r, strict=True)))
        uuid = r[1]
    return out


def slice_detail(db, sid: int) -> dict | None:
    r = db.execute("SELECT s.id, s.track, s.ts, s.dur, s.depth, s.lvl, n.name, s.args FROM slices s"
                   " JOIN names n ON n.id = s.name WHERE s.id = ?", (sid,)).fetchone()
    if r is None:
        return None
    sid, track, ts, dur, depth, lvl, name, args = r
    out = {"id": sid, "track": track, "ts": ts, "dur": dur, "depth": depth, "name": name,
           "args": json.loads(args) if args else {}, "path": track_path(db, track)}
    # The enclosing slices (on a Python track: the stack), outermost first.
    stack = []
    if depth:
        for a in wide_slices(db, track, ts, ts, lvl, _lvls(db, track), limit=5000):
            if a[3] < depth and a[1] <= ts and (a[2] is None or a[1] + a[2] >= ts + (dur or 0)):
                stack.append(a)
        stack.sort(key=lambda a: a[3])
        nm = names(db, {a[4] for a in stack})
        out["stack"] = [{"id": a[0], "name": nm.get(str(a[4]), ""), "depth": a[3]} for a in stack]
    return out


def search(db, q: str, after: int | None = None, limit: int = 100) -> dict:
    q = q.strip()
    if not q:
        return {"total": 0, "results": [], "names": {}}
    pattern = "%" + re.sub(r"([\\%_])", r"\\\1", q) + "%"
    ids = [i for i, in db.execute("SELECT id FROM names WHERE name LIKE ? ESCAPE '\\' LIMIT 1000",
                                  (pattern,))]
    if not ids:
        return {"total": 0, "results": [], "names": {}}
    marks = ",".join("?" * len(ids))
    total = db.execute(f"SELECT count(*) FROM slices WHERE name IN ({marks})", ids).fetchone()[0]
    rows = [list(r) for r in db.execute(
        f"SELECT id, track, ts, dur, name FROM slices WHERE name IN ({marks}) AND ts > ?"
        f" ORDER BY ts LIMIT {int(min(limit, 1000))}", [*ids, after if after is not None else -1])]
    return {"total": total, "results": rows, "names": names(db, {r[4] for r in rows})}


def counter_tracks_named(db, pattern: str) -> list[tuple[int, str, str]]:
    rx = re.compile(pattern)
    return [(u, n, unit) for u, n, unit in db.execute(
        "SELECT uuid, name, unit FROM tracks WHERE kind = 'counter' ORDER BY ord") if rx.search(n)]


def slices_on_tracks_named(db, name: str, limit: int = 2000) -> list:
    return [list(r) for r in db.execute(
        "SELECT s.ts, s.dur, n.name FROM slices s JOIN tracks t ON t.uuid = s.track "
        "JOIN names n ON n.id = s.name WHERE t.name = ? ORDER BY s.ts LIMIT ?", (name, limit))]
