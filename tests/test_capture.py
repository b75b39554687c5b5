"""End-to-end: real eBPF probes attached by PID to real processes, the trace
read back with perfetto's protos (tracecheck checks the format rules)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import tracecheck
from conftest import Gpuscope, bpf_ids, probe_events, prog_ids_of

IO_NAMES = {"openat", "read", "pread64", "readv", "close"}


@pytest.fixture
def data_files(tmp_path):
    paths = []
    for name in ("main.bin", "worker.bin"):
        p = tmp_path / name
        p.write_bytes(os.urandom(10_000))
        paths.append(str(p))
    return paths


def capture(target, tmp_path, data_files, extra=()):
    t = target("io_worker.py", *data_files)
    out = tmp_path / "cap.pftrace"
    g = Gpuscope(["attach", "-p", str(t.pid), "-o", str(out), *extra])
    g.wait_attached()
    did = t.go()
    rc, err = g.finish()
    return did, out, rc, err


def test_io_calls_paths_bytes_on_right_threads(target, tmp_path, data_files):
    did, out, rc, err = capture(target, tmp_path, data_files)
    assert rc == 0, err
    t = tracecheck.load(str(out))
    io = t.slices_on("IO")
    for who, path in (("main", data_files[0]), ("worker", data_files[1])):
        rec = did if who == "main" else did["child"]
        calls = [s for s in io if s.args.get("path") == path]
        assert sorted(s.name for s in calls) == sorted(IO_NAMES), calls
        by = {s.name: s for s in calls}
        for name in ("read", "pread64", "readv"):
            assert by[name].args["bytes"] == rec[who][name], (who, name, by[name].args)
        assert by["pread64"].args["offset"] == 100
        assert by["read"].args["requested"] == 4096
        assert by["readv"].args["requested"] == 2  # vector count
        for s in calls:
            assert t.thread_of(s.track) == (rec["pid"], rec["tid"]), (who, s.name)
            assert s.end >= s.start
    # fds made by pipe() are named from their creation, not guessed from /proc
    # later (where the number may already belong to another file).
    child_closes = [s for s in io if s.name == "close" and t.thread_of(s.track)[0] == did["child"]["pid"]]
    assert any(s.args.get("path", "").startswith("pipe:") for s in child_closes), child_closes
    # The worker was forked after attach: followed, with its own process track.
    assert did["child"]["pid"] in {pid for pid, _ in t.processes.values()}
    forks = [i for i in t.instants if i[0] == "fork"]
    assert any(i[3]["child"] == did["child"]["pid"] for i in forks)
    assert "captured" in err and "target exited" in err


def test_sleep_is_an_offcpu_slice_marked_blocked(target, tmp_path, data_files):
    did, out, rc, err = capture(target, tmp_path, data_files)
    assert rc == 0, err
    t = tracecheck.load(str(out))
    off = [s for s in t.slices_on("Off-CPU") if t.thread_of(s.track) == (did["pid"], did["sleeper_tid"])]
    long = [s for s in off if s.end - s.start > 150e6]
    assert len(long) == 1, [(s.name, (s.end - s.start) / 1e6) for s in off]
    s = long[0]
    assert s.name == "blocked" and s.args["state"] == "sleeping"
    assert 195e6 <= s.end - s.start <= 400e6
    names = {tid: name for _pid, tid, name in t.threads.values()}
    assert names[did["sleeper_tid"]] == "sleeper"


def test_summary_and_losses_reported(target, tmp_path, data_files):
    did, out, rc, err = capture(target, tmp_path, data_files)
    import json
    summary = json.loads((tmp_path / "cap.summary.json").read_text())
    assert summary["schema_version"] == 1
    assert summary["target"]["pid"] == did["pid"]
    assert {"io", "proc", "sched"} <= set(summary["lost"])
    assert not any(summary["lost"].values()), summary["lost"]
    assert summary["events"]["io"] > 0 and summary["stop_reason"] == "target exited"
    assert did["child"]["pid"] in summary["processes"]


def test_sigkilled_collector_leaves_readable_trace_and_no_bpf_objects(target, tmp_path, data_files):
    events_before = probe_events()
    t = target("io_worker.py", *data_files)
    out = tmp_path / "killed.pftrace"
    g = Gpuscope(["attach", "-p", str(t.pid), "-o", str(out)])
    g.wait_attached()
    during = prog_ids_of(g.proc.pid)
    assert during, "gpuscope's programs should be loaded while it runs"
    t.go()
    time.sleep(1.0)  # several flushes
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait()
    tr = tracecheck.load(str(out), complete=False)
    assert any(s.args.get("path") == data_files[0] for s in tr.slices_on("IO"))
    time.sleep(0.2)
    assert not (bpf_ids("prog") & during), "programs left behind after SIGKILL"
    assert probe_events() == events_before


@pytest.mark.parametrize("how", ["duration", "sigterm", "sigint"])
def test_clean_stop_detaches_everything(tmp_path, how):
    import subprocess
    import sys
    events_before = probe_events()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"])
    try:
        out = tmp_path / "stop.pftrace"
        args = ["attach", "-p", str(sleeper.pid), "-o", str(out)]
        if how == "duration":
            args += ["-d", "1.5"]
        g = Gpuscope(args)
        g.wait_attached()
        during = prog_ids_of(g.proc.pid)
        assert during
        if how != "duration":
            time.sleep(0.5)
            g.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        rc, err = g.finish()
        assert rc == 0, err
        assert "Traceback" not in err
        assert sleeper.poll() is None, "the target must survive the profiler"
        tr = tracecheck.load(str(out))
        assert any(s.name == "blocked" for s in tr.slices_on("Off-CPU"))
        assert (tmp_path / "stop.summary.json").exists()
        assert not (bpf_ids("prog") & during), "programs left behind"
        assert probe_events() == events_before
    finally:
        sleeper.kill()
        sleeper.wait()
