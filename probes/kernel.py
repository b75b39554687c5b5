"""Loads gpuscope's eBPF programs with BCC and turns their ring buffers into events.

All enabled probes are compiled as one unit around tracked.h, so they share
the map of tracked processes (filtering happens in the kernel) and the loss
counters. Each probe is a `<name>.bpf.c` + `<name>.h` beside a `<name>.py`
that attaches and decodes it.
"""

from __future__ import annotations

import ctypes as ct
import operator
import os
import select
import struct
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import uprobes
from .bccload import advice_for, bcc_module, compiled, release
from .events import Event, Instant, Loss
from .ringbuf import RingReader, event_class, struct_of
from .source import Source, SourceError, SourceStats
from .summed import SummedReader

HERE = Path(__file__).resolve().parent
BPF_NOEXIST = 1
_u64 = struct.Struct("<Q")
_first = operator.itemgetter(0)

# Config slots, as in tracked.h.
CFG_ONEBY_WAIT_NS, CFG_FILE_SUMMED_NS, CFG_IPC_LIFECYCLE_PER_S = 0, 1, 2
CFG_IO_ONEBY_PER_CPU_S = 3   # set once by io.py (flood control), not by the levels
# Detail levels for the overhead budget, most detail first: (what is given up,
# config). Raised and lowered at run time through the config map, no reload.
# At every level: data-file IO one by one (but short transfers from level 2),
# unknown fds one by one, reads/writes/mmaps on non-data fds summed per thread
# unless they waited past the wait threshold, off-CPU waits below
# --min-offcpu-us not counted.
LEVELS = [
    ("full detail: waits >= 1 ms (off-CPU, pipe/socket calls) one by one, shorter summed; "
     "pipe/socket/shm fd creation and closing one by one up to 10/s per thread",
     {CFG_ONEBY_WAIT_NS: 1_000_000, CFG_FILE_SUMMED_NS: 0, CFG_IPC_LIFECYCLE_PER_S: 10}),
    ("pipe/socket/shm fd creation and closing summed; waits < 5 ms summed",
     {CFG_ONEBY_WAIT_NS: 5_000_000, CFG_FILE_SUMMED_NS: 0, CFG_IPC_LIFECYCLE_PER_S: 0}),
    ("data-file reads/writes < 100 µs summed (no path; opens kept); waits < 20 ms summed",
     {CFG_ONEBY_WAIT_NS: 20_000_000, CFG_FILE_SUMMED_NS: 100_000, CFG_IPC_LIFECYCLE_PER_S: 0}),
    ("data-file reads/writes < 1 ms summed (no path; opens kept); waits < 100 ms summed",
     {CFG_ONEBY_WAIT_NS: 100_000_000, CFG_FILE_SUMMED_NS: 1_000_000, CFG_IPC_LIFECYCLE_PER_S: 0}),
]


def _quiet(job) -> None:
    fn, arg = job
    try:
        fn(arg)
    except Exception:
        pass  # BPF.cleanup() afterwards retries whatever is left


def _no_pids() -> list[int]:
    return []


