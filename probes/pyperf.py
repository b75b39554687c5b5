"""On-CPU Python stacks walked in the kernel (pyperf.bpf.c), for the sampler.

A thread that is running when the sampler ticks is the expensive one to sample
from outside: its stack changes while it is copied (so copy, re-read, retry),
and every process_vm_readv takes the job's memory-map lock. Here a CPU-clock
perf event interrupts whatever runs on each CPU at the sampler's rate and, for
a thread of a watched process, walks its frames in place: the thread is stopped
under us, so the chain is consistent. User space gets (code object, instruction,
owner) triples per frame and names them with the walker's code cache; threads
that are not running are still sampled from outside, where reusing a stack
that cannot have changed makes them cheap.

Available when BCC is, perf events can be opened, and this process sees the
kernel's PIDs (the root PID namespace): otherwise the sampler walks every
thread from outside, as before.
"""

from __future__ import annotations

import ctypes as ct
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from . import procfs
from .events import StackSample
from .procmem import ReadError
from .pycode import Torn
from .pyframes import build, keep_of
from .pylayouts import Layout
from .pystack import Walker
from .ringbuf import RingReader, event_class

HERE = Path(__file__).resolve().parent
MAX_FRAMES = 128
PYS_GIL, PYS_TRUNCATED, PYS_READ_FAILED = 1, 2, 4
_HEAD = struct.Struct("<QQIIII")
_PERF_TYPE_SOFTWARE, _PERF_COUNT_SW_CPU_CLOCK = 1, 0


def in_root_pid_namespace() -> bool:
    """The kernel reports PIDs as the root namespace numbers them; ours must match."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        return False
    return True


def cflags(L: Layout) -> list[str]:
    """The layout's offsets as -D flags: one compiled program per CPython layout."""
    f: dict[str, object] = {
        "PY_MAX_FRAMES": MAX_FRAMES,
        "PY_TSTATE_FRAME": L.tstate_frame,
        "PY_FRAME_READ": L.frame_read,
        "PY_FRAME_CODE": L.frame_code,
        "PY_FRAME_PREVIOUS": L.frame_previous,
        "PY_FRAME_INSTR": L.frame_instr,
        "PY_FRAME_INSTR_SIZE": 4 if L.frame_model == "frameobject" else 8,
        "PY_GIL_MODE": gil_mode(L),
    }
    if L.cframe_current_frame is not None:
        f["PY_CFRAME_CURRENT_FRAME"] = L.cframe_current_frame
    if L.frame_owner is not None:
        f["PY_FRAME_OWNER"] = L.frame_owner
    if gil_mode(L) == 2:
        f["PY_GIL_LOCKED"], f["PY_GIL_LAST_HOLDER"] = L.gil_locked, L.gil_last_holder
    if gil_mode(L) == 3:
        f["PY_TSTATE_STATUS"], f["PY_HOLDS_GIL_BIT"] = L.tstate_status, L.holds_gil_bit
    return [f"-I{HERE}", "-Wno-macro-redefined"] + [f"-D{k}={v}" for k, v in f.items()]


def gil_mode(L: Layout) -> int:
    """How the walker tells the GIL holder (pystack.Walker._gil), as pyperf.bpf.c does."""
    if L.holds_gil_bit is not None and L.tstate_status is not None:
        return 3
    if L.runtime_tstate_current is not None:
        return 1
    if L.interp_gil_ptr is not None:
        return 2
    return 0


@dataclass(slots=True)
class RawSample:
    pid: int
    tid: int
    ts: int
    tstate: int
    gil: bool
    truncated: bool
    # (code, instr, owner) innermost first
    frames: list[tuple[int, int, int]]


