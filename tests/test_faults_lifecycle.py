"""The capture's life against a live target: the collector SIGKILLed, the
target exec-ing and exiting mid-capture, 25 attach/detach cycles on one
target. What must hold: the trace is readable to its last flush, the kernel
lists none of gpuscope's BPF programs or links afterwards, and the target
runs on as if gpuscope had never been there."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from faults import Ticker, run

from gpuscope.collector.options import CaptureOptions, build_sources
from gpuscope.collector.session import Session

import tracecheck
from conftest import Gpuscope, bpf_ids, probe_events, prog_ids_of


def link_ids_of(pid: int) -> set[int]:
    """BPF links a process holds open (bpftool link show, from its fdinfo)."""
    ids = set()
    for f in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            for line in f.read_text().splitlines():
                if line.startswith("link_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


@pytest.fixture(scope="module")
def ticker(tmp_path_factory):
    t = Ticker(tmp_path_factory.mktemp("ticker") / "ticks.log")
    yield t
    t.stop()


def contiguous(ticks: list[int]) -> bool:
    return ticks == list(range(ticks[0], ticks[0] + len(ticks)))


def test_sigkilled_collector_leaves_a_readable_trace_and_nothing_in_the_kernel(ticker, tmp_path):
    events_before = probe_events()
    out = tmp_path / "killed.pftrace"
    g = Gpuscope(["attach", "-p", str(ticker.pid), "-q", "-o", str(out)])
    g.wait_attached()
    progs, links = prog_ids_of(g.proc.pid), link_ids_of(g.proc.pid)
    assert progs
    time.sleep(1.5)   # several flushes
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait()
    tr = tracecheck.load(str(out), complete=False)
    script = str(Path(__file__).parent / "targets" / "ticker.py")
    assert any(s.args.get("path") == script for s in tr.slices_on("IO"))
    deadline = time.monotonic() + 10   # the kernel frees them once the last fd is closed
    while (bpf_ids("prog") & progs or bpf_ids("link") & links) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not bpf_ids("prog") & progs, "programs left behind after SIGKILL"
    assert not bpf_ids("link") & links, "links left behind after SIGKILL"
    assert probe_events() == events_before
    assert ticker.proc.poll() is None
    rc, _, err = run(["report", str(out)])
    assert rc == 0 and "is truncated" in err and "did not finish" in err, err


def test_target_execs_then_exits_mid_capture(tmp_path):
    t = Ticker(tmp_path / "ticks.log")
    try:
        out = tmp_path / "exec.pftrace"
        g = Gpuscope(["attach", "-p", str(t.pid), "-q", "-o", str(out)])
        g.wait_attached()
        t.wait_ticks(20)
        t.send("exec")
        before = len(t.ticks())
        t.wait_ticks(before + 30)     # the new image ticks on, same PID
        t.send("exit")
        rc, err = g.finish(timeout=120)
    finally:
        t.stop()
    assert rc == 0, err
    assert "(target exited)" in err and "Traceback" not in err
    tr = tracecheck.load(str(out))
    execs = [ts for name, _, ts, _ in tr.instants if name == "exec"]
    assert execs, "the exec is on the timeline"
    script = str(Path(__file__).parent / "targets" / "ticker.py")
    assert any(s.args.get("path") == script and s.start > execs[0] for s in tr.slices_on("IO")), \
        "the new image's IO is traced"
    summary = json.loads((tmp_path / "exec.summary.json").read_text())
    assert summary["stop_reason"] == "target exited"


def test_duration_counts_from_live_probes_and_root_is_never_told_to_be_root(tmp_path):
    # -p 1 alone (no descendants): a process gpuscope may be refused to read.
    out = tmp_path / "one.pftrace"
    rc, _, err = run(["attach", "-p", "1", "--no-subprocesses", "-d", "1", "-q", "-o", str(out)])
    assert rc == 0, err
    assert "needs root or CAP_SYS_PTRACE" not in err       # we are root
    s = json.loads((tmp_path / "one.summary.json").read_text())
    assert s["stop_reason"] == "duration"
    # -d 1 is one second of live probes: neither the attach nor the finish is counted.
    assert 1.0 <= s["duration_s"] < 1.0 + s["attach_s"], s
    assert f"captured {s['duration_s']:.1f}s" in err


# Each attach compiles the eBPF program (BCC): ~2 s on an idle 2-core machine, 10 s under
# heavy load; only the kernel sources the cycle needs (proc, io) are compiled.
@pytest.mark.timeout(1200)
def test_25_attach_detach_cycles_leave_nothing_and_do_not_disturb_the_target(ticker, tmp_path):
    events_before = probe_events()
    opts = CaptureOptions(sched=False, cuda=False, nccl=False, nvml=False, python=False)
    progs: set[int] = set()
    links: set[int] = set()
    first = len(ticker.ticks())

    def attached(_session):
        progs.update(prog_ids_of(os.getpid()))
        links.update(link_ids_of(os.getpid()))

    for i in range(25):
        out = tmp_path / f"cycle{i}.pftrace"
        cap = Session(ticker.pid, build_sources(opts), str(out), duration=0.2).run(attached)
        assert cap.reason == "duration" and cap.events.get("io"), cap
        for p in (out, tmp_path / f"cycle{i}.summary.json"):
            p.unlink()
    assert progs, "each cycle loads programs"
    assert not prog_ids_of(os.getpid()) and not link_ids_of(os.getpid())
    assert not bpf_ids("prog") & progs, "programs left behind"
    assert not bpf_ids("link") & links, "links left behind"
    assert probe_events() == events_before
    assert ticker.proc.poll() is None
    lines = ticker.lines()
    assert all(ln.startswith("tick ") for ln in lines), "the target's output changed"
    ticks = [int(ln[5:]) for ln in lines]
    assert len(ticks) > first and contiguous(ticks), "the target's output changed"