class Probe:
    """One eBPF program file and the Python side that attaches and decodes it."""

    name = "probe"
    bpf_file = ""
    ring = ""           # ring buffer map name
    drop_slot = -1      # index into the shared loss counters (tracked.h)
    # Byte offset of the u64 time at which a record was submitted (a span's
    # end, an instant's time): records of all rings are decoded in this order.
    order_offset = 8
    # decode() takes the record as bytes (else a ctypes char pointer, for
    # BCC's table.event()); layout is the record's struct.Struct, from BCC.
    raw_bytes = False
    layout: struct.Struct | None = None

    def cflags(self) -> list[str]:
        return []

    def attach(self, bpf) -> None:
        """Attach what BCC does not attach by itself (uprobes). Tracepoints auto-attach."""

    def initial_events(self, pids: list[int], out: list[Event]) -> None:
        """Events describing the state at attach time (threads, open files)."""

    def decode(self, raw: Any, size: int, out: list[Event]) -> None:
        """raw is bytes if raw_bytes, else the ctypes pointer BCC's table.event() takes."""
        raise NotImplementedError

    def tick(self, bpf, out: list[Event]) -> None:
        """Periodic work, about twice a second (e.g. find newly mapped libraries)."""

    def on_fork(self, pid: int, ppid: int) -> None:
        """A tracked process forked (called before any of the child's events)."""

    def on_exit(self, pid: int) -> None:
        """A tracked process exited."""

    def on_library_open(self, pid: int, path: str, out: list[Event]) -> None:
        """A tracked process opened a file named like a GPU library (io.py)."""

    def on_library_mapped(self, pid: int, path: str, ts: int, out: list[Event]) -> None:
        """A tracked process mapped such a file at ts (io.py)."""

    # PIDs being watched: KernelProbes sets its own when the probe is loaded.
    tracked: Callable[[], list[int]] = staticmethod(_no_pids)

    def seed(self, bpf, kid: int, pid: int) -> None:
        """A process joined (kernel PID kid, user PID pid): fill kernel maps from /proc."""

    # Kinds this probe's events are summed under in the kernel (summed.h), by name.
    summed_kinds: dict[int, str] = {}

    def notices(self) -> list[str]:
        return []


