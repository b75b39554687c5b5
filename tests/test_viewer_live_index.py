"""The viewer's index written beside a capture while it runs, by the
collector's idle-priority indexer (collector/liveindex.py): it exists when a
real capture ends, the viewer uses it without indexing anything itself, it
holds row for row what indexing the finished trace gives, and an index left
unfinished by a killed collector is replaced by the viewer's own."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from test_viewer_support import Synth

from gpuscope.collector.fileindex import TraceIndexer
from gpuscope.collector.liveindex import index_path
from gpuscope.collector.traceindex import connect
from gpuscope.probes.events import Span
from gpuscope.viewer import create_app

import tracecheck
from conftest import Gpuscope

QUERIES = {
    "slices": "SELECT s.id, s.track, s.ts, s.dur, s.depth, n.name, s.args FROM slices s "
              "JOIN names n ON n.id = s.name ORDER BY s.id",
    "instants": "SELECT s.id, s.track, s.ts, n.name, s.args FROM instants s "
                "JOIN names n ON n.id = s.name ORDER BY s.id",
    "counters": "SELECT track, ts, value FROM counters ORDER BY track, ts, value",
    "agg": "SELECT * FROM agg ORDER BY track, k, depth, bucket",
    "tracks": "SELECT uuid, parent, kind, name, pid, tid, unit, rank, ord, max_depth, n_slices,"
              " n_instants, n_counters FROM tracks ORDER BY uuid",
    "meta": "SELECT key, value FROM meta WHERE key IN ('t_min', 't_max', 'mono0', 'real0', "
            "'next_id', 'next_instant', 'offset', 'packets') ORDER BY key",
}


def rows(db_path: str) -> dict:
    db = sqlite3.connect(db_path)
    try:
        return {k: db.execute(q).fetchall() for k, q in QUERIES.items()}
    finally:
        db.close()


def meta(client, name):
    r = client.get(f"/api/s/{name}/meta")
    while r.status_code == 200 and r.json["building"]:
        time.sleep(0.05)
        r = client.get(f"/api/s/{name}/meta")
    return r.json


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def caught_up(path: str, timeout: float = 60.0) -> dict:
    """The live index's meta once its (idle-priority) indexer has read the whole trace."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db = sqlite3.connect(index_path(path))
            try:
                m = dict(db.execute("SELECT key, value FROM meta"))
            finally:
                db.close()
        except sqlite3.Error:
            m = {}
        if m.get("writer_pid") and m.get("offset") == os.path.getsize(path):
            return m
        assert time.monotonic() < deadline, f"live index behind the trace: {m}"
        time.sleep(0.05)


def files_in(d) -> list:
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def IndexedSynth(path: str, **kw) -> Synth:
    """The viewer tests' synthetic job, written as a capture writes it (with
    the live index), with a hostile process name."""
    return Synth(path, indexed=True, hostile=True, **kw)


def test_live_index_is_the_index_of_the_finished_trace(tmp_path):
    d = tmp_path / "caps"
    d.mkdir()
    path = str(d / "run.pftrace")
    s = IndexedSynth(path, flush_bytes=64 << 10)
    for i in range(40):
        s.step(n_io=12)
        if i == 20:   # odd values: non-UTF-8 (surrogate-escaped) text, a list, a huge name
            s.tl.add(Span("io", "read", 101, 101, s.t, s.t + 5, {
                "path": b"/data/\xff\xfe.bin".decode("utf-8", "surrogateescape"),
                "shape": [3, 4], "ok": True, "ratio": 0.5}))
            s.tl.add(Span("io", "x" * 100_000, 101, 101, s.t + 10, s.t + 20))
    s.close()
    live = index_path(path)
    assert live == str(d / ".gpuscope-index" / "run.sqlite")
    fresh = str(tmp_path / "fresh.sqlite")
    TraceIndexer(connect(fresh), path).update()
    got, want = rows(live), rows(fresh)
    for table in QUERIES:
        assert got[table] == want[table], table
    assert len(got["slices"]) > 1000 and got["tracks"] and got["meta"]
    m = dict(sqlite3.connect(live).execute("SELECT key, value FROM meta"))
    assert m["complete"] == 1 and m["offset"] == os.path.getsize(path)


