"""Capture throughput and attach time (issue 2's benchmarks). Prints figures;
asserts nothing (these machines are shared and noisy).

- events/s from probe to trace on disk, collector pinned to one core, target
  on the other, at rising syscall rates: where loss begins;
- time from `gpuscope attach` to probes live.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

GPUSCOPE = [sys.executable, "-m", "gpuscope.collector.cli"]
TARGET = r"""
import os, sys, time
rate = int(sys.argv[1]); fd = os.open("/dev/zero", os.O_RDONLY)
print("ready", flush=True); sys.stdin.readline()
end = time.monotonic() + float(sys.argv[2]); per_ms = max(1, rate // 1000); n = 0
while (now := time.monotonic()) < end:
    for _ in range(per_ms): os.read(fd, 1)
    n += per_ms
    slack = n / rate - (now - (end - float(sys.argv[2])))
    if slack > 0: time.sleep(slack)
print(n, flush=True)
"""


def one(rate: int, seconds: float = 3.0) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "b.pftrace")
        t = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", TARGET, str(rate),
                              str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        t.stdout.readline()
        g = subprocess.Popen(["taskset", "-c", "0", *GPUSCOPE, "attach", "-p", str(t.pid), "-o", out,
                              "-q", "--no-sched"], stderr=subprocess.PIPE, text=True)
        while "attached" not in g.stderr.readline():
            pass
        t.stdin.write("go\n")
        t.stdin.flush()
        calls = int(t.stdout.readline())
        t.wait()
        g.wait()
        s = json.loads(open(out.replace(".pftrace", ".summary.json")).read())
        return {"rate": rate, "calls": calls, "events": s["events"]["io"], "lost": s["lost"]["io"],
                "attach_s": s["attach_s"], "mb": s["trace_bytes"] / 1e6,
                "achieved": calls / seconds}


def main() -> None:
    print("IO events from probe to trace on disk (collector on 1 core, target on the other)")
    print(f"{'target calls/s':>15} {'events':>9} {'lost':>8} {'loss %':>7} {'trace MB':>9}")
    attach = []
    for rate in (10_000, 30_000, 60_000, 100_000, 200_000):
        r = one(rate)
        attach.append(r["attach_s"])
        loss = 100 * r["lost"] / max(1, r["calls"])
        print(f"{r['achieved']:>15,.0f} {r['events']:>9,} {r['lost']:>8,} {loss:>6.1f}% {r['mb']:>9.1f}")
    print(f"time from attach to probes live: median {sorted(attach)[len(attach) // 2]:.2f}s "
          f"(min {min(attach):.2f}s, max {max(attach):.2f}s; BCC compiles the programs each time)")


if __name__ == "__main__":
    main()
