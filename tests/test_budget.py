"""The overhead budget with real parts: a real PythonSampler sampling a real target,
the real OverheadBudget measuring this process's real CPU. Limits of 0 and 100% force
each direction, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuscope.collector.bpfcost import BpfRunTime
from gpuscope.collector.budget import OverheadBudget
from gpuscope.probes.events import CounterSample, Instant, StackSample
from gpuscope.probes.sampler import RATE_TRACK, PythonSampler

TARGETS = Path(__file__).parent / "targets"


@pytest.fixture
def parked():
    proc = subprocess.Popen([sys.executable, str(TARGETS / "parked.py")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def tick_until(budget, sampler, cond, timeout=30.0):
    """Tick about 10 times a second, draining the sampler, until cond(); returns what
    both produced."""
    events, samples = [], []
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        events += budget.tick(time.monotonic_ns())
        samples += sampler.poll(0.1)
    assert cond(), f"level {budget.level} after {timeout}s: {budget.state()}"
    return events, samples


def test_over_budget_lowers_the_sampler_rate_and_restores_it(parked):
    s = PythonSampler(rate_hz=100)
    s.start([parked.pid])
    try:
        b = OverheadBudget(0.0, [s], target_pids_fn=lambda: [parked.pid], window_s=0.3,
                           settle_s=0.3, restore_after_s=0.5)
        assert b.max_level == 3 and b.describe(3) == "python sampler 10 Hz"
        events, samples = tick_until(b, s, lambda: b.level == b.max_level)
        assert s.current_hz == 10 and s.stats()["rate_hz"] == 10
        assert [c.level for c in b.changes] == [1, 2, 3]
        assert all(c.reason == "over budget" and c.own_pct > 0 for c in b.changes)
        rates = [e.value for e in samples if isinstance(e, CounterSample) and e.track == RATE_TRACK]
        assert rates == [100, 50, 25, 10]   # the start, then each change
        notes = [e.name for e in events if isinstance(e, Instant)]
        assert len(notes) == 3 and notes[-1].startswith("overhead: level 3 (python sampler 10 Hz), gpuscope ")
        levels = [e.value for e in events if isinstance(e, CounterSample) and e.track == "detail level"]
        assert levels and levels[-1] == 3 and levels == sorted(levels)
        assert any(e.track == "gpuscope CPU %" and e.value > 0 for e in events
                   if isinstance(e, CounterSample))
        # At 10 Hz the sampler cannot sample a thread more often than every 100 ms.
        spin = [e for e in drain(s, 1.5) if isinstance(e, StackSample) and "spin_b" in
                [f.function for f in e.frames]]
        gaps = [y.ts - x.ts for x, y in zip(spin, spin[1:], strict=False)]
        assert gaps and statistics.median(gaps) >= 0.08e9, gaps
        st = b.state()
        assert st["level"] == 3 and st["target_cpu_pct"] > 0 and st["limit_pct"] == 0
        assert st["mean_own_cpu_pct"] > 0 and st["mean_target_cpu_pct"] > 0
        assert "L3" in b.status()
        # Now the budget is generous: back to full detail, one level at a time.
        b.limit = 1.0
        events, samples = tick_until(b, s, lambda: b.level == 0)
        assert [c.level for c in b.changes] == [1, 2, 3, 2, 1, 0]
        assert [c.reason for c in b.changes[3:]] == ["under budget"] * 3
        assert s.current_hz == 100
        rates = [e.value for e in samples if isinstance(e, CounterSample) and e.track == RATE_TRACK]
        assert rates == [25, 50, 100]
        assert b.state()["detail"] == "full detail" and len(b.state()["changes"]) == 6
    finally:
        s.stop()


def drain(sampler, seconds):
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        out += sampler.poll(0.1)
    return out


def test_round_robin_over_knobs(parked):
    """Two real samplers as two knobs: each level takes detail from the next one."""
    a, b_ = PythonSampler(rate_hz=100), PythonSampler(rate_hz=40)
    b = OverheadBudget(0.02, [a, b_])
    assert b.max_level == 6
    b._apply(3)
    assert (a.current_hz, b_.current_hz) == (25, 20)
    assert b.describe() == "python sampler 25 Hz, python sampler 20 Hz"
    b._apply(6)
    assert (a.current_hz, b_.current_hz) == (10, 4)
    b._apply(0)
    assert (a.current_hz, b_.current_hz) == (100, 40) and b.describe() == "full detail"


def test_bad_limit_is_refused():
    with pytest.raises(ValueError, match="fraction of the machine"):
        OverheadBudget(1.5, [])


def test_bpf_run_time_of_own_programs():
    """BPF_ENABLE_STATS on while we hold its fd; a program of ours that runs shows
    run time in its fdinfo."""
    bcc = pytest.importorskip("bcc")
    rt = BpfRunTime(refresh_s=0, duty=None)
    if not rt.available:
        pytest.skip("the kernel would not enable BPF run-time statistics")
    prog = bcc.BPF(text="TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }")
    try:
        before = rt.seconds()
        for _ in range(20000):
            os.getppid()
        assert rt.seconds() > before
        # Duty-cycled (the default): measured in its on-windows, extrapolated.
        cycled = BpfRunTime(refresh_s=0, duty=(0.2, 0.4))
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            os.getppid()
            cycled.seconds()
        assert cycled.seconds() > 0
        cycled.close()
    finally:
        prog.cleanup()
        rt.close()


def test_attach_keeps_its_budget_and_says_so(parked, tmp_path):
    """`attach --max-overhead` far below what gpuscope costs: it lowers its detail
    during the capture, and the status line, the trace and the summary say so."""
    import json

    import tracecheck
    from conftest import GPUSCOPE

    out = tmp_path / "b.pftrace"
    p = subprocess.run(GPUSCOPE + ["attach", "-p", str(parked.pid), "-o", str(out), "-d", "20",
                                   "--no-nvml", "--max-overhead", "0.0001", "-r", "200"],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "b.summary.json").read_text())
    ov = s["overhead"]
    assert ov["limit_pct"] == pytest.approx(0.0001)
    assert ov["level"] >= 1 and ov["changes"] and ov["changes"][0]["reason"] == "over budget"
    assert ov["mean_own_cpu_pct"] > ov["limit_pct"]
    assert "overhead: gpuscope took" in p.stderr and "detail lowered" in p.stderr
    t = tracecheck.load(str(out))
    assert [v for _, v in t.counter_named("detail level")][-1] == ov["level"]
    assert t.counter_named("gpuscope CPU %") and t.counter_named("target CPU %")
    assert any(i[0].startswith("overhead: level 1 (kernel: ") for i in t.instants)
    # Kernel detail goes first (3 levels), then the sampler: 200 Hz halved.
    assert ov["level"] >= 4, ov["changes"]
    assert [v for _, v in t.counter_named(RATE_TRACK)][:2] == [200, 100]   # the start, then halved

    # A limit that is not a percentage is refused with one line, before attaching.
    for bad in ("0", "nan", "101", "x"):
        p = subprocess.run(GPUSCOPE + ["attach", "-p", str(parked.pid), "--max-overhead", bad],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert "not a percentage in (0, 100]" in p.stderr