def test_viewer_reads_the_live_index_while_the_capture_runs(tmp_path):
    d = tmp_path / "caps"
    d.mkdir()
    path = str(d / "now.pftrace")
    cache = tmp_path / "cache"
    c = create_app({"DATA_DIR": str(d), "CACHE_DIR": str(cache)}).test_client()
    s = IndexedSynth(path, flush_bytes=1 << 30)
    seen = []
    for _ in range(5):
        s.step(n_io=10)
        s.w.flush()
        caught_up(path)
        m = meta(c, "now")
        assert m["indexed"] == os.path.getsize(path) and not m["building"]
        seen.append(m["packets"])
    s.close()
    m = meta(c, "now")
    assert m["indexed"] == os.path.getsize(path)
    assert seen == sorted(seen) and m["packets"] > seen[-1]
    assert m["packets"] == len(tracecheck.read_packets(path))
    assert files_in(cache) == []     # the viewer indexed nothing itself


def test_capture_index_exists_at_the_end_and_is_used_without_rebuild(target, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    files = []
    for name in ("main.bin", "worker.bin"):
        (data / name).write_bytes(os.urandom(10_000))
        files.append(str(data / name))
    t = target("io_worker.py", *files)
    d = tmp_path / "caps"
    d.mkdir()
    out = d / "cap.pftrace"
    g = Gpuscope(["attach", "-p", str(t.pid), "-o", str(out)])
    g.wait_attached()
    t.go()
    rc, err = g.finish()
    assert rc == 0, err
    live = d / ".gpuscope-index" / "cap.sqlite"
    m = dict(sqlite3.connect(live).execute("SELECT key, value FROM meta"))
    assert m["complete"] == 1 and m["offset"] == os.path.getsize(out)
    cache = tmp_path / "cache"
    c = create_app({"DATA_DIR": str(d), "CACHE_DIR": str(cache)}).test_client()
    before = os.stat(live).st_mtime_ns
    r = c.get("/api/s/cap/meta").json
    assert not r["building"] and r["indexed"] == os.path.getsize(out) and r["tracks"]
    assert files_in(cache) == [] and os.stat(live).st_mtime_ns == before
    # The same answers as an index the viewer builds from the trace.
    os.rename(live, tmp_path / "moved.sqlite")
    r2 = meta(create_app({"DATA_DIR": str(d), "CACHE_DIR": str(tmp_path / "c2")}).test_client(),
              "cap")
    assert r2["tracks"] == r["tracks"] and r2["packets"] == r["packets"]
    io = [s for s in tracecheck.load(str(out)).slices_on("IO") if s.args.get("path") in files]
    assert io and sum(t["n_slices"] for t in r["tracks"] if t["name"] == "IO") >= len(io)


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_viewer_live_index import IndexedSynth
s = IndexedSynth({path!r}, flush_bytes=1 << 30)
for i in range(6):
    s.step(n_io=10)
    s.w.flush()
s.step(n_io=10)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_index_of_a_killed_capture_is_rebuilt_by_the_viewer(tmp_path):
    d = tmp_path / "caps"
    d.mkdir()
    path = str(d / "dead.pftrace")
    code = KILLED_WRITER.format(tests=os.path.dirname(__file__), path=path)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    m = caught_up(path)   # the indexer reads to the end and stops, leaving it unfinished
    deadline = time.monotonic() + 30
    while _alive(m["writer_pid"]):
        assert time.monotonic() < deadline, "the indexer outlived its collector"
        time.sleep(0.05)
    m = dict(sqlite3.connect(index_path(path)).execute("SELECT key, value FROM meta"))
    assert m["complete"] == 0 and m["offset"] == os.path.getsize(path)
    cache = tmp_path / "cache"
    r = meta(create_app({"DATA_DIR": str(d), "CACHE_DIR": str(cache)}).test_client(), "dead")
    assert r["packets"] == len(tracecheck.read_packets(path)) and r["error"] is None
    assert "dead.sqlite" in files_in(cache)   # indexed by the viewer itself


def test_unwritable_index_never_stops_the_trace(tmp_path):
    d = tmp_path / "caps"
    d.mkdir()
    (d / ".gpuscope-index").write_text("a file where the index directory would go")
    path = str(d / "x.pftrace")
    s = IndexedSynth(path)
    s.step(n_io=5)
    s.close()
    assert s.index.index_error and "viewer index not written" in s.index.index_error
    assert len(tracecheck.read_packets(path)) > 10
