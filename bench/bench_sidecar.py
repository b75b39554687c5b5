"""What the always-on sidecar costs (issue 11: at most 2% of one core and 200 MB RSS
at 5k events/s with a 60 s flight window). Prints figures; asserts nothing.

As in a pod: `gpuscope sidecar` and a stand-in trainer share a PID namespace of their
own (`unshare --pid --fork --mount-proc`, the host's /proc bind-mounted as the
hostPath /proc -> /host/proc), so the sidecar's PID translation runs as it does in
production. The trainer makes about --rate events/s of the mix a DataLoader job makes:
two workers preading a data file in small chunks (shipped one by one), each chunk
sent to the main process over a pipe (IPC: summed in the kernel), the short sleeps
between bursts (off-CPU), and the Python sampler walking every thread at the
sidecar's 50 Hz. The sidecar runs at its defaults (60 s flight window, NVML off: no
driver here) but for --max-overhead 100: at full detail, since at the default 2% its
budget lowers detail at this rate (pass `-- --max-overhead 2` to see that).

Measured, after a warm-up, over a window longer than the flight window (so the
recorder has filled and evicts): the sidecar's user+sys CPU from /proc (% of one
core, and µs per event it took in), its RSS (VmRSS sampled each second: steady =
median over the last part, peak = VmHWM), the events/s it took in and the events
lost or evicted (from its /metrics). Then one capture with the flight recorder: its
CPU, the events it replayed, the trace checked readable.

Usage: python bench/bench_sidecar.py [--quick] [--rate N] [--window S] [--warmup S]
       [--baseline REV] [--py-spy FILE] [-- SIDECAR FLAGS]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

PY = sys.executable
HZ = os.sysconf("SC_CLK_TCK")
TARGET_CPU_PCT, TARGET_RSS_MB = 2.0, 200.0

# The stand-in trainer: N workers, each pread()s the data file in 4 KiB chunks in
# bursts every 10 ms and writes each chunk to its pipe; the main thread reads the pipes.
TRAINER = r"""
import os, select, sys, threading, time
rate, data, workers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
per_burst = max(1, rate // workers // 100)
pipes = []
for w in range(workers):
    r, wfd = os.pipe()
    if os.fork() == 0:
        os.close(r)
        fd = os.open(data, os.O_RDONLY)
        size = os.fstat(fd).st_size
        n, t0 = 0, time.monotonic()
        def transform(chunk):   # a Python frame for the sampler to find
            return chunk[:64]
        while True:
            for _ in range(per_burst):
                chunk = os.pread(fd, 4096, (n * 4096) % (size - 4096))
                os.write(wfd, transform(chunk))
                n += 1
            slack = n / (per_burst * 100) - (time.monotonic() - t0)
            if slack > 0:
                time.sleep(slack)
    os.close(wfd)
    pipes.append(r)
def pin_memory():   # a second thread, idle mostly, as a DataLoader's
    while True:
        time.sleep(0.05)
threading.Thread(target=pin_memory, daemon=True).start()
print("ready", os.getpid(), flush=True)
while True:
    for r in select.select(pipes, [], [], 1.0)[0]:
        os.read(r, 65536)
"""


def cpu_s(pid: int) -> float:
    """utime + stime of every thread of pid, seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1]) / 1024
    return out.get("VmRSS", 0.0), out.get("VmHWM", 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pid(needle: str, timeout: float = 30) -> int:
    """The process whose command line holds `needle` (seen from outside the namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if needle.encode() in cmd and not cmd.startswith((b"sh ", b"unshare ")):
                    return int(p)
        time.sleep(0.2)
    raise RuntimeError(f"no process running {needle!r}")


class Sidecar:
    """One `gpuscope sidecar` of the pod: its API and its process (seen from outside)."""

    def __init__(self, label: str, code: str | None):
        self.label, self.code, self.port = label, code, free_port()
        self.pid = 0

    def get(self, path: str, body: dict | None = None) -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    def metrics(self) -> dict[tuple, float]:
        text = self.get("/metrics").decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}


class Pod:
    """The trainer and the sidecars in a PID namespace of their own; with two sidecars
    (this tree and a baseline) both follow the same trainer at the same time, so the
    machine's load, which changes by the minute here, is the same for both."""

    def __init__(self, d: str, rate: int, flags: list[str], sidecars: list[Sidecar]):
        self.sidecars = sidecars
        data = os.path.join(d, "data.bin")
        with open(data, "wb") as f:
            f.write(os.urandom(8 << 20))
        trainer = os.path.join(d, "trainer_bench_sidecar.py")
        Path(trainer).write_text(TRAINER)
        hostproc = os.path.join(d, "hostproc")
        os.mkdir(hostproc)
        lines = [f"(exec {PY} {trainer} {rate} {data} 2 >/dev/null) &"]
        for i, sc in enumerate(sidecars):
            env = f"PYTHONPATH={sc.code} " if sc.code else ""
            lines.append(f"{env}{PY} -m gpuscope.collector.cli sidecar --no-auth "
                         f"--listen 127.0.0.1:{sc.port} --captures {d}/captures-{i} "
                         f"--host-proc {hostproc} --match trainer_bench_sidecar --no-nvml "
                         + " ".join(flags) + " &")
        # In a script, so that no command line but the trainer's holds its name (--match);
        # sh stays PID 1, the parent of all, as a pod's pause container is.
        script = os.path.join(d, "pod.sh")
        Path(script).write_text("\n".join(lines) + "\nwait\n")
        outer = (f"mount --bind /proc {hostproc} && "
                 f"exec unshare --pid --fork --mount-proc sh {script}")
        self.log = open(os.path.join(d, "sidecar.log"), "w+")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh",
                                      "-c", outer], stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        for sc in sidecars:
            sc.pid = find_pid(f"--listen 127.0.0.1:{sc.port}")
        self.trainer = find_pid(f"trainer_bench_sidecar.py {rate}")

    def wait_attached(self, sc: Sidecar, timeout: float = 180) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("sidecar exited:\n" + self.logs())
            try:
                if json.loads(sc.get("/healthz")).get("target_pid"):
                    return time.monotonic() - t0
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError("sidecar did not attach:\n" + self.logs())

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def total(m: dict, name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


def measure(pod: Pod, warmup: float, window: float, profile: str | None = None) -> list[dict]:
    """Every sidecar of the pod over the same window."""
    attach_s = [pod.wait_attached(sc) for sc in pod.sidecars]
    t_attached = time.monotonic()
    time.sleep(warmup)
    spy = None
    if profile:
        spy = subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "--pid",
                                str(pod.sidecars[-1].pid), "--nonblocking", "--threads",
                                "--format", "raw", "--duration", str(int(window)),
                                "--output", profile],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m0 = [sc.metrics() for sc in pod.sidecars]
    c0, t0 = [cpu_s(sc.pid) for sc in pod.sidecars], time.monotonic()
    rss: list[list[tuple[float, float]]] = [[] for _ in pod.sidecars]
    while time.monotonic() - t0 < window:
        time.sleep(1.0)
        for i, sc in enumerate(pod.sidecars):
            rss[i].append((time.monotonic() - t_attached, rss_mb(sc.pid)[0]))
    c1, t1 = [cpu_s(sc.pid) for sc in pod.sidecars], time.monotonic()
    m1 = [sc.metrics() for sc in pod.sidecars]
    if spy is not None:
        spy.wait()
    dt = t1 - t0
    out = []
    for i, sc in enumerate(pod.sidecars):
        a, b, cpu = m0[i], m1[i], c1[i] - c0[i]
        events = total(b, "gpuscope_events_total") - total(a, "gpuscope_events_total")
        lost = {probe: v - a.get((n, lab), 0.0) for (n, lab), v in b.items()
                if n == "gpuscope_probe_events_lost_total" for probe in [dict(lab)["probe"]]}
        full = [r for t, r in rss[i] if t >= 60] or [r for _, r in rss[i][len(rss[i]) // 2:]]
        out.append({
            "attach_s": attach_s[i], "cpu_pct": 100 * cpu / dt, "events_per_s": events / dt,
            "us_per_event": 1e6 * cpu / max(1.0, events),
            "rss_steady": statistics.median(full), "rss_peak": rss_mb(sc.pid)[1],
            "lost": {k: v for k, v in lost.items() if v}, "window_s": dt,
            "flight_events": b.get(("gpuscope_flight_recorder_events", ()), 0.0),
            "flight_mb": b.get(("gpuscope_flight_recorder_bytes", ()), 0.0) / 1e6,
            "flight_window_s": b.get(("gpuscope_flight_recorder_window_seconds", ()), 0.0),
            "flight_dropped": total(b, "gpuscope_flight_recorder_dropped_total"),
            "level": b.get(("gpuscope_detail_level", ()), 0.0)})
    return out


def capture(sc: Sidecar) -> dict:
    """One 2 s capture with the flight recorder: the sidecar CPU it took, what it replayed."""
    c0, t0, t_req = cpu_s(sc.pid), time.monotonic(), time.monotonic_ns()
    job = json.loads(sc.get("/v1/captures", {"duration_s": 2, "include_flight_recorder": True}))
    while True:
        doc = json.loads(sc.get(f"/v1/captures/{job['id']}"))
        if doc["state"] != "running":
            break
        time.sleep(0.2)
    wall, cpu = time.monotonic() - t0, cpu_s(sc.pid) - c0
    out = {"state": doc["state"], "error": doc.get("error"), "wall_s": wall, "cpu_s": cpu}
    if doc["state"] == "done":
        summary = json.loads(sc.get(f"/v1/captures/{job['id']}/summary"))
        raw = sc.get(f"/v1/captures/{job['id']}/trace")
        out.update(replayed=summary["events"].get("flightrec", 0), trace_mb=len(raw) / 1e6)
        from gpuscope.collector.tracereader import BEGIN, read
        with tempfile.NamedTemporaryFile(suffix=".pftrace") as f:
            f.write(raw)
            f.flush()
            recs = [r for _, chunk in read(f.name) for r in chunk]
        out["records"] = len(recs)
        out["before"] = sum(1 for r in recs if r[0] == BEGIN and r[1] < t_req)
    return out


def checkout(rev: str, d: str) -> str:
    """gpuscope as of git revision `rev`, importable from the returned directory
    (PYTHONPATH, ahead of the installed tree; the namespace package's layout of
    pyproject.toml's package-dir rebuilt with links)."""
    root = Path(__file__).resolve().parent.parent
    src = os.path.join(d, "src")
    os.makedirs(src)
    archive = subprocess.run(["git", "-C", str(root), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    pkg = os.path.join(d, "path", "gpuscope")
    os.makedirs(pkg)
    for sub in ("probes", "collector", "viewer", "sidecar"):
        os.symlink(os.path.join(src, sub), os.path.join(pkg, sub))
    return os.path.dirname(pkg)


def report(label: str, r: dict, cap: dict) -> None:
    print(f"-- {label}: attached in {r['attach_s']:.1f} s; measured {r['window_s']:.0f} s")
    print(f"events in          {r['events_per_s']:9.0f} /s   lost {r['lost'] or 0}")
    print(f"sidecar CPU        {r['cpu_pct']:9.2f} % of one core   target <= {TARGET_CPU_PCT:g}%: "
          f"ratio {r['cpu_pct'] / TARGET_CPU_PCT:.2f}   ({r['us_per_event']:.1f} µs/event)")
    print(f"sidecar RSS steady {r['rss_steady']:9.0f} MB   peak {r['rss_peak']:.0f} MB   "
          f"target <= {TARGET_RSS_MB:g} MB: ratio {r['rss_steady'] / TARGET_RSS_MB:.2f} steady, "
          f"{r['rss_peak'] / TARGET_RSS_MB:.2f} peak")
    print(f"flight recorder    {r['flight_events']:9.0f} events, {r['flight_mb']:.1f} MB, "
          f"{r['flight_window_s']:.0f} s held, {r['flight_dropped']:.0f} dropped by its bounds; "
          f"detail level {r['level']:.0f}")
    if cap["state"] == "done":
        print(f"capture 2 s + flight window: {cap['cpu_s']:.2f} s CPU in {cap['wall_s']:.1f} s, "
              f"{cap['replayed']} events replayed, {cap['trace_mb']:.1f} MB, "
              f"{cap['records']} records read back, {cap['before']} slices from before the request")
    else:
        print(f"capture {cap['state']}: {cap['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="10 s flight window, 5 s warm-up, 20 s window (~1 min)")
    ap.add_argument("--rate", type=int, default=5000, help="target's data-file reads/s")
    ap.add_argument("--warmup", type=float, help="seconds after attach before measuring "
                    "(default 15, quick 5)")
    ap.add_argument("--window", type=float, help="seconds measured (default 75: longer "
                    "than the flight window, quick 20)")
    ap.add_argument("--py-spy", metavar="FILE", help="also record where the sidecar's CPU "
                    "goes over the measured window (py-spy, collapsed stacks) into FILE")
    ap.add_argument("--baseline", metavar="REV", help="also run the sidecar of git revision "
                    "REV, beside this tree's on the same trainer (before/after in one window)")
    ap.add_argument("sidecar_flags", nargs="*", help="extra `gpuscope sidecar` flags (after --)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_sidecar: needs root (BPF, namespaces)")
    warmup = a.warmup if a.warmup is not None else (5.0 if a.quick else 15.0)
    window = a.window or (20.0 if a.quick else 75.0)
    flags = (["--flight-seconds", "10"] if a.quick else []) + a.sidecar_flags
    if "--max-overhead" not in flags:   # full detail: at 2% the budget lowers it instead
        flags += ["--max-overhead", "100"]
    print(f"bench_sidecar: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} before start; "
          f"target {a.rate} data-file reads/s + pipe IPC, sidecar {' '.join(flags) or 'defaults'}"
          f" (flight window {'10' if a.quick else '60'} s), {warmup:g} s warm-up, "
          f"{window:g} s measured")
    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as d:
        sidecars = [Sidecar("this tree", None)]
        if a.baseline:
            sidecars.insert(0, Sidecar(f"baseline {a.baseline}", checkout(a.baseline, d)))
        pod = Pod(d, a.rate, flags, sidecars)
        try:
            results = measure(pod, warmup, window, a.py_spy)
            caps = [capture(sc) for sc in sidecars]
        finally:
            pod.close()
    print(f"load {os.getloadavg()[0]:.1f} after")
    for sc, r, cap in zip(sidecars, results, caps, strict=True):
        report(sc.label, r, cap)
    if len(results) == 2:
        b, n = results
        print(f"== this tree / baseline, side by side on the same trainer: CPU "
              f"{n['cpu_pct'] / b['cpu_pct']:.2f}x, µs/event {n['us_per_event'] / b['us_per_event']:.2f}x"
              f", RSS steady {n['rss_steady'] / b['rss_steady']:.2f}x, peak "
              f"{n['rss_peak'] / b['rss_peak']:.2f}x; capture CPU "
              f"{caps[1]['cpu_s'] / max(1e-9, caps[0]['cpu_s']):.2f}x")


if __name__ == "__main__":
    main()
