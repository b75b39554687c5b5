"""Python sampler benchmark: gpuscope vs `py-spy record --nonblocking`, same run.

1. CPU time per whole-process sample and the maximum rate, on a 4-thread target
   (tests/targets/parked.py: 3 idle threads + 1 spinning), for gpuscope's
   PythonSampler (in this process, its own thread) and py-spy (a child process,
   CPU from its rusage) at the same rates; "max" asks both for 20 kHz.
2. Slowdown of a CPU-bound target loop with each sampler at 100 Hz and 1 kHz,
   phases interleaved with baselines in one run.
3. Slowdown of a CPU-bound thread in the *sampler's* process (the collector's
   GIL contention) with gpuscope at 100 Hz and 1 kHz.

Prints figures and ratios; asserts nothing (machines are noisy).
Usage: python bench/bench_sampler.py [--python PATH] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gpuscope.probes.events import StackSample
from gpuscope.probes.sampler import PythonSampler

ROOT = Path(__file__).resolve().parent.parent
PARKED = ROOT / "tests" / "targets" / "parked.py"
PYSPY = Path(sys.executable).parent / "py-spy"
LOOP = """
import sys, time
print("ready", flush=True)
n, end = 0, time.monotonic() + 0.25
while True:
    n += 1
    if n % 10000 == 0 and time.monotonic() >= end:
        print(n, flush=True)
        n, end = 0, end + 0.25
