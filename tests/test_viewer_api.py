"""The viewer's HTTP API and pages through Flask's test client, on traces
written by the real writer: windowed level-of-detail queries against the
trace decoded independently (tracecheck), live growth, path traversal,
hostile names, truncated and corrupt traces, `gpuscope view`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from test_viewer_support import HOSTILE, Synth, write_summary, write_trace

from gpuscope.collector.perfetto import split_frames
from gpuscope.viewer import create_app

import tracecheck


@pytest.fixture(scope="module")
def capdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("caps")
    write_trace(str(d / "run1.pftrace"), steps=60, n_io=20)
    write_summary(str(d / "run1.pftrace"))
    write_trace(str(d / "evil.pftrace"), steps=5, hostile=True)
    write_summary(str(d / "evil.pftrace"), hostile=True)
    return d


@pytest.fixture
def client(capdir, tmp_path):
    app = create_app({"DATA_DIR": str(capdir), "CACHE_DIR": str(tmp_path / "cache"),
                      "TESTING": True})
    return app.test_client()


def meta(client, name):
    r = client.get(f"/api/s/{name}/meta")
    while r.status_code == 200 and r.json["building"]:
        time.sleep(0.05)
        r = client.get(f"/api/s/{name}/meta")
    return r


def test_sessions_listed(client):
    r = client.get("/api/sessions")
    names = {s["name"]: s for s in r.json["sessions"]}
    assert set(names) == {"run1", "evil"}
    assert names["run1"]["state"] == "finished" and names["run1"]["input_bound"] == "high"
    page = client.get("/").get_data(as_text=True)
    assert "run1" in page and "input-bound" in page


def test_window_matches_trace(client, capdir):
    """Every slice of the trace that overlaps a window is either returned
    itself (when at least a pixel long) or inside a busy block at its depth;
    nothing is returned that does not overlap the window."""
    m = meta(client, "run1").json
    decoded = tracecheck.load(str(capdir / "run1.pftrace"))
    assert m["t_min"] == min(s.start for s in decoded.slices)
    by_track: dict = {}
    for s in decoded.slices:
        by_track.setdefault(s.track, []).append(s)
    ids = [t["uuid"] for t in m["tracks"]]
    span = m["t_max"] - m["t_min"]
    for frac0, frac1, px in ((0, 1, 800), (0.3, 0.35, 1000), (0.5, 0.5005, 500), (0, 1, 50)):
        t0 = m["t_min"] + int(span * frac0)
        t1 = m["t_min"] + int(span * frac1) + 1
        w = client.get(f"/api/s/run1/window?t0={t0}&t1={t1}&px={px}"
                       f"&tracks={','.join(map(str, ids))}").json
        npx = (t1 - t0) / px
        base = w["base"]
        for uuid, slices in by_track.items():
            d = w["tracks"][str(uuid)]
            got = {(base + s[1], s[3]) for s in d["s"]}
            for s in d["s"]:
                assert base + s[1] <= t1 and base + s[1] + s[2] >= t0
                assert s[2] >= npx
            blocks = d.get("b", [])
            for s in slices:
                if s.end < t0 or s.start > t1:
                    continue
                if (s.start, s.depth) in got:
                    continue
                assert s.end - s.start < npx, "a slice a pixel long must be sent itself"
                assert any(b[2] == s.depth and base + b[0] <= s.start and
                           s.end <= base + b[0] + b[1] for b in blocks), (frac0, px, s)
            # level of detail: at most a few items per pixel per depth
            assert len(d["s"]) + len(blocks) <= 3 * px * (1 + max(x.depth for x in slices))
        if frac1 - frac0 < 0.01:   # zoomed in: the IO and CUDA slices themselves
            assert {"read", "cudaLaunchKernel"} <= set(w["names"].values())


def test_counters_downsampled(client):
    m = meta(client, "run1").json
    gpu = next(t for t in m["tracks"] if t["name"] == "GPU0 utilization")
    assert gpu["kind"] == "counter" and gpu["unit"] == "%"
    w = client.get(f"/api/s/run1/window?t0={m['t_min']}&t1={m['t_max']}&px=1000"
                   f"&tracks={gpu['uuid']}").json
    pts = w["tracks"][str(gpu["uuid"])]["c"]
    assert len(pts) == 60 and all(10 <= p[1] <= p[2] <= 95 for p in pts)
    w = client.get(f"/api/s/run1/window?t0={m['t_min']}&t1={m['t_max']}&px=10"
                   f"&tracks={gpu['uuid']}").json
    # 60 samples is few enough to send raw; the rule is "raw when <= 4000"
    assert len(w["tracks"][str(gpu["uuid"])]["c"]) == 60
    r = client.get("/api/s/run1/report").json
    assert r["gpu"][0]["name"] == "GPU0 utilization"
    assert len(r["stalls"]) == 12 and r["stalls"][0][2] == "data stall"


def test_slice_details_and_search(client):
    meta(client, "run1")
    r = client.get("/api/s/run1/search?q=cudaLaunch").json
    assert r["total"] == 60 * 20 and len(r["results"]) == 100
    sid = r["results"][0][0]
    d = client.get(f"/api/s/run1/slice/{sid}").json
    assert d["name"] == "cudaLaunchKernel" and d["args"]["py"] == "train_step (train.py:12)"
    assert [p["kind"] for p in d["path"]] == ["child", "thread"]
    r = client.get("/api/s/run1/search?q=train_step").json
    py = client.get(f"/api/s/run1/slice/{r['results'][0][0]}").json
    assert py["args"] == {"file": "train.py", "line": 12}
    assert [s["name"] for s in py["stack"]] == ["main"]
    assert client.get("/api/s/run1/slice/999999999").status_code == 404
    assert client.get("/api/s/run1/search?q=%25_").json["total"] == 0   # LIKE wildcards escaped


def test_bad_parameters_are_400(client):
    meta(client, "run1")
    assert client.get("/api/s/run1/window?t0=5&t1=1").status_code == 400
    assert client.get("/api/s/run1/window?t0=x&t1=1").status_code == 400
    assert client.get("/api/s/run1/window?t0=1&t1=9&tracks=a").status_code == 400


def test_live_trace_indexed_incrementally(tmp_path):
    """A trace read while it grows (flushed step by step, torn record at the
    end) ends up indexed exactly as if it had been read once finished."""
    d = tmp_path / "caps"
    d.mkdir()
    path = str(d / "live.pftrace")
    s = Synth(path, flush_bytes=1 << 30)
    app = create_app({"DATA_DIR": str(d), "CACHE_DIR": str(tmp_path / "c")})
    c = app.test_client()
    seen = []
    for _ in range(30):
        s.w.flush()   # completes the record torn last time
        s.step(n_io=10)
        # write up to the middle of the last record, as a flush cut short would
        k = split_frames(bytes(s.w.buf), 0)[1][-1][0] + 1
        os.write(s.w.fd, bytes(s.w.buf[:k]))
        s.w.buf = s.w.buf[k:]
        m = meta(c, "live").json
        assert m["capture"]["state"] == "live" and m["error"] is None
        assert m["indexed"] < os.path.getsize(path)   # the torn record waits
        seen.append(m["t_max"])
    s.close()
    m = meta(c, "live").json
    assert m["indexed"] == os.path.getsize(path)
    assert seen == sorted(seen) and seen[-1] > seen[0]
    decoded = tracecheck.load(path)
    ids = ",".join(str(t["uuid"]) for t in m["tracks"])
    w = c.get(f"/api/s/live/window?t0={m['t_min']}&t1={m['t_max'] + 1}&px=100000"
              f"&tracks={ids}").json
    assert w["level"] is None   # finest level: slices one by one
    n = sum(len(t.get("s", [])) + sum(b[3] for b in t.get("b", [])) for t in w["tracks"].values())
    assert n == len(decoded.slices)
    # a fresh index of the finished file agrees
    app2 = create_app({"DATA_DIR": str(d), "CACHE_DIR": str(tmp_path / "c2")})
    m2 = meta(app2.test_client(), "live").json
    assert (m2["t_min"], m2["t_max"], m2["packets"]) == (m["t_min"], m["t_max"], m["packets"])


@pytest.mark.parametrize("url", [
    "/s/..%2F..%2Fetc%2Fpasswd", "/s/../../etc/passwd", "/s/%2e%2e/download",
    "/api/s/..%2Frun1/meta", "/api/s/%2e%2e%2f%2e%2e%2fetc%2fpasswd/trace",
    "/s/run1.pftrace/download", "/s/.gpuscope-index/download", "/api/s/outside/trace",
    "/s/outside", "/static/..%2f..%2fpages.py", "/static/../__init__.py",
])
def test_path_traversal_refused(client, capdir, tmp_path_factory, url):
    secret = tmp_path_factory.mktemp("secret") / "outside.pftrace"
    secret.write_bytes(b"\x0aSECRET")
    link = capdir / "outside.pftrace"
    if not link.exists():
        link.symlink_to(secret)   # a symlink in the directory pointing out of it
    r = client.get(url)
    assert r.status_code in (404, 400, 308)
    body = r.get_data()
    assert b"SECRET" not in body and b"root:" not in body and b"Traceback" not in body
    assert "outside" not in {s["name"] for s in client.get("/api/sessions").json["sessions"]}


def test_hostile_names_escaped(client):
    page = client.get("/s/evil").get_data(as_text=True)
    assert HOSTILE not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "Content-Security-Policy" in client.get("/s/evil").headers
    assert "script-src 'self'" in client.get("/s/evil").headers["Content-Security-Policy"]
    m = meta(client, "evil").json
    assert HOSTILE in {t["name"] for t in m["tracks"]}   # JSON carries it as data
    assert client.get("/api/s/evil/meta").content_type == "application/json"
    listing = client.get("/").get_data(as_text=True)
    assert HOSTILE not in listing


def test_truncated_trace_shows_what_it_holds(tmp_path, capdir):
    d = tmp_path / "caps"
    d.mkdir()
    full = (capdir / "run1.pftrace").read_bytes()
    cut = len(full) // 2 + 3   # almost surely inside a record
    (d / "cut.pftrace").write_bytes(full[:cut])
    c = create_app({"DATA_DIR": str(d), "CACHE_DIR": str(tmp_path / "c")}).test_client()
    assert c.get("/s/cut").status_code == 200
    m = meta(c, "cut").json
    assert m["error"] is None and m["indexed"] < cut and m["packets"] > 100
    assert m["capture"]["state"] in ("live", "incomplete")


@pytest.mark.parametrize("content,where", [
    (b"GARBAGE" * 100, 0), (b"", None), (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 0)])
def test_corrupt_trace_readable_error(tmp_path, content, where):
    d = tmp_path / "caps"
    d.mkdir()
    (d / "bad.pftrace").write_bytes(content)
    c = create_app({"DATA_DIR": str(d), "CACHE_DIR": str(tmp_path / "c")}).test_client()
    r = c.get("/s/bad")
    if where is None:   # empty: a capture that has not written yet
        assert r.status_code == 200
        assert meta(c, "bad").json["t_min"] is None
        return
    assert r.status_code == 422
    text = r.get_data(as_text=True)
    assert "cannot be shown" in text and "Traceback" not in text
    assert "byte 0" in text
    r = c.get("/api/s/bad/meta")
    assert r.status_code == 422 and "byte 0" in r.json["error"]
    assert c.get("/").status_code == 200


def test_corrupt_middle_keeps_the_start(tmp_path, capdir):
    d = tmp_path / "caps"
    d.mkdir()
    full = (capdir / "run1.pftrace").read_bytes()
    (d / "mid.pftrace").write_bytes(full[:200_000] + b"\x07" * 5000 + full[200_000:])
    c = create_app({"DATA_DIR": str(d), "CACHE_DIR": str(tmp_path / "c")}).test_client()
    assert c.get("/s/mid").status_code == 200
    m = meta(c, "mid").json
    assert m["error"] and "corrupt" in m["error"] and m["packets"] > 100 and m["tracks"]


def test_summary_without_verdict_and_garbage_summary(tmp_path):
    d = tmp_path / "caps"
    d.mkdir()
    write_trace(str(d / "a.pftrace"), steps=3)
    write_summary(str(d / "a.pftrace"), verdict=False)
    write_trace(str(d / "b.pftrace"), steps=3)
    (d / "b.summary.json").write_text('{"verdict": {"findings": [1, {"severity": 5}]}, "steps": "x"')
    write_trace(str(d / "c.pftrace"), steps=3)
    (d / "c.summary.json").write_text('{"verdict": {"findings": [1, {"severity": 5}]}, "steps": 7,'
                                      ' "stall_frames": [{"stack": "x"}], "top_files": [null]}')
    c = create_app({"DATA_DIR": str(d), "CACHE_DIR": str(tmp_path / "c")}).test_client()
    for n in "abc":
        r = c.get(f"/s/{n}")
        assert r.status_code == 200, n
    assert "summary unreadable" in c.get("/s/b").get_data(as_text=True)
    assert c.get("/").status_code == 200


def test_index_reused_and_rebuilt_when_trace_replaced(tmp_path):
    d = tmp_path / "caps"
    d.mkdir()
    write_trace(str(d / "r.pftrace"), steps=10)
    cache = str(tmp_path / "c")
    m1 = meta(create_app({"DATA_DIR": str(d), "CACHE_DIR": cache}).test_client(), "r").json
    m2 = meta(create_app({"DATA_DIR": str(d), "CACHE_DIR": cache}).test_client(), "r").json
    assert m1["packets"] == m2["packets"]
    time.sleep(0.01)
    write_trace(str(d / "r.pftrace"), steps=4)   # a new capture under the same name
    m3 = meta(create_app({"DATA_DIR": str(d), "CACHE_DIR": cache}).test_client(), "r").json
    assert m3["packets"] < m1["packets"]
    assert m3["packets"] == len(tracecheck.read_packets(str(d / "r.pftrace")))


def test_gpuscope_view_prints_url_and_serves(tmp_path, capdir):
    shutil.copy(capdir / "run1.pftrace", tmp_path / "one.pftrace")
    p = subprocess.Popen([sys.executable, "-m", "gpuscope.collector.cli", "view",
                          str(tmp_path / "one.pftrace"), "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "GPUSCOPE_CACHE_DIR": str(tmp_path / "cache")})
    try:
        line = p.stdout.readline()
        assert "http://127.0.0.1:" in line and line.rstrip().endswith("/s/one (Ctrl-C to stop)")
        url = line.split(" at ")[1].split()[0]
        import urllib.request

        html = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "Timeline" in html
    finally:
        p.terminate()
        p.wait(timeout=10)
    r = subprocess.run([sys.executable, "-m", "gpuscope.collector.cli", "view",
                        str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr

