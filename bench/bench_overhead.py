"""What gpuscope costs the job it watches (issue 11), side by side in one run.

For each job, the SAME target process runs through interleaved phases: off, tool 1
on, off, tool 2 on, off, ... Each attached phase's steps/s (from the target's own
log) is compared with the mean of the unattached phases either side of it, so
drift and the neighbours' noise cancel. Slowdown = time per step attached /
unattached - 1. gpuscope's own CPU (user + sys of the collector process, all
threads, over the measured window only: BCC's compile before "attached" and the
verdict after Ctrl-C are left out), its RSS, the events/s it took in and the
events lost (from the summary it writes) are printed beside.

Jobs (samples/overhead_job.py, samples/train.py):
  a  CPU-saturated input-bound: 1 worker with a CPU-heavy transform, MLP main loop
  b  storage-bound: samples/train.py, 2 workers reading a samples/slowfs.py mount
  c  compute-bound control: cheap items, the main loop on one core, a core free
Tools: gpuscope attach at defaults and with sources switched off,
`py-spy record --subprocesses --nonblocking -r 100` (the same rate), and (jobs a, c)
torch.profiler(activities=[CPU], with_stack=True, record_shapes=True) in the job's
main process. It cannot attach, so the job (--profiler-signals) starts it on SIGUSR1
and stops it on SIGUSR2, each acked on stdout; the window opens 1 s after the start
and closes before the stop, whose post-processing (printed as "stop") is left out
like gpuscope's verdict. Its CPU is the job's own, so for that row CPU is "-" (the
cost shows in CPU/step) and RSS is the job main process's growth over the window
("+N j"), not a profiler process's RSS.

Prints a table; asserts nothing (the machine is shared and noisy: repeat).
Usage: python bench/bench_overhead.py [--quick] [--jobs a,b,c] [--tools T1,T2] [--phase S]
                                      [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuscope.probes import procfs

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PYSPY = Path(PY).parent / "py-spy"
GPUSCOPE = [PY, "-m", "gpuscope.collector.cli", "attach"]
HZ = os.sysconf("SC_CLK_TCK")
NO_GPU = ["--no-cuda", "--no-nccl", "--no-nvml"]

# name -> extra `gpuscope attach` flags (None: py-spy; TORCH: torch.profiler inside the job).
# The kernel probes for IO and processes cannot be switched off, so "python" and "sched"
# are each measured on top of them.
TORCH = "torch.profiler stack+shapes (main proc)"  # CPU, with_stack, record_shapes
TOOLS: dict[str, list[str] | str | None] = {
    "gpuscope defaults": [],
    "gpuscope no budget (--max-overhead 100)": ["--max-overhead", "100"],
    "gpuscope --no-python": ["--no-python"],
    "gpuscope --no-sched": ["--no-sched"],
    "gpuscope --torch": ["--torch"],   # with PyTorch's step markers (uprobes, opt-in)
    "gpuscope io+proc only": ["--no-python", "--no-sched", *NO_GPU],
    "gpuscope io+proc+python": ["--no-sched", *NO_GPU],
    "gpuscope io+proc+sched": ["--no-python", *NO_GPU],
    "py-spy -r 100 --subprocesses": None,
    TORCH: TORCH,
}
JOB_TOOLS = {
    "a": list(TOOLS),
    "b": ["gpuscope defaults", "gpuscope io+proc only", "py-spy -r 100 --subprocesses"],
    "c": ["gpuscope defaults", "py-spy -r 100 --subprocesses", TORCH],
}
QUICK_TOOLS = ["gpuscope defaults", "gpuscope no budget (--max-overhead 100)",
               "gpuscope io+proc only", "py-spy -r 100 --subprocesses", TORCH]
JOB_NAMES = {"a": "CPU-saturated input-bound", "b": "storage-bound (slowfs 25 ms/read)",
             "c": "compute-bound control"}


def cpu_s(pid: int) -> float:
    """utime + stime of every thread of pid, seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle (/proc/stat), for the others' share."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / HZ


