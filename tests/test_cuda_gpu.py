"""What the GPU did, from the calls: device memory (issue 15 item 3), against
the real libcudart and the driver stand-in (gpu_targets/libcuda_stub.c, which
keeps its own count of what it allocated).

Run under `gpuscope run` with the stand-in on LD_LIBRARY_PATH, which is also
where gpuscope's search finds it before the target is released.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from test_cuda import CUDART, GPU_TARGETS, _need
from test_verdict import SCHEMA

from gpuscope.collector.gputime import ESTIMATE_LABEL

import tracecheck
from conftest import GPUSCOPE, Gpuscope, Target, run_attached

MiB = 1 << 20


def run_target(tmp_path: Path, script: str, *args: str, env: dict | None = None,
               flags: tuple[str, ...] = ()) -> tuple[dict, dict, tracecheck.Decoded, Path]:
    stub = tmp_path / "driver" / "libcuda.so.1"
    stub.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(stub),
                    str(GPU_TARGETS / "libcuda_stub.c")], check=True)
    out = tmp_path / f"{script}.pftrace"
    e = {**os.environ, "LD_LIBRARY_PATH": str(stub.parent), **(env or {})}
    p = subprocess.run(GPUSCOPE + ["run", "-o", str(out), "--no-sched", *flags, "--",
                                   sys.executable, str(GPU_TARGETS / script), *args],
                       capture_output=True, text=True, timeout=180, env=e)
    assert p.returncode == 0, p.stderr
    did = json.loads(p.stdout.strip().splitlines()[-1])
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    jsonschema.validate(summary, SCHEMA)
    return did, summary, tracecheck.load(str(out)), stub


def test_device_memory_matches_the_standin(tmp_path):
    did, summary, t, stub = run_target(tmp_path, "memory_calls.py", _need(CUDART),
                                       env={"STUB_CUDA_ALLOC_US": "40000"})
    assert did["cudaMalloc"] == 35 and did["bad_free"] == 1   # both failed: neither counts
    found = {x["path"]: x["found"] for x in summary["gpu"]["libraries"]}
    assert found[str(stub)] == "searched", found
    m = summary["gpu"]["memory"][str(did["pid"])]
    assert m["peak_bytes"] == did["peak"] == 5 * MiB
    assert m["allocated_bytes"] == did["allocated"] == 4 * MiB
    assert (m["allocations"], m["frees"]) == (4, 2)
    assert m["never_freed_count"] == 2 and m["never_freed_bytes"] == did["allocated"]
    left = {x["ptr"]: x for x in m["never_freed"]}
    assert set(left) == set(did["left"])
    for ptr, func in did["left"].items():
        assert left[ptr]["py"] and left[ptr]["py"].startswith(func + " ("), left[ptr]
        assert "memory_calls.py:" in left[ptr]["py"]
    assert {x["py"] for x in m["never_freed_by_line"]} == {x["py"] for x in left.values()}
    # The counter track follows the stand-in's total, call by call.
    values = [v for _, v in t.counter_named("CUDA device memory")]
    assert values == [1 * MiB, 5 * MiB, 1 * MiB, 3 * MiB, 1 * MiB, 4 * MiB, 0]
    frees = [s for s in t.slices_on("CUDA") if s.name.startswith("cuMemFree")]
    assert sorted(s.args.get("freed", 0) for s in frees) == [0, 2 * MiB, 4 * MiB]


def test_graphs_match_the_standin(tmp_path):
    did, summary, t, _ = run_target(tmp_path, "graph_calls.py", _need(CUDART),
                                    flags=("--no-python",))
    assert did["runtime"] == [35, 35, 35]
    by = {}
    for s in t.slices_on("CUDA"):
        if t.thread_of(s.track)[0] == did["pid"]:
            by.setdefault(s.name, []).append(s)
    # The real runtime's calls are there, with their errors and no ids.
    assert by["cudaStreamBeginCapture"][0].args["error"] == "cudaErrorInsufficientDriver"
    assert "graph_exec" not in by["cudaGraphInstantiate"][0].args
    begin, = by["cuStreamBeginCapture"]
    end, = by["cuStreamEndCapture"]
    assert begin.args["capture"] == end.args["capture"]
    assert end.args["graph"] == did["graph"] and end.args["kernel_count"] == did["nodes"] == 3
    assert end.args["kernels"] == "vector_add(float*, float*, float*, int) x2, foo()"
    launches = by["cuLaunchKernel"] + by["cuLaunchKernelEx"]
    assert sorted(s.args.get("captured", 0) for s in launches) == [0] + [begin.args["capture"]] * 3
    inst, = by["cuGraphInstantiate"]
    assert inst.args["graph"] == did["graph"] and inst.args["graph_exec"] == did["exec"]
    runs = by["cuGraphLaunch"]
    assert len(runs) == did["launches"] == 3
    assert all(r.args["graph_id"] == did["graph"] and r.args["kernel_count"] == 3 for r in runs)
    g = summary["gpu"]["graphs"][str(did["pid"])]
    cap, = [c for c in g["captures"] if c["graph"]]
    assert (cap["graph"], cap["kernel_count"], cap["stream"]) == (did["graph"], 3, "0x5151")
    x, = g["executables"]
    assert (x["graph_exec"], x["graph"], x["launches"], x["kernel_count"]) == \
        (did["exec"], did["graph"], 3, 3)


def test_busy_estimate_matches_the_standin(tmp_path):
    """Per stream, the estimate is the stand-in's busy time plus how late the
    syncs that waited for it returned (what "launch to sync" measures), give
    or take the few µs between a probe firing and the stand-in reading its
    clock (2 ms allowed, for a preemption there on a loaded machine)."""
    did, summary, t, _ = run_target(tmp_path, "busy_calls.py", env={"STUB_KERNEL_US": "5000"},
                                    flags=("--no-python",))
    est = summary["gpu"]["busy_estimate"][str(did["pid"])]
    assert est["label"].startswith("estimate")
    for stream, truth in did["streams"].items():
        got = est["streams"][stream]
        want_ms = (truth["busy_ns"] + truth["late_ns"]) / 1e6
        assert abs(got["busy_ms"] - want_ms) <= 2.0, (stream, got, truth)
    assert est["streams"]["0xa1"]["intervals"] == 2 and est["streams"]["0xb2"]["intervals"] == 1
    assert did["streams"]["0xa1"]["busy_ns"] == 25_000_000   # the 30 ms host gap is not busy
    steps = t.counter_named("GPU busy (estimate) 0xa1")
    assert [v for _, v in steps] == [1, 0, 1, 0]


@pytest.mark.parametrize("nvml", [False, True], ids=["estimate", "nvml-per-process"])
def test_verdict_quotes_gpu_busy(tmp_path, nvml):
    """Without NVML the verdict's GPU figure is the launch-to-sync estimate
    (about what the stand-in was busy, plus its syncs' lateness, over the
    loop); with NVML's per-process utilisation (the NVML stand-in reports
    77 % for the target) it is that."""
    stub = tmp_path / "driver" / "libcuda.so.1"
    stub.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(stub),
                    str(GPU_TARGETS / "libcuda_stub.c")], check=True)
    env = {**os.environ, "LD_LIBRARY_PATH": str(stub.parent), "STUB_KERNEL_US": "5000"}
    target = Target([sys.executable, str(GPU_TARGETS / "gpu_loop.py"), "60"], env=env)
    genv = dict(os.environ)
    if nvml:
        (tmp_path / "nvml").mkdir()
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libnvidia-ml.so.1", "-o",
                        str(tmp_path / "nvml" / "libnvidia-ml.so.1"),
                        str(GPU_TARGETS / "libnvidia_ml_stub.c")], check=True)
        genv.update(LD_LIBRARY_PATH=str(tmp_path / "nvml"), STUB_NVML_PID=str(target.pid))
    out = tmp_path / "loop.pftrace"
    g = Gpuscope(["attach", "-p", str(target.pid), "-o", str(out), "--no-sched"], env=genv)
    rc, err, did = run_attached(g, target)
    assert rc == 0, err
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    jsonschema.validate(summary, SCHEMA)
    v = summary["verdict"]
    assert v["input_bound"] != "unknown", v["headline"]
    gpu = v["gpu_busy"]
    if nvml:
        assert gpu == {"share": 0.77, "source": "nvml per-process SM utilization"}
    else:
        assert gpu["source"] == ESTIMATE_LABEL
        truth = (did["busy_ns"] + did["late_ns"]) / (did["end_ns"] - did["start_ns"])
        assert abs(gpu["share"] - truth) <= 0.1, (gpu, truth)
    assert any(f"GPU busy {gpu['share']:.0%}" in e for e in v["findings"][0]["evidence"])
