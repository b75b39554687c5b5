"""The sidecar's parts on their own: PID translation against a real PID
namespace, the flight recorder's bounds, the metrics' text format, and the
refusal to serve without a token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuscope.probes.events import CounterSample, Span
from gpuscope.sidecar.flightrec import FlightRecorder
from gpuscope.sidecar.metrics import Metrics
from gpuscope.sidecar.pidns import PidNamespace


def test_translation_against_a_real_pid_namespace():
    """A namespace made with unshare, seen from outside through /proc: the same
    table the sidecar builds from /host/proc inside a pod."""
    child = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                              "sleep 30 & sleep 30 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        inner = []
        while time.monotonic() < deadline and len(inner) < 3:
            inner = [int(p) for p in os.listdir("/proc") if p.isdigit()
                     and _parent_chain_has(int(p), child.pid) and int(p) != child.pid]
            time.sleep(0.05)
        assert len(inner) >= 3, inner   # sh (ns PID 1) and two sleeps
        st = os.stat(f"/proc/{inner[0]}/ns/pid")
        ns = PidNamespace("/proc", st.st_ino, st.st_dev)
        ns.scan()
        got = {k: ns.to_ns(k) for k in inner}
        assert sorted(got.values()) == [1, 2, 3]
        for k, n in got.items():
            assert ns.to_kernel(n) == k
        assert ns.to_ns(os.getpid()) is None     # not in that namespace
        assert ns.to_kernel(999_999) is None
        sh = next(k for k, n in got.items() if n == 1)
        ns.forget(sh)
        assert ns.to_kernel(1) == sh              # re-learnt from /proc
    finally:
        os.killpg(child.pid, 9)
        child.wait()


def _parent_chain_has(pid: int, ancestor: int) -> bool:
    for _ in range(6):
        try:
            text = open(f"/proc/{pid}/stat").read()
        except OSError:
            return False
        pid = int(text.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def test_detect_refuses_a_procfs_that_is_not_the_hosts(tmp_path):
    from gpuscope.probes.source import SourceError

    with pytest.raises(SourceError, match="hostPath /proc"):
        PidNamespace.detect(str(tmp_path))
    assert PidNamespace.detect(None) is None   # the tests run in the initial namespace


def span(ts: int, n: int = 0) -> Span:
    return Span("io", "read", 10, 11, ts, ts + 1000, {"fd": 3, "bytes": n, "path": "/d/x"})


def test_flight_recorder_keeps_a_bounded_recent_window():
    s = 1_000_000_000
    fr = FlightRecorder(seconds=5, max_events=1000, max_bytes=1 << 30)
    for i in range(20):                       # 20 s of 10-event batches
        fr.add([span(i * s + j) for j in range(10)], now_ns=i * s)
    snap = fr.snapshot(now_ns=19 * s)
    assert snap and min(e.ts for e in snap) >= 14 * s
    assert [e.ts for e in snap] == sorted(e.ts for e in snap)
    fr = FlightRecorder(seconds=3600, max_events=50, max_bytes=1 << 30)
    for i in range(20):
        fr.add([span(i * s + j) for j in range(10)], now_ns=i * s)
    assert fr.events <= 50 and len(fr.snapshot(20 * s)) <= 50 and fr.evicted >= 150
    fr = FlightRecorder(seconds=3600, max_events=10**9, max_bytes=20_000)
    for i in range(100):
        fr.add([span(i * s + j) for j in range(10)], now_ns=i * s)
    assert fr.bytes <= 20_000 and fr.snapshot(100 * s)[-1].ts == 99 * s + 9


def test_flight_recorder_gives_back_the_events_it_was_fed():
    """Batches are held encoded; a snapshot decodes them to equal events, every type."""
    from gpuscope.probes.events import Frame, Instant, Loss, StackSample, ThreadName

    frames = (Frame("main", "/app/train.py", 10), Frame("__next__", "/t/dataloader.py", 7))
    batch = [ThreadName(10, 11, 1, "worker", False),
             span(2, 4096),
             Instant("proc", "fork", 10, 11, 3, {"child": 12}),
             StackSample(10, 11, 4, "running", True, frames),
             StackSample(10, 11, 5, "idle", False, frames),
             CounterSample("GPU0 utilization", "%", 6, 87.5),
             Loss("io", 7, 3, "ring buffer full"),
             Span("cuda", "cudaMemcpy", 10, 11, 8, 9, {"kind": "HtoD", "bytes": 1 << 40,
                                                       "ok": True, "ratio": 0.5})]
    fr = FlightRecorder(seconds=60)
    fr.add(batch[:4], now_ns=10)
    fr.add(batch[4:], now_ns=10)
    got = fr.snapshot(now_ns=10)
    assert got == batch
    assert got[3].frames[0] is got[4].frames[0]     # frames shared again, as the sampler does
    odd = [Instant("gpuscope", "x", 0, 0, 11, {"set": {1, 2}, "obj": Frame("f", "g", 1)})]
    fr.add(odd, now_ns=11)                          # not marshal's: pickled instead
    assert fr.snapshot(now_ns=11)[-1] == odd[0]
    assert fr.bytes < 2000 and fr.dropped == 0


def test_flight_recorder_replays_in_order_a_batch_at_a_time():
    """Batches overlap when a source delivers late; the chunks stay in time order,
    and batches that do not overlap are decoded one at a time."""
    fr = FlightRecorder(seconds=3600)
    for i in range(10):
        fr.add([span(i * 100 + j) for j in range(0, 100, 10)], now_ns=10_000)
    fr.add([span(5), span(1005)], now_ns=10_000)       # late: overlaps everything
    fr.add([span(2000 + j) for j in range(10)], now_ns=10_000)
    chunks = list(fr.chunks(10_000))
    flat = [e.ts for c in chunks for e in c]
    assert flat == sorted(flat) and len(flat) == 112
    assert [e.ts for e in chunks[-1]] == list(range(2000, 2010))
    fr = FlightRecorder(seconds=3600)
    for i in range(10):
        fr.add([span(i * 100 + j) for j in range(0, 100, 10)], now_ns=10_000)
    assert [len(c) for c in fr.chunks(10_000)] == [10] * 10


def test_flight_recorder_counts_what_its_bounds_drop():
    s = 1_000_000_000
    fr = FlightRecorder(seconds=5, max_events=10**6, max_bytes=1 << 30)
    for i in range(10):                        # one 10-event batch a second
        fr.add([span(i * s + j) for j in range(10)], now_ns=i * s)
    assert fr.evicted == 40 and fr.dropped == 0   # aged out of the window: not a drop
    fr = FlightRecorder(seconds=5, max_events=30, max_bytes=1 << 30)
    for i in range(10):
        fr.add([span(i * s + j) for j in range(10)], now_ns=i * s)
    assert fr.events == 30 and fr.evicted == 70 and fr.dropped == 70


def test_metrics_text_format_parses():
    m = Metrics()
    m.observe([span(1, 4096), span(2, 100),
               Span("cuda", "cudaLaunchKernel", 10, 11, 3, 4, {"kernel": "k"}),
               Span("cuda", "cudaMemcpy", 10, 11, 5, 9, {"kind": "HtoD", "bytes": 1 << 20}),
               CounterSample("GPU0 utilization", "%", 6, 87.0)])
    m.set("gpuscope_target_info", 1, (("pid", "7"), ("comm", 'we"ird\\name')))
    m.update_from_summary({"verdict": {"data_wait_share": 0.31, "step_ms_median": 120.0}})
    fams = {f.name: f for f in text_string_to_metric_families(m.render())}
    val = {s.name: s.value for f in fams.values() for s in f.samples}
    assert val["gpuscope_io_read_bytes_total"] == 4196
    assert fams["gpuscope_io_read_bytes"].type == "counter"
    assert val["gpuscope_cuda_kernel_launches_total"] == 1
    assert val["gpuscope_gpu_utilization_ratio"] == pytest.approx(0.87)
    assert val["gpuscope_data_wait_ratio"] == pytest.approx(0.31)
    assert val["gpuscope_step_seconds"] == pytest.approx(0.12)
    info = next(s for s in fams["gpuscope_target_info"].samples)
    assert info.labels == {"pid": "7", "comm": 'we"ird\\name'}


def test_sidecar_refuses_to_start_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GPUSCOPE_TOKEN"}
    cmd = [sys.executable, "-m", "gpuscope.collector.cli", "sidecar", "--captures",
           str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "refusing to serve the API without a token" in r.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = subprocess.run(cmd + ["--token-file", str(empty)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "is empty" in r.stderr


def test_verdict_metrics_and_stall_causes():
    from gpuscope.sidecar.metrics import STALL_CAUSES

    # Every finding kind docs/summary.md lists has its series.
    doc = (Path(__file__).resolve().parent.parent / "docs" / "summary.md").read_text()
    line = next(x for x in doc.splitlines() if x.startswith("| `verdict.findings[]`"))
    kinds = set(re.findall(r"`([a-z0-9_]+)`", line.split("one of", 1)[1].split(")", 1)[0]))
    assert kinds == set(STALL_CAUSES)

    m = Metrics()
    m.update_from_summary({"verdict": {
        "data_wait_share": 0.42, "step_ms_median": 80.0, "primary": "storage_fetch_stall",
        "breakdown": {"data_wait": 0.42, "compute": 0.5, "h2d": 0.08}}})

    def values():
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(m.render()) for s in f.samples}

    got = values()
    causes = {k[1][0][1]: v for k, v in got.items() if k[0] == "gpuscope_stall_cause"}
    assert causes["storage_fetch_stall"] == 1 and sum(causes.values()) == 1
    assert set(causes) == set(STALL_CAUSES)
    assert got[("gpuscope_step_phase_ratio", (("phase", "h2d"),))] == pytest.approx(0.08)
    assert got[("gpuscope_step_seconds", ())] == pytest.approx(0.08)
    stamp = got[("gpuscope_last_verdict_timestamp_seconds", ())]
    # No steps found: the last figures stay, with their (older) timestamp.
    m.update_from_summary({"verdict": {"input_bound": "unknown", "data_wait_share": None,
                                       "primary": None, "findings": []}})
    assert values() == got
    # A new primary moves the 1; an unknown kind still shows.
    m.update_from_summary({"verdict": {"data_wait_share": 0.01, "step_ms_median": 50.0,
                                       "primary": "some_new_kind", "breakdown": {}}})
    got = values()
    assert got[("gpuscope_stall_cause", (("cause", "some_new_kind"),))] == 1
    assert got[("gpuscope_stall_cause", (("cause", "storage_fetch_stall"),))] == 0
    assert got[("gpuscope_last_verdict_timestamp_seconds", ())] >= stamp
    assert not [k for k in got if k[0] == "gpuscope_step_phase_ratio"]


def test_exposition_follows_the_accept_header():
    m = Metrics()
    m.inc("gpuscope_io_calls_total", (("call", "read"),), 3)
    m.set("gpuscope_target_info", 1, (("pid", "7"), ("comm", "python")))
    body, ctype = m.exposition(None)
    assert ctype.startswith("text/plain; version=0.0.4") and body.decode() == m.render()
    body, ctype = m.exposition("application/openmetrics-text;version=1.0.0,"
                               "text/plain;version=0.0.4;q=0.5")
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om

    fams = {f.name: f for f in om(body.decode())}
    assert fams["gpuscope_io_calls"].type == "counter"
    assert fams["gpuscope_target"].type == "info"
    assert body.endswith(b"# EOF\n")


def test_metrics_count_the_calls_and_waits_summed_in_the_kernel():
    """A summary slice stands for many calls: the counters add its counts, not 1."""
    from gpuscope.probes.summed import IPC, OFFCPU_SUMMED

    m = Metrics()
    m.observe([span(1, 10),
               Span(IPC, "IPC: 300 calls", 10, 11, 0, 500, {
                   "calls": 300, "read": 120, "write": 180, "bytes": 9000,
                   "read_bytes": 4000, "write_bytes": 5000,
                   "syscall_ns": 2_000_000, "summed_in_kernel": True}),
               Span(OFFCPU_SUMMED, "off-CPU waits < 1 ms: 40", 10, 11, 0, 500, {
                   "calls": 40, "blocked": 30, "preempted": 10,
                   "blocked_ns": 3_000_000, "preempted_ns": 1_000_000})])
    fams = {f.name: f for f in text_string_to_metric_families(m.render())}
    calls = {s.labels["call"]: s.value for s in fams["gpuscope_io_calls"].samples}
    assert calls == {"read": 121, "write": 180}
    val = {s.name: s.value for f in fams.values() for s in f.samples}
    assert val["gpuscope_io_read_bytes_total"] == 10 + 4000   # the one-by-one read, then the sums
    assert val["gpuscope_io_write_bytes_total"] == 5000
    off = {s.labels["state"]: s.value for s in fams["gpuscope_offcpu_seconds"].samples}
    assert off == {"blocked": pytest.approx(0.003), "preempted": pytest.approx(0.001)}


def test_live_analysis_feeds_each_event_once_and_publishes_each_period():
    """One analysis at a time with the default period: every event is analysed once, as
    it passes; each finished period's result reaches the metrics (on its own thread)."""
    from gpuscope.probes.events import Frame, StackSample
    from gpuscope.sidecar.analysis import LiveAnalysis

    m = Metrics()
    la = LiveAnalysis(lambda: 7, m, rate_hz=50, every_s=10)
    fed = []
    s = 1_000_000_000
    frames = (Frame("main", "/app/train.py", 3),)
    for i in range(50):                       # 25 s of stream time, a batch per 0.5 s
        batch = [StackSample(7, 7, i * s // 2 + j, "running", True, frames) for j in range(3)]
        la.feed(batch)
        fed.append(len(la.running))
    assert max(fed) == 1                       # never two analyses fed the same events
    deadline = time.monotonic() + 10
    while ("gpuscope_analysis_seconds", ()) not in m.values and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.values[("gpuscope_analysis_seconds", ())] >= 0
    la.close()
