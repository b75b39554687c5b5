"""The verdict's ground-truth scenarios: samples/train.py slowed in one way
each, attached to by PID, and its own log of where the loop spent its time.
Used by `make demo` and tests/test_verdict.py; runnable by hand:

    .venv/bin/python samples/scenarios.py storage [--seconds 8]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
PY = sys.executable

# name -> (train.py flags, slowfs read latency ms or None, expected finding kind)
SCENARIOS = {
    "compute_bound": (["--workers", "2", "--compute-ms", "150"], None, "not_input_bound"),
    "storage": (["--workers", "2", "--compute-ms", "30"], 25, "storage_fetch_stall"),
    "cpu_transform": (["--workers", "1", "--transform-ms", "12", "--compute-ms", "30"], None,
                      "cpu_preprocessing_stall"),
    "no_workers": (["--workers", "0", "--transform-ms", "4", "--compute-ms", "30"], None,
                   "too_few_workers"),
    "too_few_workers": (["--workers", "1", "--transform-ms", "8", "--compute-ms", "30"], None,
                        "too_few_workers"),
    "too_many_workers": (["--workers", "8", "--transform-ms", "6", "--compute-ms", "30"], None,
                         "too_many_workers"),
    "ipc": (["--workers", "2", "--payload-floats", "300000", "--compute-ms", "30"], None,
            "ipc_collate_pin_bound"),
    "epoch_start": (["--workers", "2", "--no-persistent-workers", "--epoch-batches", "4",
                     "--worker-init-ms", "400", "--compute-ms", "30"], None, "epoch_start_stall"),
    # The GPU driver cannot exist here: samples/standin/libcuda_standin.c stands in for
    # it, and gpuscope's CUDA probes attach to it as to the real libcuda.so.1.
    "h2d_copy": (["--workers", "2", "--compute-ms", "40", "--h2d-standin", "{standin}",
                  "--h2d-mb", "60"], None, "h2d_copy_bound"),
}

# Loops other than samples/train.py's: no DataLoader (nanoGPT's memmap get_batch), a
# framework's (Lightning's Trainer).
SCENARIOS["memmap"] = ([], None, "not_input_bound")
SCENARIOS["memmap_slow"] = (["--get-batch-ms", "40"], None, "loop_producer_stall")
SCENARIOS["lightning"] = (["--workers", "1", "--transform-ms", "12", "--compute-ms", "30"], None,
                          "cpu_preprocessing_stall")
SCRIPTS = {"memmap": "samples/memmap_train.py", "memmap_slow": "samples/memmap_train.py",
           "lightning": "samples/lightning_train.py"}

# Fast steps (a few ms on an idle machine), where sampled stacks cannot place
# step boundaries: the step count and median must match the log's.
FAST = {
    # torchdata's StatefulDataLoader: a DataLoader subclass with its own iterators.
    "fast_steps": (["--workers", "4", "--compute-ms", "2", "--stateful"], None, None),
    # A DataLoader rebuilt (its workers restarted) every epoch of 256 one-item batches.
    "fast_epochs": (["--workers", "2", "--batch", "1", "--compute-ms", "0", "--no-persistent-workers"],
                    None, None),
}

# Started under a launcher (as torchrun starts ranks): gpuscope attaches to the
# launcher's PID and must find the training loop in its child.
LAUNCHED = {"launcher": "cpu_transform"}
SCENARIOS["launcher"] = SCENARIOS["cpu_transform"]
LAUNCHER = "import subprocess, sys\nsys.exit(subprocess.call([sys.executable] + sys.argv[1:]))"


def build_standin(workdir: str) -> str:
    """samples/standin/libcuda_standin.c as libcuda.so.1 (gcc)."""
    out = os.path.join(workdir, "standin", "libcuda.so.1")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o", out,
                    str(ROOT / "samples/standin/libcuda_standin.c")], check=True)
    return out


def run(name: str, workdir: str, seconds: float = 8.0, warmup: float = 3.0,
        trace_name: str | None = None, quiet: bool = True, extra: tuple[str, ...] = ()) -> dict:
    flags, latency, expected = SCENARIOS[name] if name in SCENARIOS else FAST[name]
    if "{standin}" in flags:
        flags = [build_standin(workdir) if f == "{standin}" else f for f in flags]
    data = os.path.join(workdir, "data")
    subprocess.run([PY, str(ROOT / "samples/train.py"), "--data", data, "--make-data", "256",
                    "--steps", "1", "--workers", "0", "--compute-ms", "0"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs = None
    if latency:
        mnt = os.path.join(workdir, "mnt")
        fs = subprocess.Popen([PY, str(ROOT / "samples/slowfs.py"), data, mnt,
                               "--latency-ms", str(latency)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.listdir(mnt) if os.path.isdir(mnt) else True:
            if time.monotonic() > deadline:
                raise RuntimeError("slowfs did not mount")
            time.sleep(0.1)
        data = mnt
    log = os.path.join(workdir, "truth.jsonl")
    launcher = [PY, "-c", LAUNCHER] if name in LAUNCHED else [PY]
    script = str(ROOT / SCRIPTS.get(name, "samples/train.py"))
    job = subprocess.Popen([*launcher, script, "--data", data, *flags, "--log", log],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           start_new_session=True)
    try:
        pid = json.loads(job.stdout.readline())["ready"]
        if name in LAUNCHED:
            pid = job.pid  # attach to the launcher, not to the training process
        time.sleep(warmup)
        trace = os.path.join(workdir, f"{trace_name or name}.pftrace")
        gpu = [] if expected == "h2d_copy_bound" else ["--no-cuda", "--no-nccl"]
        cmd = [PY, "-m", "gpuscope.collector.cli", "attach", "-p", str(pid), "-d", str(seconds),
               "-o", trace, "--no-nvml", *gpu, "--torch", *extra] + (["-q"] if quiet else [])
        p = subprocess.run(cmd, capture_output=quiet, text=True, timeout=seconds + 120)
        summary = json.loads(Path(trace).with_suffix(".summary.json").read_text())
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        if fs:
            subprocess.run(["umount", "-l", os.path.join(workdir, "mnt")], check=False)
            fs.kill()
            fs.wait()
    return {"name": name, "expected": expected, "summary": summary, "stderr": p.stderr or "",
            "rc": p.returncode, "truth": truth_share(log, summary), "trace": trace, "log": log}


def truth_share(log: str, summary: dict) -> float | None:
    """The sample's own data-wait share over the steps gpuscope analysed."""
    window = (summary.get("verdict") or {}).get("window_ns")
    if not window:
        return None
    rows = [json.loads(line) for line in open(log)]
    rows = [r for r in rows if window[0] - 1e6 <= r["start_ns"] and r["start_ns"] + r["data_ns"] + r["compute_ns"] <= window[1] + 50e6]
    data = sum(r["data_ns"] for r in rows)
    total = sum(r["data_ns"] + r["compute_ns"] for r in rows)
    return data / total if total else None


