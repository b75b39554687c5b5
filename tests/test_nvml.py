"""The NVML poller through the whole capture pipeline.

This machine has no GPU, so no NVML. The one stand-in: gpu_targets/
libnvidia_ml_stub.c, built here as libnvidia-ml.so.1, exporting only the NVML
functions the poller calls and returning scripted values (listed in its
header). gpuscope runs with LD_LIBRARY_PATH pointing at it, so pynvml's own
loading (CDLL("libnvidia-ml.so.1")) and struct code run unchanged. The case
without NVML is covered in test_cuda.py (one notice, capture goes on).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tracecheck
from conftest import GPUSCOPE, Target

GPU_TARGETS = Path(__file__).resolve().parent / "gpu_targets"
GiB = 1 << 30
IDLE = ("import json, os, sys\nprint(json.dumps({'ready': os.getpid()}), flush=True)\n"
        "sys.stdin.readline()\n")


@pytest.fixture(scope="module")
def nvml_stub(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("nvml")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libnvidia-ml.so.1", "-o",
                    str(d / "libnvidia-ml.so.1"), str(GPU_TARGETS / "libnvidia_ml_stub.c")],
                   check=True)
    return str(d)


def test_nvml_counters_from_stub_library(tmp_path, nvml_stub):
    target = Target([sys.executable, "-c", IDLE])
    out = tmp_path / "nvml.pftrace"
    env = dict(os.environ, LD_LIBRARY_PATH=nvml_stub, STUB_NVML_PID=str(target.pid))
    try:
        p = subprocess.run(GPUSCOPE + ["attach", "-p", str(target.pid), "-o", str(out), "-d", "2.5",
                                       "-q", "--no-sched", "--no-cuda", "--no-nccl",
                                       "--nvml-hz", "20"],
                           env=env, capture_output=True, text=True, timeout=120)
    finally:
        target.kill()
    assert p.returncode == 0, p.stderr
    t = tracecheck.load(str(out))
    want = {
        "GPU0 utilization": 40, "GPU1 utilization": 50, "GPU0 memory utilization": 20,
        "GPU1 memory utilization": 21, "GPU0 memory used": GiB, "GPU1 memory used": 2 * GiB,
        "GPU0 power": 150.0, "GPU1 power": 151.0, "GPU0 SM clock": 1410,
        "GPU0 temperature": 61, "GPU1 temperature": 62,
        "GPU0 PCIe tx": 2048 * 1024, "GPU0 PCIe rx": 4096 * 1024,
        "GPU1 SM utilization by process": 77, "GPU1 memory utilization by process": 33,
        "GPU1 memory used by process": 512 << 20,
    }
    for track, value in want.items():
        samples = t.counter_named(track)
        assert samples, f"no counter track {track!r}"
        assert {v for _, v in samples} == {value}, (track, samples[:3])
    # 20 Hz for 2.5 s: tens of samples of the fast metrics, a few of the slow ones.
    assert len(t.counter_named("GPU0 utilization")) >= 20
    assert 1 <= len(t.counter_named("GPU0 PCIe rx")) <= 5
    # Per-process counters hang under the target's process track; machine-wide ones do not.
    proc_uuid = next(u for u, (pid, _) in t.processes.items() if pid == target.pid)
    by_name = {td.name: td for td in t.tracks.values() if td.HasField("counter")}
    assert by_name["GPU1 SM utilization by process"].parent_uuid == proc_uuid
    assert not by_name["GPU0 utilization"].parent_uuid
    assert any(i[0] == "uses GPU" and i[3] == {"gpu": 1} for i in t.instants)
    assert f"the target uses GPU1 (Stub GPU 1): pid {target.pid}" in p.stderr
    assert "process utilization not supported on GPU 0" in p.stderr
