"""Losses are counted in the kernel and shown: in the trace, the summary and
the end-of-capture report. Forced with a one-page ring buffer and a flood,
flood control off; with it on (the default), the same flood loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from gpuscope.collector.session import Session
from gpuscope.probes.io import IoProbe
from gpuscope.probes.kernel import KernelProbes
from gpuscope.probes.proc import ProcProbe

import tracecheck
from conftest import GPUSCOPE

# Reads of a data file: they are shipped one by one (reads of /dev/zero or a
# pipe would be summed in the kernel and never reach the ring buffer).
FLOOD = ("import os, sys\nfd = os.open(sys.executable, os.O_RDONLY)\nsys.stdin.readline()\n"
         "for _ in range(300000): os.pread(fd, 1, 0)\n")


def flood(out: str, io: IoProbe, extra_cflags=()):
    """The capture of a 300k-pread flood by the IO probe given."""
    target = subprocess.Popen([sys.executable, "-c", FLOOD], stdin=subprocess.PIPE, text=True)
    proc = ProcProbe()
    proc.listeners.append(io)
    src = KernelProbes([proc, io], extra_cflags=list(extra_cflags))

    def go(_session):
        target.stdin.write("go\n")
        target.stdin.flush()

    try:
        return Session(target.pid, [src], out).run(on_attached=go)
    finally:
        target.kill()
        target.wait()


def test_ring_buffer_overflow_is_counted_and_shown(tmp_path):
    out = str(tmp_path / "loss.pftrace")
    # every read one by one (no flood control), into a one-page ring
    cap = flood(out, IoProbe(oneby_per_s=0), ["-DIO_RING_PAGES=1"])
    lost = cap.lost["io"]
    assert lost > 0, "a 4 KiB ring buffer cannot hold a 300k-read flood"
    assert cap.events["io"] + lost >= 300_000  # every read either delivered or counted
    summary = json.loads(open(cap.summary_path).read())
    assert summary["lost"]["io"] == lost
    counter = tracecheck.load(out).counter_named("lost events: io")
    assert counter and counter[-1][1] == lost


def test_a_flood_beyond_the_one_by_one_rate_is_summed_not_lost(tmp_path):
    out = str(tmp_path / "flood.pftrace")
    io = IoProbe(oneby_per_s=5_000)
    cap = flood(out, io)
    assert cap.lost["io"] == 0
    assert cap.aggregated["io"] >= 250_000 and cap.events["io"] + cap.aggregated["io"] >= 300_000
    assert io.flooded >= 250_000 and cap.aggregated["io"] >= io.flooded
    assert any("were summed in the kernel" in n and f"{io.flooded:,}" in n for n in cap.notices)
    summed = tracecheck.load(out).slices_on("IO (summed)")
    assert summed and sum(s.args.get("calls", 0) for s in summed) >= io.flooded


def test_ebpf_flag_prints_the_program_and_loads_nothing():
    p = subprocess.run(GPUSCOPE + ["attach", "-p", "1", "--ebpf"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "TRACEPOINT_PROBE(syscalls, sys_enter_openat)" in p.stdout
    assert "BPF_HASH(tracked" in p.stdout and "-DMIN_OFFCPU_NS=50000" in p.stdout