class OnCpuSampler:
    """One compiled program for one layout; processes and their threads are added
    by the caller, which also turns RawSamples into frames (it has the code cache)."""

    def __init__(self, layout: Layout, rate_hz: int):
        from .bccload import bcc_module, compiled

        bcc = bcc_module()
        self.layout = layout
        self.bpf = compiled(bcc, src_file=str(HERE / "pyperf.bpf.c"), cflags=cflags(layout))
        self._ring = RingReader(self.bpf["py_samples"])
        cls = event_class(self.bpf["py_samples"])
        self._code_off = cls.code.offset
        self._instr_off = cls.instr.offset
        self._owner_off = cls.owner.offset
        self._threads = self.bpf["py_threads"]
        self._procs = self.bpf["py_procs"]
        self._counts = self.bpf["py_counts"]
        self._covered: dict[int, int] = {}  # tid -> tstate in the kernel map
        self.rate_hz = 0
        self.set_rate(rate_hz)

    def set_rate(self, hz: int) -> None:
        """Re-open the perf events at a new rate (the budget lowers it)."""
        if hz == self.rate_hz:
            return
        if self.rate_hz:
            self.bpf.detach_perf_event(ev_type=_PERF_TYPE_SOFTWARE, ev_config=_PERF_COUNT_SW_CPU_CLOCK)
        self.bpf.attach_perf_event(ev_type=_PERF_TYPE_SOFTWARE, ev_config=_PERF_COUNT_SW_CPU_CLOCK,
                                   fn_name="on_cpu_sample", sample_freq=hz, cpu=-1)
        self.rate_hz = hz

    def add_process(self, pid: int, gil_addr: int) -> None:
        p = self._procs.Leaf()
        p.gil_addr = gil_addr
        self._procs[ct.c_uint32(pid)] = p

    def remove_process(self, pid: int, tids: set[int]) -> None:
        try:
            del self._procs[ct.c_uint32(pid)]
        except KeyError:
            pass
        for tid in tids:
            self.uncover(tid)

    def cover(self, tid: int, tstate: int) -> None:
        """Walk this thread in the kernel while it is on a CPU."""
        if self._covered.get(tid) != tstate:
            leaf = self._threads.Leaf()
            leaf.tstate = tstate
            self._threads[ct.c_uint32(tid)] = leaf
            self._covered[tid] = tstate

    def uncover(self, tid: int) -> None:
        if self._covered.pop(tid, None) is not None:
            try:
                del self._threads[ct.c_uint32(tid)]
            except KeyError:
                pass

    def covered(self, tid: int) -> int | None:
        """The tstate the kernel walks for tid, if any."""
        return self._covered.get(tid)

    def on_cpu(self, tid: int) -> bool:
        """A covered thread running on a CPU now (not merely runnable)."""
        if tid not in self._covered:
            return False
        try:
            return bool(self._threads[ct.c_uint32(tid)].on_cpu)
        except KeyError:
            return False

    def covered_tids(self) -> set[int]:
        return set(self._covered)

    def read(self) -> list[RawSample]:
        recs: list[bytes] = []
        self._ring.read(recs)
        out = []
        co, io, oo = self._code_off, self._instr_off, self._owner_off
        for r in recs:
            ts, tstate, pid, tid, n, flags = _HEAD.unpack_from(r, 0)
            n = min(n, MAX_FRAMES)
            codes = struct.unpack_from(f"<{n}Q", r, co)
            instrs = struct.unpack_from(f"<{n}q", r, io)  # 3.10: f_lasti, signed
            owners = r[oo:oo + n]
            out.append(RawSample(pid, tid, ts, tstate, bool(flags & PYS_GIL),
                                 bool(flags & (PYS_TRUNCATED | PYS_READ_FAILED)),
                                 list(zip(codes, instrs, owners, strict=True))))
        return out

    def counts(self) -> tuple[int, int, int]:
        """(samples, ring full, frame read failed), summed over CPUs."""
        tot = [0, 0, 0]
        for k in range(3):
            tot[k] = sum(self._counts[ct.c_int(k)])
        return tot[0], tot[1], tot[2]

    def close(self) -> None:
        from .bccload import release

        try:
            self._ring.close()
            release(self.bpf)
        except Exception:  # detaching must never raise into the capture's end
            pass


def available() -> str | None:
    """None when the kernel walker can be used here, else why not."""
    if os.environ.get("GPUSCOPE_PYTHON_KERNEL_WALK", "1") == "0":
        return "switched off (GPUSCOPE_PYTHON_KERNEL_WALK=0)"
    if not in_root_pid_namespace():
        return "not in the root PID namespace"
    if os.geteuid() != 0:
        return "not root"
    return None


def load_in_background(layout: Layout, rate_hz: int, stop: threading.Event,
                       loaded: Callable[[KernelWalks], None], notice: Callable[[str], None]
                       ) -> LoadThread | None:
    """Compile and attach in a thread of its own; loaded(walks) when it is live, or
    notice(why not). None (and the notice) when it cannot be used here at all."""
    why = available()
    if why is not None:
        notice(f"python sampler: running threads walked from outside ({why})")
        return None

    def load() -> None:
        t.native = threading.get_native_id()
        try:
            kw = KernelWalks(OnCpuSampler(layout, rate_hz))
        except Exception as e:  # BCC or perf events unavailable: the outside walk stays
            notice(f"python sampler: running threads walked from outside "
                   f"(kernel walker not loaded: {str(e).splitlines()[0][:120]})")
            return
        finally:
            t.cpu_s = time.thread_time()
        if stop.is_set():
            kw.close()
        else:
            loaded(kw)

    t = LoadThread(target=load, name="gpuscope-pyperf-load", daemon=True)
    t.start()
    return t


class LoadThread(threading.Thread):
    """The compile's thread, which says how much CPU it has used (the overhead
    budget leaves this one-off cost out)."""

    native: int | None = None
    cpu_s: float | None = None  # set when it is done

    def used_cpu_s(self) -> float:
        if self.cpu_s is not None:
            return self.cpu_s
        if self.native is None:
            return 0.0
        st = procfs.stat(os.getpid(), self.native)
        return (st.utime + st.stime) / os.sysconf("SC_CLK_TCK") if st is not None else 0.0