class KernelProbes(Source):
    """The eBPF source: one BCC module, several probes, one poll loop."""

    name = "ebpf"

    def __init__(self, probes: Iterable[Probe], extra_cflags: Iterable[str] = ()):
        self.probes = list(probes)
        self.extra_cflags = list(extra_cflags)
        self.bpf: Any = None  # bcc.BPF: its tables are looked up by name
        self._out: list[Event] = []
        self._events = {p.name: 0 for p in self.probes}
        self._kdrops = {p.name: 0 for p in self.probes}    # counted by the kernel
        self._decode_errors = {p.name: 0 for p in self.probes}
        self._last_tick = 0.0
        self._rings: list[tuple[Probe, RingReader]] = []
        self._epoll: select.epoll | None = None
        self.level = 0
        self._level_note: int | None = None
        self.summed: SummedReader | None = None
        for p in self.probes:
            p.tracked = self.tracked

    # -- program text ------------------------------------------------------
    def program_text(self) -> str:
        """The probes' files joined in one unit. Joined, not #included: BCC
        generates tracepoint argument structs only for the main file."""
        parts = [f'// ---- {name} ----\n#line 1 "{name}"\n' + (HERE / name).read_text()
                 for name in ["tracked.h", "summed.h"] + [p.bpf_file for p in self.probes]]
        return "\n".join(parts)

    def cflags(self) -> list[str]:
        flags = [f"-I{HERE}", "-Wno-macro-redefined", "-Wno-unused-function",
                 f"-DGS_NCPUS={os.cpu_count() or 1}"]
        for p in self.probes:
            flags += p.cflags()
        return flags + self.extra_cflags

    def expanded_source(self) -> str:
        """The whole program as compiled, for `--ebpf`."""
        return f"// cflags: {' '.join(self.cflags())}\n" + self.program_text()

    # -- lifecycle ---------------------------------------------------------
    def start(self, pids: Iterable[int]) -> None:
        bcc = bcc_module()
        try:
            self.bpf = compiled(bcc, text=self.program_text(), cflags=self.cflags())
        except Exception as e:  # BCC raises bare Exception on compile/load errors
            raise SourceError(advice_for(e)) from e
        self._epoll = select.epoll()
        self.set_level(self.level)
        kinds = {k: v for p in self.probes for k, v in p.summed_kinds.items()}
        self.summed = SummedReader(kinds, self.user_pid)
        self.summed.oneby_wait_ns = LEVELS[self.level][1][CFG_ONEBY_WAIT_NS]
        pids = list(pids)
        for pid in pids:
            self.add_process(pid)
        try:
            for p in sorted(self.probes, key=lambda p: p.name != "proc"):
                p.attach(self.bpf)
                if p.ring:
                    self._open_ring(p)
        except Exception as e:
            self.stop()
            raise SourceError(advice_for(e)) from e
        for p in self.probes:
            p.initial_events(pids, self._out)

    def _open_ring(self, probe: Probe) -> None:
        assert self._epoll is not None  # start() made it
        reader = RingReader(self.bpf[probe.ring])
        if probe.raw_bytes:
            probe.layout = struct_of(event_class(self.bpf[probe.ring]))
        self._rings.append((probe, reader))
        self._epoll.register(reader.fd, select.EPOLLIN)

    def _read_rings(self) -> None:
        """Copies every ring's records out, then decodes them in time order
        across rings: a child's first IO must not be decoded before the fork
        that gave it its fds, nor a pipe() after that fork."""
        batch: list = []
        hooked = type(self).record is not KernelProbes.record
        at = _u64.unpack_from
        got: list[tuple[Probe, list[bytes]]] = []
        for probe, reader in self._rings:
            recs: list[bytes] = []
            n = reader.read(recs)
            if not n:
                continue
            self._events[probe.name] += n
            if hooked:
                recs = [r for r in (self.record(probe, r, len(r)) for r in recs) if r is not None]
            got.append((probe, recs))
        if len(got) == 1 and got[0][0].raw_bytes:   # one ring (the usual poll): no tuple per record
            probe, recs = got[0]
            off = probe.order_offset
            keys = [at(r, off)[0] for r in recs]
            if keys != sorted(keys):   # stable, as below; a ring is nearly in order already
                recs = [recs[i] for i in sorted(range(len(recs)), key=keys.__getitem__)]
            self._decode(probe, recs)
            return
        for probe, recs in got:
            off = probe.order_offset
            batch += [(at(r, off)[0], probe, r) for r in recs]
        if not batch:
            return
        batch.sort(key=_first)  # stable; each ring is nearly in order already
        out = self._out
        for _, probe, rec in batch:
            try:
                probe.decode(rec if probe.raw_bytes else ct.c_char_p(rec), len(rec), out)
            except Exception as e:  # a bad record must not end the capture
                self._decode_error(probe, e)

    def _decode(self, probe: Probe, recs: list[bytes]) -> None:
        """One raw-bytes probe's records, in order; a bad one is a loss and
        the rest are still decoded."""
        decode, out, it = probe.decode, self._out, iter(recs)
        while True:
            try:
                for rec in it:
                    decode(rec, len(rec), out)
                return
            except Exception as e:  # a bad record must not end the capture
                self._decode_error(probe, e)

    def _decode_error(self, probe: Probe, e: Exception) -> None:
        self._decode_errors[probe.name] += 1
        self._out.append(Loss(probe.name, time.monotonic_ns(), 1, f"decode: {e}"))

    # -- PIDs across the BPF boundary: overridden where they differ (a PID namespace)
    def record(self, probe: Probe, data: bytes, size: int) -> bytes | None:
        """A ring buffer record, copied out (overridden to rewrite it); None drops it."""
        return data

    def kernel_pid(self, pid: int) -> int | None:
        """The kernel's PID for one the user gave (None: not visible)."""
        return pid

    def user_pid(self, kid: int) -> int | None:
        """The PID the user sees for a kernel PID."""
        return kid

    def add_process(self, pid: int) -> None:
        kid = self.kernel_pid(pid)
        if self.bpf is not None and kid is not None:
            # No overwrite: a child the kernel added at fork keeps its parent.
            t = self.bpf["tracked"]
            bcc_module().libbcc.lib.bpf_update_elem(
                t.map_fd, ct.byref(ct.c_uint32(kid)), ct.byref(ct.c_uint32(0)), BPF_NOEXIST)
            for p in self.probes:
                p.seed(self.bpf, kid, pid)

    def remove_process(self, pid: int) -> None:
        kid = self.kernel_pid(pid)
        if self.bpf is None or kid is None:
            return
        try:
            del self.bpf["tracked"][ct.c_uint32(kid)]
        except KeyError:
            pass

    def tracked(self) -> list[int]:
        if self.bpf is None:
            return []
        pids = (self.user_pid(k.value) for k in self.bpf["tracked"].keys())
        return sorted(p for p in pids if p is not None)

    def poll(self, timeout_s: float) -> list[Event]:
        if self.bpf is None or self._epoll is None or self.summed is None:  # not started
            time.sleep(timeout_s)
            return []
        # Records are submitted without a wakeup (a ring wakes this only once
        # it fills up): wait out the timeout, then take everything.
        self._epoll.poll(timeout_s)
        self._read_rings()
        self._note_level()
        now = time.monotonic()
        if now - self._last_tick >= 0.5:
            self._last_tick = now
            for p in self.probes:
                p.tick(self.bpf, self._out)
            self.summed.read(self.bpf, self._out)
            self._collect_drops()
        out, self._out = self._out, []
        return out

    # -- detail levels (the overhead budget's knob) -----------------------
    def levels(self) -> int:
        """How many detail levels there are (0 = full detail)."""
        return len(LEVELS)

    def describe_level(self, n: int) -> str:
        """What level n gives up, for the budget's notes."""
        return "kernel: " + LEVELS[max(0, min(len(LEVELS) - 1, n))][0]

    def set_level(self, n: int) -> None:
        """Lower (n > 0) or restore (n = 0) event detail, live, without
        reloading. Safe from any thread: the config map is written here, and
        the poll thread emits the notice saying what the level gives up."""
        n = max(0, min(len(LEVELS) - 1, int(n)))
        if n != self.level:
            self._level_note = n
        self.level = n
        if self.bpf is not None:
            table = self.bpf["gs_config"]
            for slot, value in LEVELS[n][1].items():
                table[ct.c_int(slot)] = ct.c_uint64(value)

    def _note_level(self) -> None:
        n, self._level_note = self._level_note, None
        if n is None or self.summed is None:
            return
        self.summed.read(self.bpf, self._out)  # sums so far, named for the old level
        self.summed.oneby_wait_ns = LEVELS[n][1][CFG_ONEBY_WAIT_NS]
        self._out.append(Instant("gpuscope", "detail level", 0, 0, time.monotonic_ns(),
                                 {"source": self.name, "level": n, "of": len(LEVELS),
                                  "detail": LEVELS[n][0]}))

    def _collect_drops(self) -> None:
        counts = self.bpf["drops"]
        for p in self.probes:
            if p.drop_slot < 0:
                continue
            total = sum(counts[ct.c_int(p.drop_slot)])
            new = total - self._kdrops[p.name]
            if new > 0:
                self._kdrops[p.name] = total
                self._out.append(Loss(p.name, time.monotonic_ns(), new, "ring buffer full"))

    def drain(self) -> list[Event]:
        """Everything still buffered, after the last poll (on stop)."""
        if self.bpf is None or self.summed is None:
            return []
        self._read_rings()
        self._note_level()
        for p in self.probes:
            p.tick(self.bpf, self._out)  # e.g. rates over the last, partial window
        self.summed.read(self.bpf, self._out)
        self._collect_drops()
        out, self._out = self._out, []
        return out

    def stop(self) -> None:
        rings, self._rings = self._rings, []
        for _, reader in rings:
            reader.close()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self.bpf is not None:
            bpf, self.bpf = self.bpf, None
            uprobes.detach_all(bpf)
            # Each detach waits for an RCU grace period (~70 ms here); done in
            # parallel the waits overlap: 3 s -> ~0.1 s for ~40 tracepoints.
            jobs = [(bpf.detach_tracepoint, k) for k in list(bpf.tracepoint_fds)]
            jobs += [(bpf.detach_uprobe_event, k) for k in list(bpf.uprobe_fds)]
            if jobs:
                with ThreadPoolExecutor(max_workers=min(32, len(jobs))) as pool:
                    list(pool.map(_quiet, jobs))
            release(bpf)

    def stats(self) -> SourceStats:
        lost = {k: self._kdrops[k] + self._decode_errors[k] for k in self._events}
        summed = dict(self.summed.totals) if self.summed is not None else {}
        return SourceStats(events=dict(self._events), lost=lost, aggregated=summed)

    def notices(self) -> list[str]:
        return [n for p in self.probes for n in p.notices()]