def tree_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_s(pid)
        except (OSError, IndexError):
            pass
    return total


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1]) / 1024
    return out.get("VmRSS", 0.0), out.get("VmHWM", 0.0)


class Job:
    """One target process, its step log and whatever it needs (a FUSE mount)."""

    def __init__(self, kind: str, workdir: str):
        self.kind, self.workdir = kind, workdir
        self.log = os.path.join(workdir, f"steps-{kind}.jsonl")
        self.fs = None
        self.mnt = os.path.join(workdir, "mnt")
        if kind == "b":
            data = os.path.join(workdir, "data")
            subprocess.run([PY, str(ROOT / "samples/train.py"), "--data", data, "--make-data", "256",
                            "--steps", "1", "--workers", "0", "--compute-ms", "0"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.fs = subprocess.Popen([PY, str(ROOT / "samples/slowfs.py"), data, self.mnt,
                                        "--latency-ms", "25"], stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while not (os.path.isdir(self.mnt) and os.listdir(self.mnt)):
                if time.monotonic() > deadline:
                    raise RuntimeError("slowfs did not mount")
                time.sleep(0.1)
            cmd = [PY, str(ROOT / "samples/train.py"), "--data", self.mnt, "--workers", "2",
                   "--compute-ms", "30", "--log", self.log]
        else:
            cmd = [PY, str(ROOT / "samples/overhead_job.py"), "--mode",
                   "input" if kind == "a" else "compute", "--log", self.log, "--profiler-signals"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        self.pid = json.loads(self.proc.stdout.readline())["ready"]

    def torch_profiler(self, on: bool) -> dict:
        """Switch torch.profiler in the job on or off; returns its ack once done."""
        os.kill(self.pid, signal.SIGUSR1 if on else signal.SIGUSR2)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the job exited on switching torch.profiler")
        return json.loads(line)

    def tree(self) -> list[int]:
        return procfs.descendants(self.pid)

    def steps_per_s(self, t0: int, t1: int) -> float:
        """Steps ending in [t0, t1] (CLOCK_MONOTONIC ns) per second."""
        n = 0
        with open(self.log) as f:
            for line in f:
                d = json.loads(line)
                t = d.get("t") or d["start_ns"] + d["data_ns"] + d["compute_ns"]
                n += t0 <= t <= t1
        return n / ((t1 - t0) / 1e9)

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.fs:
            subprocess.run(["umount", "-l", self.mnt], check=False)
            self.fs.kill()
            self.fs.wait()


def others_pct(job: Job, m0: float, j0: float, t0: int, profiler_s: float = 0.0) -> float:
    """CPU that neither the job nor the profiler used during the window, % of the machine:
    the other load on a shared machine, which makes that phase's figure noisy."""
    wall = (time.monotonic_ns() - t0) / 1e9 * os.cpu_count()
    return 100 * (machine_busy_s() - m0 - (tree_cpu_s(job.tree()) - j0) - profiler_s) / wall


def phase_off(job: Job, seconds: float) -> dict:
    m0, j0, t0 = machine_busy_s(), tree_cpu_s(job.tree()), time.monotonic_ns()
    time.sleep(seconds)
    return {"window": (t0, time.monotonic_ns()), "job_cpu": tree_cpu_s(job.tree()) - j0,
            "others": others_pct(job, m0, j0, t0)}


def phase_torch(job: Job, seconds: float) -> dict:
    """torch.profiler runs in the job's main thread, so its CPU is the job's (in CPU/step)
    and its memory is the job's RSS growth over the window. The stop's post-processing
    (seconds, see stop_s) happens after the window, as the export would."""
    job.torch_profiler(True)
    time.sleep(1.0)  # like the others: the first second is not the steady state
    m0, j0, r0 = machine_busy_s(), tree_cpu_s(job.tree()), rss_mb(job.pid)[0]
    t0 = time.monotonic_ns()
    time.sleep(seconds)
    t1 = time.monotonic_ns()
    others = others_pct(job, m0, j0, t0)
    job_cpu = tree_cpu_s(job.tree()) - j0
    rss_growth = rss_mb(job.pid)[0] - r0
    ack = job.torch_profiler(False)
    time.sleep(1.0)
    return {"window": (t0, t1), "others": others, "job_cpu": job_cpu, "cpu_per_s": None,
            "rss": None, "rss_growth": rss_growth, "stop_s": ack.get("stop_s")}


def phase_on(job: Job, tool: str, seconds: float, workdir: str) -> dict:
    flags = TOOLS[tool]
    if flags == TORCH:
        return phase_torch(job, seconds)
    trace = os.path.join(workdir, "bench.pftrace")
    if flags is None:
        cmd = [str(PYSPY), "record", "--pid", str(job.pid), "--rate", "100", "--subprocesses",
               "--nonblocking", "--format", "raw", "--output", os.path.join(workdir, "pyspy.txt")]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
    else:
        cmd = [*GPUSCOPE, "-p", str(job.pid), "-o", trace, "-q", *flags]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while True:
            line = p.stderr.readline()
            if not line or "attached" in line:
                break
        if p.poll() is not None:
            raise RuntimeError(f"gpuscope failed: {line}{p.stderr.read()[-500:]}")
        time.sleep(1.0)  # first ticks, seeding from /proc: not the steady state
    m0, j0 = machine_busy_s(), tree_cpu_s(job.tree())
    c0, t0 = cpu_s(p.pid), time.monotonic_ns()
    time.sleep(seconds)
    c1, t1 = cpu_s(p.pid), time.monotonic_ns()
    others = others_pct(job, m0, j0, t0, c1 - c0)
    job_cpu = tree_cpu_s(job.tree()) - j0
    rss, hwm = rss_mb(p.pid)
    p.send_signal(signal.SIGINT)
    try:
        p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
    out = {"window": (t0, t1), "others": others, "job_cpu": job_cpu, "cpu_per_s": (c1 - c0) / ((t1 - t0) / 1e9), "rss": rss, "hwm": hwm}
    if flags is not None:
        s = json.loads(Path(trace).with_suffix(".summary.json").read_text())
        dur = max(s["duration_s"], 1e-9)
        out["events_per_s"] = sum(s["events"].values()) / dur
        out["kernel_per_s"] = sum(v for k, v in s["events"].items() if k not in ("python", "nvml")) / dur
        out["lost"] = sum(s["lost"].values())
        out["lost_by"] = {k: v for k, v in s["lost"].items() if v}
        # Beside the collector's own CPU: its BPF programs (in the job's threads, from the
        # kernel's run-time statistics, whole capture) and its idle-priority index child.
        o = s.get("overhead") or {}
        ncpu = o.get("cpus") or os.cpu_count() or 1
        out["bpf_core"] = o["bpf_cpu_pct"] * ncpu / 100 if o.get("bpf_cpu_pct") is not None else None
        out["index_core"] = (o["indexer_cpu_s"] / dur if o.get("indexer_cpu_s") is not None
                             else None)
        for f in Path(workdir).glob("bench.*"):
            f.unlink()
    time.sleep(1.0)  # let the target settle after the detach
    return out


def run_job(kind: str, tools: list[str], seconds: float, repeat: int, workdir: str) -> list[dict]:
    job = Job(kind, workdir)
    rows = []
    try:
        time.sleep(3.0)  # warm-up: workers started, first epoch-start costs gone
        order = [t for _ in range(repeat) for t in tools]
        offs = [phase_off(job, seconds)]
        ons = []
        for tool in order:
            ons.append((tool, phase_on(job, tool, seconds, workdir)))
            offs.append(phase_off(job, seconds))
        base = [job.steps_per_s(*o["window"]) for o in offs]
        per_step = [o["job_cpu"] / max(1e-9, b * (o["window"][1] - o["window"][0]) / 1e9)
                    for o, b in zip(offs, base, strict=True)]
        for i, (tool, r) in enumerate(ons):
            on = job.steps_per_s(*r["window"])
            off = (base[i] + base[i + 1]) / 2
            # The job's own CPU per step: what the profiler adds inside the job's threads
            # (BPF in its syscalls, cache and lock effects), robust to other load.
            on_step = r["job_cpu"] / max(1e-9, on * (r["window"][1] - r["window"][0]) / 1e9)
            r["cpu_step"] = on_step / ((per_step[i] + per_step[i + 1]) / 2) - 1
            # If the job had the machine to itself and used all of it: that, and the
            # cores the profiler's process takes from it.
            ncpu = os.cpu_count()
            r["est"] = (1 + r["cpu_step"]) * ncpu / max(1e-9, ncpu - (r["cpu_per_s"] or 0.0)) - 1
            r["others"] = max(r["others"], offs[i]["others"], offs[i + 1]["others"])
            rows.append({"job": kind, "tool": tool, "off": off, "on": on,
                         "slowdown": off / on - 1 if on else float("inf"), **r})
    finally:
        job.close()
    return rows


def fmt_row(r: dict) -> str:
    ev = r.get("events_per_s")
    us = r["cpu_per_s"] / ev * 1e6 if ev else None
    cpu = f"{100 * r['cpu_per_s']:7.1f}%" if r["cpu_per_s"] is not None else f"{'-':>8}"
    rss = f"{r['rss']:7.0f}" if r["rss"] is not None else f"{r['rss_growth']:+6.0f}j"
    extra = "".join(f"{100 * r[k]:6.1f}%" if r.get(k) is not None else f"{'-':>7}"
                    for k in ("bpf_core", "index_core"))
    return (f"{r['tool']:<40} {r['off']:8.1f} {r['on']:8.1f} {100 * r['slowdown']:+8.1f}% "
            f"{100 * r['cpu_step']:+8.1f}% {100 * r['est']:+7.1f}% "
            f"{cpu}{extra} {r['others']:6.0f}% {rss} "
            + (f"{ev:9.0f} {us:7.1f} {r['lost']:7d}" if ev is not None else f"{'-':>9} {'-':>7} {'-':>7}"))


STATS_LOOP = r"""
import os, sys, time
n = int(sys.argv[1]); t = time.perf_counter()
for _ in range(n): os.getppid()
print((time.perf_counter() - t) / n * 1e9)
"""


def bpf_stats_cost(rounds: int = 4, n: int = 300_000) -> None:
    """What BPF run-time statistics (the budget's measure of gpuscope's in-kernel cost)
    add per program run: a getppid() loop with a trivial tracepoint program attached,
    statistics off and on, alternating."""
    try:
        import bcc

        from gpuscope.collector.bpfcost import BpfRunTime
    except ImportError as e:
        print(f"bpf stats cost: skipped ({e})")
        return

    prog = bcc.BPF(text="TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }")
    res: dict[bool, list[float]] = {False: [], True: []}
    try:
        for _ in range(rounds):
            for on in (False, True):
                rt = BpfRunTime(duty=None) if on else None
                out = subprocess.run([PY, "-c", STATS_LOOP, str(n)], capture_output=True, text=True)
                res[on].append(float(out.stdout))
                if rt is not None:
                    rt.close()
    finally:
        prog.cleanup()
    off, on = statistics.median(res[False]), statistics.median(res[True])
    print(f"\n== BPF run-time statistics: getppid() with a tracepoint program, {off:.0f} ns/call "
          f"stats off, {on:.0f} ns/call stats on: {on - off:+.0f} ns per program run "
          f"({100 * (on / off - 1):+.1f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short phases, fewer tools (~2 min)")
    ap.add_argument("--jobs", default="a,b,c", help="which jobs (a, b, c), comma-separated")
    ap.add_argument("--tools", help="only these tools (comma-separated names from the table, "
                    "or the start of one: 'torch.profiler')")
    ap.add_argument("--phase", type=float, help="seconds per phase (default 8, quick 4)")
    ap.add_argument("--repeat", type=int, default=1, help="times each tool is attached")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_overhead: needs root (BPF, process_vm_readv)")
    wanted = set()
    for name in (a.tools.split(",") if a.tools else []):
        match = [t for t in TOOLS if t == name.strip() or t.startswith(name.strip())]
        if not match:
            sys.exit(f"bench_overhead: no tool {name!r}; pick (or start) names from: {', '.join(TOOLS)}")
        wanted.update(match)
    seconds = a.phase or (4.0 if a.quick else 8.0)
    try:  # the job and the profiler (children inherit it) ahead of other load on a shared machine
        os.nice(-5)
    except OSError:
        pass
    load = os.getloadavg()[0]
    print(f"bench_overhead: {os.cpu_count()} CPUs, load {load:.1f} before start, {seconds:g} s phases; "
          f"py-spy {'yes' if PYSPY.exists() else 'missing'}")
    print("slowdown = time per step attached / mean of the unattached phases either side - 1; "
          "CPU = the profiler process's user+sys per second of the measured window (% of one core); "
          "BPF = gpuscope's BPF programs' run time, in the job's threads (kernel statistics, on 1 s in "
          "10; % of one core, whole capture); index = its idle-priority viewer-index child "
          "(% of one core, whole capture; on CPU the job left idle); "
          "others = what other processes took of the machine meanwhile (the worst of the three "
          "phases compared): when it is high, that row is noise.\nCPU/step = the job's own CPU per "
          "step attached / unattached - 1 (what the profiler adds inside the job's threads; robust to "
          "other load); est.sat = the slowdown that implies for a job using every core alone: "
          "(1 + CPU/step) * cores / (cores - profiler CPU) - 1.\ntorch.profiler runs inside the job: "
          "CPU '-' (its CPU is the job's, in CPU/step); RSS '+N j' = the job main process's RSS "
          "growth over the window; its stop (post-processing) is after the window")
    all_rows = []
    for kind in [j for j in a.jobs.split(",") if j]:
        tools = JOB_TOOLS[kind]
        if a.quick:
            tools = [t for t in tools if t in QUICK_TOOLS]
        if a.tools:
            tools = [t for t in tools if t in wanted]
        if not PYSPY.exists():
            tools = [t for t in tools if TOOLS[t] is not None]
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as d:
            rows = run_job(kind, tools, seconds, a.repeat, d)
        all_rows += rows
        print(f"\n== job {kind}: {JOB_NAMES[kind]}")
        print(f"{'attached':<40} {'off st/s':>8} {'on st/s':>8} {'slowdown':>9} {'CPU/step':>9} "
              f"{'est.sat':>8} {'CPU':>8} {'BPF':>7}{'index':>7} {'others':>7} "
              f"{'RSS MB':>7} {'events/s':>9} {'µs/ev':>7} {'lost':>7}")
        for r in rows:
            print(fmt_row(r))
            if r.get("lost_by"):
                print(f"{'':<40}   lost by source: {r['lost_by']}")
            if r.get("stop_s") is not None:
                print(f"{'':<40}   stop (post-processing, after the window): {r['stop_s']:.1f} s")
    by: dict[tuple[str, str], list[dict]] = {}
    for r in all_rows:
        by.setdefault((r["job"], r["tool"]), []).append(r)

    def med(rows: list[dict], k: str) -> float:
        return 100 * statistics.median(r[k] for r in rows)

    spy = {j: rows for (j, t), rows in by.items() if TOOLS[t] is None}
    bpf_stats_cost()
    print("\n== ratios (medians over repeats): measured slowdown, and est.sat, each vs py-spy's")
    for (j, t), rows in by.items():
        if TOOLS[t] is not None and j in spy:
            print(f"job {j} {t:<40} slowdown {med(rows, 'slowdown'):+6.1f}% vs py-spy "
                  f"{med(spy[j], 'slowdown'):+6.1f}%; est.sat {med(rows, 'est'):+6.1f}% vs "
                  f"{med(spy[j], 'est'):+6.1f}%")

if __name__ == "__main__":
    main()