class KernelWalks:
    """The sampler's side of OnCpuSampler: which processes and threads it covers,
    and its raw samples named as StackSamples by each process's Walker."""

    REVALIDATE_NS = 1_000_000_000  # a cached code object's header is re-read this often

    def __init__(self, oncpu: OnCpuSampler):
        self.oncpu = oncpu
        self.layout = oncpu.layout
        self._procs: dict[int, set[int]] = {}  # pid -> covered tids
        self._checked: dict[tuple[int, int], int] = {}  # (pid, code) -> last header check
        self._deep: set[int] = set()  # tids whose stacks the kernel walk cut short
        self.samples = 0

    def add(self, w: Walker) -> bool:
        """Cover w's process if it has the compiled layout. True if covered."""
        if w.pid in self._procs:
            return True
        if w.L is not self.layout:
            return False
        L = self.layout
        mode = gil_mode(L)
        addr = 0
        try:
            if mode == 1:
                addr = w.rt.runtime_addr + cast(int, L.runtime_tstate_current)
            elif mode == 2:
                interp = w.interpreters()[-1]  # the main interpreter is the oldest
                addr = struct.unpack("<Q", w.mem.read(interp + cast(int, L.interp_gil_ptr), 8))[0]
        except (ReadError, IndexError):
            return False
        self.oncpu.add_process(w.pid, addr)
        self._procs[w.pid] = set()
        return True

    def remove(self, pid: int) -> None:
        tids = self._procs.pop(pid, None)
        if tids is not None:
            self.oncpu.remove_process(pid, tids)
        for key in [k for k in self._checked if k[0] == pid]:
            del self._checked[key]

    def cover(self, pid: int, threads: list[tuple[int, int]]) -> None:
        """threads: this tick's (tid, tstate) of pid; the others are dropped."""
        have = self._procs.get(pid)
        if have is None:
            return
        now = {tid for tid, _ in threads}
        for tid in have - now:
            self.oncpu.uncover(tid)
            self._deep.discard(tid)
        for tid, tstate in threads:
            if tid not in self._deep:
                self.oncpu.cover(tid, tstate)
        self._procs[pid] = now - self._deep

    def pids(self) -> set[int]:
        return set(self._procs)

    def covers(self, tid: int) -> bool:
        """tid is on a CPU now and the perf event samples it there (one that is
        runnable but waiting for a CPU is the outside walker's)."""
        return self.oncpu.on_cpu(tid)

    def collect(self, walkers: dict[int, Walker], lost: dict[str, int]) -> list[StackSample]:
        """The kernel's samples since the last call, as StackSamples ("running")."""
        raws = self.oncpu.read()
        if not raws:
            return []
        by_pid: dict[int, list[RawSample]] = {}
        for r in raws:
            by_pid.setdefault(r.pid, []).append(r)
        out: list[StackSample] = []
        now = time.monotonic_ns()
        for pid, rs in by_pid.items():
            w = walkers.get(pid)
            if w is None:
                continue
            L = w.L
            need = list({c for r in rs for c, _, o in r.frames if keep_of(L, o)})
            cache = w.code_cache.codes
            stale = [c for c in need if c not in cache
                     or now - self._checked.get((pid, c), 0) > self.REVALIDATE_NS]
            infos = {c: cache[c] for c in need if c in cache}
            if stale:
                try:
                    hdrs = w.mem.read_many([(c, L.code_read) for c in stale])
                except ReadError:
                    continue  # the process is going: its samples go with it
                for c, hdr in zip(stale, hdrs, strict=True):
                    infos.pop(c, None)
                    if hdr is None:
                        continue
                    try:
                        infos[c] = w.code_cache.get(c, hdr)
                        self._checked[(pid, c)] = now
                    except (Torn, ReadError):
                        pass
            for r in rs:
                chain = [(c, i, keep_of(L, o)) for c, i, o in r.frames]
                if any(k and c not in infos for c, _, k in chain):
                    lost["unreadable code (kernel walk)"] = lost.get("unreadable code (kernel walk)", 0) + 1
                    continue
                try:
                    frames = build(L, chain, infos)
                except Torn:
                    lost["torn stack (kernel walk)"] = lost.get("torn stack (kernel walk)", 0) + 1
                    continue
                if r.truncated:  # deeper than the kernel walks: walked from outside from now on
                    self._deep.add(r.tid)
                    self.oncpu.uncover(r.tid)
                    lost["stack too deep for the kernel walk"] = (
                        lost.get("stack too deep for the kernel walk", 0) + 1)
                    continue
                out.append(StackSample(pid, r.tid, r.ts, "running", r.gil, tuple(frames)))
        self.samples += len(out)
        return out

    def close(self) -> None:
        self.oncpu.close()
