"""Capture throughput, collector cost per kernel event, and attach time.
Prints figures; asserts nothing (these machines are shared and noisy).

- events/s from probe to trace on disk, collector pinned to one core, target
  on the other, at rising syscall rates: where loss begins;
- the collector's CPU (user + sys, from /proc and wait4) per syscall the
  target made, on the two paths a syscall can take: IPC-like reads of
  /dev/zero (summed in the kernel) and preads of a regular data file
  (shipped one by one), from a C target so that 1M calls/s is reachable;
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
# The same loop in C: Python cannot make 1M syscalls/s on one core.
C_TARGET = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    long rate = atol(argv[1]); double secs = atof(argv[2]); int pread_mode = argv[3][0] == 'p';
    int fd = open(argv[4], O_RDONLY); char buf[64], line[8];
    printf("ready\n"); fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    double t0 = now(), end = t0 + secs; long n = 0, per = rate / 1000 > 0 ? rate / 1000 : 1;
    for (double t; (t = now()) < end;) {
        for (long i = 0; i < per; i++) { if (pread_mode) pread(fd, buf, 16, 64); else read(fd, buf, 1); }
        n += per;
        double slack = n / (double)rate - (t - t0);
        if (slack > 0) { struct timespec s = {0, (long)(slack * 1e9)}; nanosleep(&s, 0); }
    }
    printf("%ld\n", n); fflush(stdout); return 0;
}
"""
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """user + sys CPU seconds of a running process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(target_argv: list[str], seconds: float, extra: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "b.pftrace")
        t = subprocess.Popen(["taskset", "-c", "1", *target_argv], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        t.stdout.readline()
        g = subprocess.Popen(["taskset", "-c", "0", *GPUSCOPE, "attach", "-p", str(t.pid), "-o", out,
                              "-q", *extra], stderr=subprocess.PIPE, text=True)
        while "attached" not in g.stderr.readline():
            pass
        before = cpu_s(g.pid)  # attach (BCC's compile) is not per-event cost
        t.stdin.write("go\n")
        t.stdin.flush()
        calls = int(t.stdout.readline())
        t.wait()
        g.stderr.read()
        _, _, usage = os.wait4(g.pid, 0)
        s = json.loads(open(out.replace(".pftrace", ".summary.json")).read())
        summed = s.get("aggregated", {}).get("io", 0)
        return {"calls": calls, "events": s["events"]["io"], "summed": summed, "lost": s["lost"]["io"],
                "attach_s": s["attach_s"], "mb": s["trace_bytes"] / 1e6, "achieved": calls / seconds,
                "cpu_s": usage.ru_utime + usage.ru_stime - before}


def one(rate: int, seconds: float = 3.0) -> dict:
    return run([sys.executable, "-c", TARGET, str(rate), str(seconds)], seconds, ("--no-sched",))


def c_target(d: str) -> str:
    src, exe = os.path.join(d, "t.c"), os.path.join(d, "t")
    with open(src, "w") as f:
        f.write(C_TARGET)
    subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
    return exe


def source_alone(exe: str, data: str, rate: int, seconds: float = 2.0) -> tuple[int, int, float]:
    """The eBPF source by itself, in this process: ring reads and decode into
    events, no trace writing. (calls, events, CPU seconds while polling)."""
    import time

    from gpuscope.probes.io import IoProbe
    from gpuscope.probes.kernel import KernelProbes
    from gpuscope.probes.proc import ProcProbe

    t = subprocess.Popen(["taskset", "-c", "1", exe, str(rate), str(seconds), "p", data],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    t.stdout.readline()
    proc, io = ProcProbe(), IoProbe()
    proc.listeners.append(io)
    k = KernelProbes([proc, io])
    k.start([t.pid])
    try:
        t.stdin.write("go\n")
        t.stdin.flush()
        n, c0 = 0, time.process_time()
        while t.poll() is None:
            n += len(k.poll(0.1))
        n += len(k.drain())
        cpu = time.process_time() - c0
        return int(t.stdout.read()), k.stats().events["io"], cpu
    finally:
        k.stop()


def main() -> None:
    print("IO events from probe to trace on disk (collector on 1 core, target on the other)")
    print(f"{'target calls/s':>15} {'one by one':>11} {'summed':>9} {'lost':>8} {'loss %':>7} {'trace MB':>9}")
    attach = []
    for rate in (10_000, 30_000, 60_000, 100_000, 200_000):
        r = one(rate)
        attach.append(r["attach_s"])
        loss = 100 * r["lost"] / max(1, r["calls"])
        print(f"{r['achieved']:>15,.0f} {r['events']:>11,} {r['summed']:>9,} {r['lost']:>8,} {loss:>6.1f}% "
              f"{r['mb']:>9.1f}")
    print("\nCollector CPU per kernel event (user+sys of gpuscope after attach / syscalls the target made;"
          " C target, --no-sched --no-python)")
    print(f"{'path':>26} {'asked/s':>9} {'made/s':>10} {'one by one':>11} {'summed':>10} {'lost':>9} "
          f"{'loss %':>7} {'CPU s':>6} {'µs/event':>9}")
    with tempfile.TemporaryDirectory() as d:
        exe = c_target(d)
        data = os.path.join(d, "data.bin")
        with open(data, "wb") as f:
            f.write(os.urandom(4096))
        for label, mode, path in (("/dev/zero read (IPC-like)", "r", "/dev/zero"),
                                  ("data-file pread", "p", data)):
            for rate in (100_000, 500_000, 1_000_000):
                r = run([exe, str(rate), "3", mode, path], 3.0, ("--no-sched", "--no-python"))
                attach.append(r["attach_s"])
                loss = 100 * r["lost"] / max(1, r["calls"])
                print(f"{label:>26} {rate:>9,} {r['achieved']:>10,.0f} {r['events']:>11,} {r['summed']:>10,} "
                      f"{r['lost']:>9,} {loss:>6.1f}% {r['cpu_s']:>6.2f} {1e6 * r['cpu_s'] / max(1, r['calls']):>9.2f}")
        print("\neBPF source alone (ring read + decode into events, no trace), data-file pread at 100k/s")
        calls, events, cpu = source_alone(exe, data, 100_000)
        print(f"  {calls:,} calls, {events:,} events, {cpu:.2f} s CPU: {1e6 * cpu / max(1, events):.2f} µs/event")
    print(f"time from attach to probes live: median {sorted(attach)[len(attach) // 2]:.2f}s "
          f"(min {min(attach):.2f}s, max {max(attach):.2f}s; BCC compiles the programs each time)")


if __name__ == "__main__":
    main()