"""


def pick_python() -> str:
    for v in ("3.12.1", "3.11.7", "3.13.0", "3.10.13"):
        p = Path(os.path.expanduser(f"~/.pyenv/versions/{v}/bin/python3"))
        if p.exists():
            return str(p)
    return "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable


def spawn(cmd: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{cmd} did not start")
    return proc


def ours(pid: int, rate: float, seconds: float, pids: list[int] | None = None) -> dict:
    s = PythonSampler(rate_hz=rate)
    c0, t0 = time.process_time(), time.monotonic()
    s.start(pids or [pid])
    n = 0
    end = t0 + seconds
    while time.monotonic() < end:
        n += sum(isinstance(e, StackSample) for e in s.poll(0.1))
    stats = s.stats()
    s.stop()
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    ticks = max(stats["ticks"], 1)
    return {"rate": stats["ticks"] / wall, "threads": stats["threads"], "cpu_per_sample_us": cpu / ticks * 1e6,
            "cpu_share": cpu / wall, "thread_samples": n, "lost": stats["lost"],
            "late": stats["late"], "reused": stats.get("reused", 0)}


def pyspy(pid: int, rate: float, seconds: float, threads: int) -> dict | None:
    """py-spy's "Samples" counts thread stacks (with --idle: every thread each tick),
    so ticks = samples / threads. It is stopped with SIGINT after `seconds`, like Ctrl-C."""
    if not PYSPY.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen([str(PYSPY), "record", "--pid", str(pid), "--rate", str(int(rate)),
                                 "--duration", str(int(seconds) + 60), "--nonblocking", "--idle",
                                 "--format", "raw", "--output", out.name],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(seconds)
        proc.send_signal(signal.SIGINT)
        text = proc.stdout.read()
        _, _, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
    m = re.search(r"Samples: (\d+) Errors: (\d+)", text)
    if not m:
        return {"error": text.strip()[-200:]}
    ticks, errors = int(m.group(1)) / threads, int(m.group(2))
    cpu = ru.ru_utime + ru.ru_stime
    return {"rate": ticks / wall, "cpu_per_sample_us": cpu / max(ticks, 1) * 1e6,
            "cpu_share": cpu / wall, "errors": errors}


def loop_rate(proc: subprocess.Popen, seconds: float) -> float:
    """Median iterations per 0.25 s window of the loop target over `seconds`."""
    vals, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            vals.append(int(proc.stdout.readline()))
    return statistics.median(vals[1:] or vals)


def phase_with(kind: str, rate: float, proc: subprocess.Popen, seconds: float) -> float:
    if kind == "gpuscope":
        s = PythonSampler(rate_hz=rate)
        s.start([proc.pid])
        stop = threading.Event()
        drain = threading.Thread(target=lambda: [s.poll(0.1) for _ in iter(stop.is_set, True)])
        drain.start()
        try:
            return loop_rate(proc, seconds)
        finally:
            stop.set()
            drain.join()
            s.stop()
    spy = subprocess.Popen([str(PYSPY), "record", "--pid", str(proc.pid), "--rate", str(int(rate)),
                            "--duration", str(int(seconds) + 5), "--nonblocking", "--idle",
                            "--format", "raw", "--output", os.devnull],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        return loop_rate(proc, seconds)
    finally:
        spy.kill()
        spy.wait()


def collector_contention(pid: int, rate: float, seconds: float) -> float:
    """Iterations/s of a pure-Python loop in this process while the sampler runs."""
    s = PythonSampler(rate_hz=rate) if rate else None
    if s:
        s.start([pid])
    n, end = 0, time.monotonic() + seconds
    last_poll = time.monotonic()
    while True:
        n += 1
        if n % 5000 == 0:
            now = time.monotonic()
            if now >= end:
                break
            if s and now - last_poll > 0.1:
                s.poll(0)
                last_poll = now
    if s:
        s.stop()
    return n / seconds


def job_cpu_per_tick(seconds: float) -> None:
    """The input-bound job of bench_overhead (a main loop and one worker, both busy, 5
    Python threads in 2 processes) at 100 Hz: every thread wakes often, so little is reused."""
    from gpuscope.probes import procfs

    with tempfile.TemporaryDirectory() as d:
        job = subprocess.Popen([sys.executable, str(ROOT / "samples/overhead_job.py"), "--mode", "input",
                                "--log", os.path.join(d, "steps.jsonl")], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
        try:
            job.stdout.readline()
            time.sleep(2)
            pids = procfs.descendants(job.pid)
            for _ in range(2):
                a = ours(job.pid, 100, seconds, pids)
                print(f"100 Hz: {a['cpu_per_sample_us']:6.0f} µs CPU per tick ({a['threads']} threads), "
                      f"{a['cpu_share']:.1%} of a core, reused {a['reused']} of {a['thread_samples']}, "
                      f"lost {a['lost']}")
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=pick_python())
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    sec = args.seconds
    out = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                         capture_output=True, text=True).stdout.strip()
    print(f"target interpreter: {args.python} ({out}); {os.cpu_count()} CPUs; py-spy: "
          f"{'yes' if PYSPY.exists() else 'missing'}")

    print("\n== CPU per whole-process sample (4 threads) and rate ==")
    target = spawn([args.python, str(PARKED)])
    try:
        for rate in (100, 1000, 20_000):
            a = ours(target.pid, rate, sec)
            b = pyspy(target.pid, rate, sec, a["threads"] or 4)
            label = "max" if rate == 20_000 else f"{rate} Hz"
            print(f"{label:>7}: gpuscope {a['rate']:7.0f}/s, {a['cpu_per_sample_us']:6.0f} µs CPU/sample, "
                  f"{a['cpu_share']:.0%} of a core, lost {a['lost']}, late {a['late']}")
            if b and "rate" in b:
                print(f"{'':>7}  py-spy   {b['rate']:7.0f}/s, {b['cpu_per_sample_us']:6.0f} µs CPU/sample, "
                      f"{b['cpu_share']:.0%} of a core, errors {b['errors']}")
                print(f"{'':>7}  ratio gpuscope/py-spy CPU per sample: "
                      f"{a['cpu_per_sample_us'] / max(b['cpu_per_sample_us'], 1e-9):.1f}x; "
                      f"rate {a['rate'] / max(b['rate'], 1e-9):.2f}x")
            elif b:
                print(f"{'':>7}  py-spy failed: {b['error']}")
        print("\n== GIL contention in the collector process (pure-Python loop beside the sampler) ==")
        base = collector_contention(target.pid, 0, sec)
        for rate in (100, 1000):
            r = collector_contention(target.pid, rate, sec)
            print(f"gpuscope {rate:>5} Hz: collector loop at {r / base:.2f}x of its speed alone")
    finally:
        target.kill()
        target.wait()

    print("\n== CPU per tick on a busy DataLoader job (samples/overhead_job.py --mode input) ==")
    job_cpu_per_tick(sec)

    print("\n== Target slowdown: CPU-bound loop, median iterations per 0.25 s ==")
    loop = spawn([args.python, "-c", LOOP])
    try:
        base1 = loop_rate(loop, sec)
        rows = []
        for kind in ("gpuscope", "py-spy"):
            if kind == "py-spy" and not PYSPY.exists():
                continue
            for rate in (100, 1000):
                rows.append((kind, rate, phase_with(kind, rate, loop, sec)))
        base2 = loop_rate(loop, sec)
        base = (base1 + base2) / 2
        print(f"baseline: {base1:.0f} then {base2:.0f} iterations/0.25 s")
        for kind, rate, r in rows:
            print(f"{kind:>8} {rate:>5} Hz: {r / base:.3f}x of baseline speed (slowdown {base / r:.3f}x)")
    finally:
        loop.kill()
        loop.wait()
    print(f"\nbench process rusage: {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.1f} s user")


if __name__ == "__main__":
    main()
