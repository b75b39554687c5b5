"""Hostile names and hostile files. A job whose paths, command line and
thread names hold undecodable bytes, HTML/JS and 100 KB of text is captured
for real; its names must stay distinct and recoverable (no U+FFFD merging
two names) and be shown as text by every page and API. `report` says when a
trace is cut short; `view` on a directory of FIFOs, devices, sparse and
corrupt files answers every request in bounded time and memory."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from faults import run

from gpuscope.collector.perfetto import varint
from gpuscope.probes.fsnames import to_bytes

import tracecheck
from conftest import GPUSCOPE

HTML = "<img src=x onerror=alert(1)>"
NAMES = [b"d-\xff", b"d-\xfe", b"d-\\xff", b"d-" + HTML.encode(), "d-caf\u00e9".encode()]
THREAD = b"<b>\xff\\x</b>"          # 15 bytes: the kernel's limit for a thread name
BIG_ARG = "A" * (100 << 10) + HTML + os.fsdecode(b"\xff")
JOB = """
import ctypes, os, sys, threading
d = os.fsencode(sys.argv[1])
def named():
    ctypes.CDLL(None).prctl(15, %r, 0, 0, 0)
    for n in %r:
        with open(os.path.join(d, n), "wb") as f:
            f.write(b"x")
t = threading.Thread(target=named)
t.start()
t.join()
""" % (THREAD, NAMES)  # noqa: UP031


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    d = tmp_path_factory.mktemp("names")
    files = d / "files"
    files.mkdir()
    out = d / "names.pftrace"
    rc, _, err = run(["run", "-q", "--no-nvml", "-o", str(out), "--", sys.executable, "-c",
                      JOB, str(files), BIG_ARG])
    assert rc == 0, err
    return d, out


def test_undecodable_names_stay_distinct_and_recoverable(captured):
    d, out = captured
    tr = tracecheck.load(str(out))
    opened = {s.args["path"] for s in tr.slices_on("IO")
              if s.name == "openat" and "/files/d-" in s.args.get("path", "")}
    assert "\ufffd" not in "".join(opened)
    got = {to_bytes(p).rsplit(b"/", 1)[1] for p in opened}
    assert got == set(NAMES), opened               # five names, five paths: none merged
    threads = {name for _, _, name in tr.threads.values()}
    assert any(to_bytes(n) == THREAD for n in threads), threads
    summary = json.loads((d / "names.summary.json").read_text())
    assert to_bytes(summary["target"]["command"][-1]) == os.fsencode(BIG_ARG)


def test_report_says_a_cut_trace_is_truncated(captured, tmp_path):
    _, out = captured
    rc, stdout, err = run(["report", str(out)])
    assert rc == 0 and "truncated" not in stdout + err, err
    data = out.read_bytes()
    cut = tmp_path / "cut.pftrace"
    cut.write_bytes(data[: len(data) * 2 // 3])
    rc, stdout, err = run(["report", str(cut)])
    assert rc == 0, err
    assert "Traceback" not in err
    assert re.search(r"cut\.pftrace is truncated: .*byte \d+ of \d+", err), err
    rc, stdout, _ = run(["report", "--json", str(cut)])
    assert "byte" in json.loads(stdout)["truncated"]


# -- `gpuscope view` over hostile names and hostile files ----------------------------

class View:
    def __init__(self, directory):
        self.proc = subprocess.Popen(GPUSCOPE + ["view", str(directory), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line + self.proc.stderr.read()
        self.port = int(m[1])

    def get(self, path: str, timeout: float = 60) -> tuple[int, str, str]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.getheader("Content-Type", ""), r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def peak_rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def test_every_page_and_api_shows_hostile_names_as_text(captured):
    d, _ = captured
    v = View(d)
    try:
        status, _, body = v.get("/api/s/names/meta")
        for _ in range(100):    # the index may still be building
            if status != 200 or not json.loads(body).get("building"):
                break
            time.sleep(0.2)
            status, _, body = v.get("/api/s/names/meta")
        assert status == 200, body
        meta = json.loads(body)
        assert any(to_bytes(t["name"]) == THREAD for t in meta["tracks"]), meta["tracks"]
        for path in ("/", "/s/names", "/api/sessions", "/api/s/names/meta",
                     "/api/s/names/search?q=d-", "/api/s/names/report",
                     f"/api/s/names/window?t0=0&t1={2**62}&px=500"):
            status, ctype, body = v.get(path)
            assert status == 200, (path, status, body[:300])
            if ctype.startswith("text/html"):
                assert HTML not in body and "<b>" not in body, path   # escaped, never markup
            else:
                json.loads(body)
        status, _, body = v.get("/api/s/names/search?q=openat&limit=1000")
        paths = set()
        for sid, *_ in json.loads(body)["results"]:
            status, _, detail = v.get(f"/api/s/names/slice/{sid}")
            assert status == 200, detail
            paths.add(json.loads(detail)["args"].get("path", ""))
        got = {to_bytes(p).rsplit(b"/", 1)[1] for p in paths if "/files/d-" in p}
        assert got == set(NAMES), paths
    finally:
        err = v.stop()
    assert "Traceback" not in err


def _fifo(p):
    os.mkfifo(p)


def _sparse(p, head=b""):
    with open(p, "wb") as f:
        f.write(head)
        f.truncate(1 << 30)


HOSTILE_FILES = {
    "fifo": _fifo,
    "zero": lambda p: os.symlink("/dev/zero", p),
    "sparse": _sparse,
    "endless": lambda p: _sparse(p, b"\x0a" + varint(1 << 40)),
    "claims-60MB": lambda p: _sparse(p, b"\x0a" + varint(60 << 20)),
    "junk": lambda p: open(p, "wb").write(os.urandom(1 << 16)),
    "empty": lambda p: open(p, "wb").close(),
    "dir": os.mkdir,
}


def test_view_answers_hostile_files_in_bounded_time_and_memory(tmp_path, captured):
    d = tmp_path / "hostile"
    d.mkdir()
    for name, make in HOSTILE_FILES.items():
        make(str(d / f"{name}.pftrace"))
    shutil.copy(captured[1], d / "good.pftrace")
    v = View(d)
    try:
        status, _, body = v.get("/api/sessions")
        assert status == 200, body
        assert "good" in {s["name"] for s in json.loads(body)["sessions"]}
        for name in [*HOSTILE_FILES, "../../etc/passwd", "%00"]:
            big = os.path.isfile(d / f"{name}.pftrace") and name in ("sparse", "endless",
                                                                     "claims-60MB")
            for path in (f"/s/{name}", f"/api/s/{name}/meta", f"/api/s/{name}/report",
                         f"/api/s/{name}/window?t0=0&t1=100",
                         *([] if big else [f"/api/s/{name}/trace"])):   # a 1 GB download
                status, _, body = v.get(path, timeout=120)      # a hang fails here
                assert status < 500, (path, status, body[:300])
        status, _, _ = v.get("/api/s/good/meta")
        assert status == 200
        assert v.peak_rss_mb() < 400, f"viewer peak RSS {v.peak_rss_mb():.0f} MB"
        assert v.proc.poll() is None
    finally:
        err = v.stop()
    assert "Traceback" not in err, err