def truth_steps(log: str, window: list[int]) -> dict:
    """The log's own steps that start in the verdict's window: how many, their
    median time start to start (the loop's iteration time, as nanoGPT logs it),
    and the data-wait share of that wall time."""
    rows = [json.loads(line) for line in open(log)]
    rows = [r for r in rows if window[0] - 1e6 <= r["start_ns"] < window[1] - 1e6]
    periods = sorted(b["start_ns"] - a["start_ns"] for a, b in zip(rows, rows[1:], strict=False))
    wall = rows[-1]["start_ns"] - rows[0]["start_ns"] if len(rows) > 1 else 0
    return {"steps": len(rows), "median_ms": periods[len(periods) // 2] / 1e6 if periods else None,
            "wall_share": sum(r["data_ns"] for r in rows[:-1]) / wall if wall else None}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=list(SCENARIOS) + list(FAST))
    ap.add_argument("--seconds", type=float, default=8)
    a = ap.parse_args()
    for n in a.names:
        with tempfile.TemporaryDirectory() as d:
            r = run(n, d, a.seconds)
            v = r["summary"].get("verdict", {})
            kinds = [f["kind"] for f in v.get("findings", [])]
            print(f"{n:18} expect {r['expected'] or '-':24} got {kinds} share {v.get('data_wait_share')} "
                  f"truth {r['truth'] and round(r['truth'], 4)} conf {v.get('confidence')} rc {r['rc']}")
            if v.get("window_ns"):
                t = truth_steps(r["log"], v["window_ns"])
                print(f"{'':18} steps {len(r['summary']['steps'])} (log {t['steps']}), median "
                      f"{v['step_ms_median']} ms (log {t['median_ms'] and round(t['median_ms'], 2)}), "
                      f"from {v.get('steps_from')}")
            if r["rc"]:
                print(r["stderr"][-2000:])
