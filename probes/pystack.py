"""Walk every thread's Python stack in a live process, from outside.

The target keeps running while we read, so every sample is a set of reads of
memory that may be changing. Consistency comes from: whole-struct reads, the
thread's data-stack chunk copied in one read (3.11+), code objects type-checked
against &PyCode_Type and re-read in one batched readv, instruction bounds, cycle
detection, a depth cap, and a final re-read of the thread's current-frame
pointer; any doubt makes the stack torn (retried by the caller, then counted
lost) — never a wrong stack.

Cost (each process_vm_readv from Python is several µs, and so is the walk): a
tick reads the thread list in one syscall (the tstates seen last time, checked
against their own next pointers), the idle threads' frame pointers and data-stack
chunks in one, and their re-checks in one (a running thread gets its own two, to
keep its copy and re-check close together). A thread that has not been
on a CPU since its last walk (the caller's probe: same scheduler run count and
run time, not running now) cannot have changed its stack, so its last stack is
reused, and counted as such.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import cast

from . import procfs
from .events import Frame
from .procmem import ProcessGone, ProcessMemory, ReadError
from .pycode import CodeCache, Torn
from .pyframes import FrameReader, ThreadStack
from .pyruntime import NotPython, Runtime, UnsupportedVersion, find_runtime
from .pytids import TidMap

MAX_THREADS = 4096
# DataLoader plumbing threads (queue feeders, pin-memory, fd sharing): while idle and
# unchanged they are walked every THIN_EVERY-th tick; the verdict never reads them.
THIN_EVERY = 4
# Ticks on which nothing needs reading still read the thread list every LIST_EVERY-th
# tick, so a new thread is sampled within that many ticks.
LIST_EVERY = 10
_PLUMBING = (("multiprocessing/queues.py", "_feed"),
             ("torch/utils/data/_utils/pin_memory.py", "_pin_memory_loop"),
             ("multiprocessing/resource_sharer.py", "_serve"))
_u64 = struct.Struct("<Q").unpack_from
_i32 = struct.Struct("<i").unpack_from

# probe(tid) -> (state letter, run key) or None when tid is not a live thread. The key
# changes whenever the thread has been on a CPU (e.g. /proc's schedstat line).
Probe = Callable[[int], "tuple[str, object] | None"]

def _plumbing(frames: tuple[Frame, ...]) -> bool:
    return any(f.file.endswith(path) and f.function.rsplit(".", 1)[-1] == fn
               for f in frames for path, fn in _PLUMBING)


class Walker(FrameReader):
    """Reads all thread stacks of one process. Not thread-safe; one per pid."""

    @property
    def tid_note(self) -> str | None:
        return self.tids.note

    def __init__(self, rt: Runtime, mem: ProcessMemory | None = None):
        self.rt = rt
        self.L = rt.layout
        self.mem = mem or ProcessMemory(rt.pid)
        self.pid = rt.pid
        self._frame_read = self.L.frame_read
        self._tstate_read = self.L.tstate_read
        self._code_read = self.L.code_read
        self.code_cache = CodeCache(self.L, self.mem, rt.code_type)
        self._interps: list[int] = []
        self._interps_at = 0.0
        self._gil_struct: dict[int, int] = {}
        self._known: dict[int, list[int]] = {}  # interp -> tstate addresses last seen
        self._last: dict[int, tuple[object, ThreadStack]] = {}  # tstate -> (run key, stack)
        self._idle_plumbing: dict[int, int] = {}  # tstate -> walks in a row, idle, same stack
        self._ticks = 0
        self._listed: dict[int, list[tuple[int, bytes]]] = {}  # interp -> last (tstate, bytes)
        self._probed: dict[int, tuple[str, object]] = {}  # tstate -> this tick's probe result
        self.tids = TidMap(self.L, self.mem, self.pid)

    # ---- interpreters and threads -------------------------------------------------

    def interpreters(self) -> list[int]:
        """Interpreter states, refreshed once a second (sub-interpreters are rare)."""
        now = time.monotonic()
        if not self._interps or now - self._interps_at > 1.0:
            out: list[int] = []
            addr = _u64(self.mem.read(self.rt.runtime_addr + self.L.runtime_interp_head, 8))[0]
            while addr and len(out) < 64 and addr not in out:
                out.append(addr)
                addr = _u64(self.mem.read(addr + self.L.interp_next, 8))[0]
            self._interps, self._interps_at = out, now
        return self._interps

    def _thread_list(self, interp: int) -> tuple[list[tuple[int, bytes]], int]:
        """[(tstate address, tstate bytes)] newest first, and the GIL holder's tstate.
        The tstates seen last time are read with the list head in one syscall; if
        their next pointers still chain from the head to the end, that is the list."""
        L, mem = self.L, self.mem
        spans = [(interp + L.interp_threads_head, 8)]
        if L.runtime_tstate_current is not None:
            spans.append((self.rt.runtime_addr + L.runtime_tstate_current, 8))
        elif L.interp_gil_ptr is not None and L.holds_gil_bit is None:
            gil = self._gil_struct.get(interp)
            if gil is None:
                gil = self._gil_struct[interp] = _u64(mem.read(interp + L.interp_gil_ptr, 8))[0]
            spans.append((gil, max(L.gil_last_holder, L.gil_locked) + 8))
        fixed = len(spans)
        known = self._known.get(interp, [])
        spans += [(a, self._tstate_read) for a in known]
        got = mem.read_many(spans)
        first, second = got[0], (got[1] if fixed > 1 else b"")
        if first is None or second is None:
            raise Torn("interpreter state unreadable")
        head = _u64(first)[0]
        holder = 0
        if L.runtime_tstate_current is not None:
            holder = _u64(second)[0]
        elif fixed > 1:
            if _i32(second, L.gil_locked)[0]:
                holder = _u64(second, L.gil_last_holder)[0]
        tbs = got[fixed:]
        if known and head == known[0] and None not in tbs:
            whole = cast("list[bytes]", tbs)  # none of them None, just checked
            if all(_u64(b, L.tstate_next)[0] == (known[i + 1] if i + 1 < len(known) else 0)
                   for i, b in enumerate(whole)):
                return list(zip(known, whole, strict=True)), holder
        out: list[tuple[int, bytes]] = []
        seen: set[int] = set()
        addr = head
        while addr:
            if addr in seen or len(out) >= MAX_THREADS:
                raise Torn("thread list cycle")
            seen.add(addr)
            b = mem.read(addr, self._tstate_read)
            out.append((addr, b))
            addr = _u64(b, L.tstate_next)[0]
        self._known[interp] = [a for a, _ in out]
        return out, holder

    # ---- one snapshot --------------------------------------------------------------

    def sample(self, retries: int = 3, probe: Probe | None = None,
               on_cpu_elsewhere: Callable[[int], bool] | None = None
               ) -> tuple[list[ThreadStack], dict[str, int]]:
        """Every thread's stack now. Returns (stacks, lost counts by reason); a stack
        that stays torn after `retries` attempts comes back with frames=None. With a
        probe, a thread it says is gone is not walked (state None, frames None), and
        one that has not run since its last walk gets its last stack (reused). A
        running thread for which on_cpu_elsewhere(tid) is true (the kernel walks it
        while it runs: pyperf) is not walked: frames None, error "on cpu".
        When every thread of the last list needs no read this tick, the list itself
        is not read again either, except every LIST_EVERY-th tick (new threads)."""
        lost: dict[str, int] = {}
        out: list[ThreadStack] = []
        live: set[int] = set()
        self._ticks += 1
        for interp in self.interpreters():
            cached = self._listed.get(interp)
            first: dict[int, ThreadStack | None] = {}   # this tick's look at the cached list
            if probe is not None and cached and self._ticks % LIST_EVERY:
                cheap = [self._cheap(a, tb, probe, on_cpu_elsewhere, None) for a, tb in cached]
                if None not in cheap and not any(c.error == "gone" for c in cheap if c):
                    live.update(a for a, _ in cached)
                    out += cast("list[ThreadStack]", cheap)
                    continue
                # Some thread needs a walk: the list is read again, but the threads
                # already looked at are not probed twice in one tick.
                first = {a: c for (a, _), c in zip(cached, cheap, strict=True)}
            threads: list[tuple[int, bytes]] = []
            holder = 0
            for attempt in range(retries):
                try:
                    threads, holder = self._thread_list(interp)
                    break
                except (Torn, ReadError) as e:
                    if isinstance(e, ProcessGone):
                        raise
                    self._known.pop(interp, None)
                    if attempt == retries - 1:
                        lost["thread list"] = lost.get("thread list", 0) + 1
            self._listed[interp] = threads
            if self.L.tstate_native_tid is None and self.tids.off is None and threads:
                self.tids.calibrate(threads)
            todo: list[tuple[int, bytes, str | None, object]] = []
            for addr, tb in threads:
                live.add(addr)
                done = (first[addr] if addr in first
                        else self._cheap(addr, tb, probe, on_cpu_elsewhere, holder))
                if done is not None:
                    out.append(done)
                    continue
                r = self._probed.pop(addr, None)
                todo.append((addr, tb, r[0] if r else None, r[1] if r else None))
            out += self._walk_all(todo, holder, retries, lost)
        self._probed.clear()
        for addr in [a for a in self._last if a not in live]:
            del self._last[addr]
        for addr in [a for a in self._idle_plumbing if a not in live]:
            del self._idle_plumbing[addr]
        return out, lost

    def _cheap(self, addr: int, tb: bytes, probe: Probe | None,
               on_cpu_elsewhere: Callable[[int], bool] | None, holder: int | None
               ) -> ThreadStack | None:
        """This thread's sample when no memory read is needed (gone, on a CPU and
        walked by the kernel, not run since its last walk, thinned); None: walk it.
        holder None: the GIL holder was not read this tick (a reused stack keeps the
        GIL flag it had: a thread that has not run cannot have taken or dropped it)."""
        tid = self.tids.known(addr, tb)
        if probe is None or tid is None:
            return None
        r = probe(tid)
        if r is None:  # exited, or a pre-fork thread state: not ours
            return ThreadStack(tid, addr, False, None, "gone", time.monotonic_ns())
        st, key = r
        if st == "R" and on_cpu_elsewhere is not None and on_cpu_elsewhere(tid):
            return ThreadStack(tid, addr, False, None, "on cpu", time.monotonic_ns(), st)
        prev = self._last.get(addr)
        if prev is not None and st != "R" and prev[0] == key and prev[1].tid == tid:
            s = prev[1]
            gil = s.gil if holder is None else self._gil(addr, tb, holder)
            return ThreadStack(tid, addr, gil, s.frames, None, time.monotonic_ns(), st, True)
        if (st != "R" and self._idle_plumbing.get(addr, 0) >= 2
                and (self._ticks + addr // 64) % THIN_EVERY):
            return ThreadStack(tid, addr, False, None, "thinned", time.monotonic_ns(), st)
        self._probed[addr] = (st, key)
        return None

    def _walk_all(self, todo, holder: int, retries: int, lost: dict[str, int]) -> list[ThreadStack]:
        """Walk these threads with batched reads; one that comes out torn is walked
        again on its own (re-reading its tstate) up to `retries` times."""
        out = []
        # Threads on a CPU are walked one by one (the shorter the time between copy and
        # re-check, the fewer torn stacks); the others share their syscalls.
        batch = [(a, tb) for a, tb, st, _ in todo if st != "R"]
        walked = dict(zip((a for a, _ in batch), self._walk_batch(batch, holder) if batch else [],
                          strict=True))
        got = [walked[a] if a in walked else self._walk_batch([(a, tb)], holder)[0]
               for a, tb, _, _ in todo]
        for (addr, tb, st, key), stack in zip(todo, got, strict=True):
            err = "torn stack"
            if isinstance(stack, Exception):
                err = stack.reason if isinstance(stack, Torn) else "read failed"
                stack = None
                for _attempt in range(retries - 1):
                    try:
                        tb = self.mem.read(addr, self._tstate_read)  # it may have moved on
                    except ProcessGone:
                        raise
                    except ReadError:
                        break
                    try:
                        stack = self._walk_batch([(addr, tb)], holder)[0]
                    except ProcessGone:
                        raise
                    if not isinstance(stack, Exception):
                        break
                    err = stack.reason if isinstance(stack, Torn) else "read failed"
                    stack = None
            if stack is None:
                lost[err] = lost.get(err, 0) + 1
                stack = ThreadStack(self.tids.fallback(tb), addr, False, None, err, time.monotonic_ns())
            elif key is not None:
                prev = self._last.get(addr)
                same = prev is not None and prev[1].frames == stack.frames
                if st != "R" and same and _plumbing(stack.frames):
                    self._idle_plumbing[addr] = self._idle_plumbing.get(addr, 0) + 1
                else:
                    self._idle_plumbing.pop(addr, None)
                self._last[addr] = (key, stack)
            stack.state = st
            out.append(stack)
        return out


# ---- one-shot helpers (doctor, tests) ------------------------------------------------


def dump(pid: int) -> dict[int, list[Frame]]:
    """One snapshot of every live thread's stack, innermost frame last.
    Raises NotPython, UnsupportedVersion, or OSError."""
    walker = Walker(find_runtime(pid))
    tids = set(procfs.threads(pid))
    if not tids:
        raise ProcessLookupError(f"process {pid} is gone")
    stacks, _ = walker.sample()
    return {s.tid: list(s.frames) for s in stacks if s.frames is not None and s.tid in tids}


def python_version(pid: int) -> str | None:
    """The target's CPython version ("3.12.1"; "3.10" when the micro is unknown),
    also for unsupported versions; None when it is not a CPython process."""
    try:
        return find_runtime(pid).version_str
    except UnsupportedVersion as e:
        return getattr(e, "version", None)
    except (NotPython, OSError):
        return None
