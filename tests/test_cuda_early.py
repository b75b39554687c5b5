"""Calls made right after the dlopen are all traced (issue 15 item 1).

gpu_targets/dlopen_calls.py dlopens the real libcudart.so.12 (nvidia-cuda-
runtime-cu12, in the target interpreter's site-packages) and at once makes
20 cudaStreamSynchronize and 10 cudaMalloc calls. Under `run` the probes are
on the file (by inode) before the child is released; under `attach` they are
put on at start for the libraries the target's interpreter can load. A copy
of the library where no search looks is probed when the kernel sees it
opened: then every call made after the probes went live must be traced, and
the window before is reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
from test_cuda import CUDART, _need
from test_verdict import SCHEMA

import tracecheck
from conftest import GPUSCOPE, Gpuscope, Target, run_attached

TARGET = Path(__file__).resolve().parent / "gpu_targets" / "dlopen_calls.py"
WANT = {"cudaStreamSynchronize": 20, "cudaMalloc": 10}


def traced(t, pid: int) -> dict[str, list]:
    out: dict[str, list] = {n: [] for n in WANT}
    for s in t.slices_on("CUDA"):
        if s.name in out and t.thread_of(s.track)[0] == pid:
            out[s.name].append(s)
    return out


def instants(t, name: str) -> list[dict]:
    return [args for n, _track, _ts, args in t.instants if n == name]


def check_all(t, did: dict) -> None:
    got = traced(t, did["pid"])
    assert {n: len(v) for n, v in got.items()} == WANT
    mallocs = sorted(got["cudaMalloc"], key=lambda s: s.start)
    assert [s.args["bytes"] for s in mallocs] == [4096 * (i + 1) for i in range(10)]
    syncs = sorted(got["cudaStreamSynchronize"], key=lambda s: s.start)
    assert [s.args["stream"] for s in syncs] == [hex(0x100 + i) for i in range(20)]


def test_run_traces_calls_right_after_dlopen(tmp_path):
    cudart = _need(CUDART)
    out = tmp_path / "run.pftrace"
    p = subprocess.run(GPUSCOPE + ["run", "-o", str(out), "--no-sched", "--no-python", "--",
                                   sys.executable, str(TARGET), cudart],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    did = json.loads(p.stdout.strip().splitlines()[-1])
    t = tracecheck.load(str(out))
    check_all(t, did)
    on = {a["library"]: a for a in instants(t, "uprobes on")}
    assert on[cudart]["found"] == "searched", on
    summary = json.loads((tmp_path / "run.summary.json").read_text())
    jsonschema.validate(summary, SCHEMA)
    lib = next(x for x in summary["gpu"]["libraries"] if x["path"] == cudart)
    assert lib["found"] == "searched"


def test_attach_traces_calls_right_after_dlopen(tmp_path):
    cudart = _need(CUDART)
    target = Target([sys.executable, str(TARGET), cudart, "--wait"])
    out = tmp_path / "attach.pftrace"
    g = Gpuscope(["attach", "-p", str(target.pid), "-o", str(out), "--no-sched", "--no-python"])
    rc, err, did = run_attached(g, target)
    assert rc == 0, err
    t = tracecheck.load(str(out))
    check_all(t, did)
    on = {a["library"]: a for a in instants(t, "uprobes on")}
    assert on[cudart]["found"] == "searched", on


def test_attach_probes_a_library_on_its_open(tmp_path):
    """Not where any search looks: probed when the kernel sees the openat."""
    lib = tmp_path / "elsewhere" / "libcudart.so.12"
    lib.parent.mkdir()
    shutil.copy(_need(CUDART), lib)
    target = Target([sys.executable, str(TARGET), str(lib), "--wait"])
    out = tmp_path / "open.pftrace"
    g = Gpuscope(["attach", "-p", str(target.pid), "-o", str(out), "--no-sched", "--no-python"])
    rc, err, did = run_attached(g, target)
    assert rc == 0, err
    t = tracecheck.load(str(out))
    ons = [(ts, a) for n, _tr, ts, a in t.instants if n == "uprobes on" and a["library"] == str(lib)]
    assert len(ons) == 1 and ons[0][1]["found"] == "on open", ons
    live = ons[0][0]
    mapped = [a for a in instants(t, "library mapped") if a["library"] == str(lib)]
    assert len(mapped) == 1 and mapped[0]["found"] == "on open"
    # Every call that started after the probes went live is traced; the ones
    # before, if any, fall in the reported window.
    got = traced(t, did["pid"])
    for name, starts in did["starts"].items():
        after = sum(1 for s in starts if s > live)
        assert len(got[name]) >= after, (name, len(got[name]), after)
        assert len(got[name]) <= len(starts)
    missed = sum(len(s) for s in did["starts"].values()) - sum(len(v) for v in got.values())
    if missed:
        assert mapped[0]["unprobed_ms"] > 0
        assert any(str(lib) in n and "not traced" in n
                   for n in json.loads((tmp_path / "open.summary.json").read_text())["notices"])
