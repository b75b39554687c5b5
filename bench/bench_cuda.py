"""Cost of the CUDA probes, measured side by side in one run (prints, asserts nothing).

One target process (tests/gpu_targets/call_loop.c) calls the real
libcudart.so.12's cudaStreamSynchronize (without a GPU it returns 35 at once:
the call itself costs a few ns, so what is measured is the probes) in a tight
loop, three ways, alternating, in the same process:

  bare      no probes
  bpftrace  count-only uprobe + uretprobe on the same function (the floor)
  gpuscope  gpuscope's uprobe + uretprobe + ring buffer event, with the
            collector-side decode running (KernelProbes + CudaProbe)

Prints ns per call for each, the per-call cost over bare, the ratio of
gpuscope's cost to bpftrace's, and the target's slowdown.

    sudo .venv/bin/python bench/bench_cuda.py [--calls 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUDART = (Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
          / "site-packages" / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")
SYMBOL = "cudaStreamSynchronize"


class LoopTarget:
    def __init__(self, exe: str):
        self.proc = subprocess.Popen([exe, str(CUDART), SYMBOL], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = json.loads(self.proc.stdout.readline())["ready"]

    def run(self, calls: int, probed: bool) -> float:
        self.proc.stdin.write(f"{calls} {'probed' if probed else 'bare'}\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        if "error" in r:
            raise RuntimeError(r["error"])
        return r["ns"] / calls

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def with_bpftrace(target: LoopTarget, calls: int) -> float:
    prog = (f"uprobe:{CUDART}:{SYMBOL} {{ @calls = count(); }} "
            f"uretprobe:{CUDART}:{SYMBOL} {{ @returns = count(); }}")
    bt = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        return target.run(calls, probed=True)  # waits for the breakpoint itself
    finally:
        bt.terminate()
        bt.wait(timeout=30)


def with_gpuscope(target: LoopTarget, calls: int) -> tuple[float, int, int]:
    from gpuscope.probes.cuda import CudaProbe
    from gpuscope.probes.kernel import KernelProbes

    kp = KernelProbes([CudaProbe(driver=False)])
    kp.start([target.pid])
    events = 0
    stop = threading.Event()

    def pump():
        nonlocal events
        while not stop.is_set():
            events += len(kp.poll(0.05))

    t = threading.Thread(target=pump)
    t.start()
    try:
        per_call = target.run(calls, probed=True)
    finally:
        time.sleep(0.2)
        stop.set()
        t.join()
        events += len(kp.drain())
        lost = kp.stats()["lost"]
        kp.stop()
    return per_call, events, lost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not CUDART.exists():
        sys.exit(f"bench_cuda: {CUDART} missing (pip install nvidia-cuda-runtime-cu12)")
    if shutil.which("bpftrace") is None:
        sys.exit("bench_cuda: bpftrace not installed (apt-get install bpftrace)")
    with tempfile.TemporaryDirectory() as d:
        exe = f"{d}/call_loop"
        subprocess.run(["gcc", "-O2", "-o", exe, str(ROOT / "tests/gpu_targets/call_loop.c"),
                        "-ldl"], check=True)
        target = LoopTarget(exe)
        bare, bt, gs, info = [], [], [], []
        try:
            target.run(10_000, probed=False)  # warm up
            for _ in range(a.rounds):
                bare.append(target.run(a.calls, probed=False))
                bt.append(with_bpftrace(target, a.calls))
                bare.append(target.run(a.calls, probed=False))
                per_call, events, lost = with_gpuscope(target, a.calls)
                gs.append(per_call)
                info.append((events, lost))
        finally:
            target.close()
    b, t, g = statistics.median(bare), statistics.median(bt), statistics.median(gs)
    print(f"{SYMBOL} in {CUDART.name}, {a.calls} calls x {a.rounds} rounds (medians)")
    print(f"  bare                          {b:9.0f} ns/call")
    print(f"  bpftrace count-only probes    {t:9.0f} ns/call  (+{t - b:.0f} ns)")
    print(f"  gpuscope probes + events      {g:9.0f} ns/call  (+{g - b:.0f} ns)")
    print(f"  gpuscope cost / bpftrace cost  {(g - b) / max(t - b, 1):8.2f}x")
    print(f"  target slowdown: bpftrace {t / b:.0f}x, gpuscope {g / b:.0f}x "
          "(tight loop of probed calls)")
    print("  gpuscope events per round (delivered, lost): " +
          ", ".join(f"({e}, {lost})" for e, lost in info))


if __name__ == "__main__":
    main()
