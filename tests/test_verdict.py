"""The verdict against ground truth: each scenario slows samples/train.py in
one known way; gpuscope, attached by PID, must name that cause and measure
the data-wait share within 5 points of the sample's own log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import scenarios  # samples/scenarios.py (conftest puts samples/ on the path)
from conftest import GPUSCOPE, ROOT

SCHEMA = json.loads((ROOT / "docs/summary.schema.json").read_text())
_runs: dict[str, dict] = {}


def run_once(name: str, tmp_path_factory) -> dict:
    if name not in _runs:
        _runs[name] = scenarios.run(name, str(tmp_path_factory.mktemp(name)))
    return _runs[name]


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenario_verdict_and_share(name, tmp_path_factory):
    r = run_once(name, tmp_path_factory)
    assert r["rc"] == 0, r["stderr"]
    s = r["summary"]
    jsonschema.validate(s, SCHEMA)
    v = s["verdict"]
    kinds = [f["kind"] for f in v["findings"]]
    assert r["expected"] in kinds, (v["headline"], kinds)
    if name == "ipc":  # the main thread's own unpickling, not only idle workers
        ipc = next(f for f in v["findings"] if f["kind"] == "ipc_collate_pin_bound")
        assert ipc["numbers"]["ipc_share_of_wait"] >= 0.5, ipc
    if r["expected"] in ("storage_fetch_stall", "cpu_preprocessing_stall", "ipc_collate_pin_bound",
                         "epoch_start_stall", "not_input_bound", "h2d_copy_bound", "loop_producer_stall"):
        assert v["primary"] == r["expected"], kinds  # the root cause comes first
    assert v["confidence"] in ("high", "medium")
    assert r["truth"] is not None
    assert abs(v["data_wait_share"] - r["truth"]) <= 0.05, (v["data_wait_share"], r["truth"])
    # The terminal report says it, with evidence and a fix.
    assert "verdict: " + v["headline"] in r["stderr"]
    assert "fix: " in r["stderr"]
    # The Verdict track holds the stall intervals and the findings.
    import tracecheck
    t = tracecheck.load(r["trace"])
    stalls = [x for x in t.slices if t.track_name(x.track) == "Verdict"]
    flags = {i[0] for i in t.instants if t.track_name(i[1]) == "Verdict"}
    assert set(kinds) <= flags
    if v["input_bound"] != "no":
        assert stalls and all(x.name == "waiting for data" for x in stalls)


def test_memmap_loop_names_its_batch_producer(tmp_path_factory):
    """nanoGPT's loop: no DataLoader; steps from the optimizer, the data wait named by get_batch."""
    for name in ("memmap", "memmap_slow"):
        v = run_once(name, tmp_path_factory)["summary"]["verdict"]
        assert v["steps_from"] == "optimizer steps"
        assert v["data_producers"][0]["frame"].startswith("get_batch (memmap_train.py:")
        f = v["findings"][0]
        assert any("get_batch (memmap_train.py:" in e for e in f["evidence"]), f


def test_lightning_steps_from_torch_markers(tmp_path_factory):
    v = run_once("lightning", tmp_path_factory)["summary"]["verdict"]
    assert v["steps_from"] == "DataLoader batches, one per optimizer step"
    assert v["confidence"] == "high"


@pytest.mark.parametrize("name", list(scenarios.FAST))
def test_fast_steps_count_and_median_match_the_log(name, tmp_path_factory):
    """Steps of a few ms: the count and median step time within 5% of the job's own log,
    the data-wait share within 5 points."""
    r = run_once(name, tmp_path_factory)
    assert r["rc"] == 0, r["stderr"]
    v = r["summary"]["verdict"]
    t = scenarios.truth_steps(r["log"], v["window_ns"])
    n = len(r["summary"]["steps"])
    assert abs(n - t["steps"]) <= 0.05 * t["steps"], (n, t)
    assert abs(v["step_ms_median"] - t["median_ms"]) <= 0.05 * t["median_ms"], (v["step_ms_median"], t)
    assert abs(v["data_wait_share"] - t["wall_share"]) <= 0.05, (v["data_wait_share"], t)
    assert v["confidence"] == "high" and "exact step boundaries" in v["confidence_basis"]


def test_sampled_step_boundaries_are_not_trusted_on_fast_steps(tmp_path_factory):
    """The same capture without PyTorch's markers: steps from samples, never of high confidence."""
    from gpuscope.collector import replay
    from gpuscope.collector.stalls import StallAnalysis

    r = run_once("fast_steps", tmp_path_factory)
    a = StallAnalysis(replay.target_pid(r["trace"]))
    a.feed([e for e in replay.events(r["trace"]) if getattr(e, "cat", None) != "torch"])
    v = a.result()["verdict"]
    assert v["steps_from"] == "sampled stacks"
    assert v["confidence"] != "high" and "sampled" in v["confidence_basis"]


def test_storage_evidence_names_the_files(tmp_path_factory):
    r = run_once("storage", tmp_path_factory)
    f = next(f for f in r["summary"]["verdict"]["findings"] if f["kind"] == "storage_fetch_stall")
    assert f["numbers"]["read_latency_ms_mean"] >= 20  # slowfs adds 25 ms per read
    top = r["summary"]["top_files"][0]["path"]
    assert top.endswith(".bin") and "/mnt/" in top


def test_cpu_evidence_names_the_transform(tmp_path_factory):
    r = run_once("cpu_transform", tmp_path_factory)
    frames = [fr for entry in r["summary"]["stall_frames"] for fr in entry["stack"]]
    assert any(fr.startswith("spin_torch (train.py:") for fr in frames), frames[:10]


def test_sizing_shows_its_arithmetic(tmp_path_factory):
    """1 worker, 8 items x 12 ms of transform per batch, 30 ms of compute: more workers, more cores."""
    r = run_once("cpu_transform", tmp_path_factory)
    z = r["summary"]["verdict"]["sizing"]
    assert z["worker_cpu_ms_per_batch"] >= 50 and z["workers_needed"] >= 2, z
    assert z["cores_needed_per_gpu"] >= 3 and z["speedup_without_stall"] > 1.2, z
    assert z["gpu_seen"] is False and any("cannot tell (no GPU seen)" in x for x in z["lines"])
    assert "sizing:" in r["stderr"] and "num_workers >= " in r["stderr"]


def test_h2d_evidence_from_the_cuda_probes(tmp_path_factory):
    r = run_once("h2d_copy", tmp_path_factory)
    v = r["summary"]["verdict"]
    f = next(f for f in v["findings"] if f["kind"] == "h2d_copy_bound")
    assert f["numbers"]["h2d_bytes"] >= 60e6  # at least one 60 MB copy per step was seen
    assert v["breakdown"]["h2d"] >= 0.10
    assert "host-to-device" in v["headline"].lower()


def test_training_loop_found_below_a_launcher(tmp_path_factory):
    r = run_once("launcher", tmp_path_factory)
    v = r["summary"]["verdict"]
    launcher = r["summary"]["target"]["pid"]
    assert v["training_loop"]["pid"] != launcher  # the rank, a child of the attached launcher
    assert v["training_loop"]["pid"] in r["summary"]["processes"]
    assert v["training_loops_seen"] == 1


def test_report_on_saved_trace_gives_the_same_verdict(tmp_path_factory):
    r = run_once("cpu_transform", tmp_path_factory)
    p = subprocess.run(GPUSCOPE + ["report", r["trace"], "--json"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    again = json.loads(p.stdout)
    live = r["summary"]
    assert again["verdict"]["findings"] == live["verdict"]["findings"]
    assert again["verdict"]["data_wait_share"] == live["verdict"]["data_wait_share"]
    assert again["steps"] == live["steps"]
    text = subprocess.run(GPUSCOPE + ["report", r["trace"]], capture_output=True, text=True).stdout
    assert text.startswith("verdict: " + live["verdict"]["headline"])


def test_report_gives_the_live_verdict_after_the_budget_lowered_detail(tmp_path):
    """A budget gpuscope cannot meet lowers the sampling rate and sums more in
    the kernel, at a requested rate that is not the default: the saved trace
    holds all of it (rate changes, summed waits), so `report` agrees."""
    r = scenarios.run("cpu_transform", str(tmp_path), extra=("--max-overhead", "0.1", "--rate", "200"))
    assert r["rc"] == 0, r["stderr"]
    live = r["summary"]
    assert live["overhead"]["max_level"] >= 4, live["overhead"]   # the sampler's rate too
    p = subprocess.run(GPUSCOPE + ["report", r["trace"], "--json"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["verdict"] == live["verdict"]


def test_report_rejects_a_file_that_is_not_a_trace(tmp_path):
    bad = Path(tmp_path / "x.pftrace")
    bad.write_text("hello")
    p = subprocess.run([sys.executable, "-m", "gpuscope.collector.cli", "report", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "not a Perfetto protobuf trace" in p.stderr
    assert "Traceback" not in p.stderr
