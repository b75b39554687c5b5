"""The collector's memory over a long capture at a steady event rate (issue
14): bounded memory is a promise (flight recorder, index, interning tables
all have bounds); this shows whether RSS levels off or keeps growing.

A target reads a small file RATE times a second on two threads (IO events,
off-CPU waits, Python samples at the default 100 Hz), `gpuscope attach`
follows it for --minutes, and the collector's RSS (VmRSS, the kernel's own
count) and its viewer-index child's are read every --every seconds beside the
trace's size. The growth per
hour is the least-squares slope of RSS over the second half of the run (the
first half includes warm-up: interning tables, the index's first pages).
Prints a table; asserts nothing. The machine is shared: the load is printed.
Usage: python bench/bench_memory.py [--minutes 10] [--every 10] [--rate 500]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

PY = sys.executable
TARGET = """
import sys, threading, time
rate = float(sys.argv[1]) / 2
def reader():
    while True:
        t = time.monotonic()
        with open('/etc/hostname', 'rb') as f:
            f.read(256)
        time.sleep(max(0.0, 1 / rate - (time.monotonic() - t)))
for _ in range(2):
    threading.Thread(target=reader, daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children_rss_mb(pid: int) -> float:
    """The collector's children: its idle-priority viewer-index process."""
    total = 0.0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for kid in f.read().split():
                    try:
                        total += rss_mb(int(kid))
                    except OSError:
                        pass
    except OSError:
        pass
    return total


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den * 3600 if den else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between RSS readings")
    ap.add_argument("--rate", type=float, default=500.0, help="file reads per second")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        target = subprocess.Popen([PY, "-c", TARGET, str(a.rate)], stdout=subprocess.PIPE,
                                  text=True)
        target.stdout.readline()
        out = os.path.join(d, "mem.pftrace")
        g = subprocess.Popen([PY, "-m", "gpuscope.collector.cli", "attach", "-p", str(target.pid),
                              "-q", "-o", out], stderr=subprocess.PIPE, text=True)
        try:
            while "attached to PID" not in (g.stderr.readline() or "attached to PID"):
                pass
            print(f"load: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} CPUs; "
                  f"target {a.rate:g} reads/s; {a.minutes:g} min")
            print(f"{'t (s)':>7} {'RSS (MB)':>9} {'index (MB)':>11} {'trace (MB)':>11}")
            t0, points, kids = time.monotonic(), [], []
            while (t := time.monotonic() - t0) < a.minutes * 60 and g.poll() is None:
                points.append((t, rss_mb(g.pid)))
                kids.append((t, children_rss_mb(g.pid)))
                size = os.path.getsize(out) / 1e6 if os.path.exists(out) else 0.0
                print(f"{t:7.0f} {points[-1][1]:9.1f} {kids[-1][1]:11.1f} {size:11.1f}", flush=True)
                time.sleep(a.every)
            g.send_signal(signal.SIGINT)
            g.communicate(timeout=300)
        finally:
            if g.poll() is None:
                g.kill()
            target.kill()
        with open(os.path.join(d, "mem.summary.json")) as f:
            s = json.load(f)
    events = sum(s["events"].values())
    late = [p for p in points if p[0] >= points[-1][0] / 2]
    print(f"events: {events} ({events / max(s['duration_s'], 1e-9):.0f}/s), lost "
          f"{sum(s['lost'].values())}")
    print(f"RSS: start {points[0][1]:.1f} MB, end {points[-1][1]:.1f} MB, peak "
          f"{max(v for _, v in points):.1f} MB; growth over the second half: "
          f"{slope_per_hour(late):+.1f} MB/hour")
    late_kids = [p for p in kids if p[0] >= kids[-1][0] / 2]
    print(f"index child RSS: end {kids[-1][1]:.1f} MB, peak {max(v for _, v in kids):.1f} MB; "
          f"growth over the second half: {slope_per_hour(late_kids):+.1f} MB/hour")
    return 0


if __name__ == "__main__":
    sys.exit(main())
