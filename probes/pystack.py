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
from dataclasses import dataclass
from typing import cast

from . import pyframes
from .events import Frame
from .procmem import ProcessGone, ProcessMemory, ReadError
from .pycode import CodeCache, Torn
from .pyruntime import Runtime
from .pytids import TidMap

MAX_DEPTH = 4096
MAX_THREADS = 4096
MAX_CHUNK_COPY = 1 << 20
# DataLoader plumbing threads (queue feeders, pin-memory, fd sharing): while idle and
# unchanged they are walked every THIN_EVERY-th tick; the verdict never reads them.
THIN_EVERY = 4
_PLUMBING = (("multiprocessing/queues.py", "_feed"),
             ("torch/utils/data/_utils/pin_memory.py", "_pin_memory_loop"),
             ("multiprocessing/resource_sharer.py", "_serve"))
_u64 = struct.Struct("<Q").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from

# probe(tid) -> (state letter, run key) or None when tid is not a live thread. The key
# changes whenever the thread has been on a CPU (e.g. /proc's schedstat line).
Probe = Callable[[int], "tuple[str, object] | None"]


@dataclass
class ThreadStack:
    tid: int
    tstate: int
    gil: bool
    frames: tuple[Frame, ...] | None  # innermost last; None when lost
    error: str | None = None
    ts: int = 0  # CLOCK_MONOTONIC ns when the walk of this thread began
    state: str | None = None  # the probe's state letter (None: not probed, or gone)
    reused: bool = False  # the thread had not run: its previous stack
    # frames None and error "thinned": an idle plumbing thread skipped this tick


def _plumbing(frames: tuple[Frame, ...]) -> bool:
    return any(f.file.endswith(path) and f.function.rsplit(".", 1)[-1] == fn
               for f in frames for path, fn in _PLUMBING)


class Walker:
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
        while it runs, pyperf) is not walked: frames None, error "on cpu"."""
        lost: dict[str, int] = {}
        out: list[ThreadStack] = []
        live: set[int] = set()
        self._ticks += 1
        for interp in self.interpreters():
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
            if self.L.tstate_native_tid is None and self.tids.off is None and threads:
                self.tids.calibrate(threads)
            todo: list[tuple[int, bytes, str | None, object]] = []
            for addr, tb in threads:
                live.add(addr)
                tid = self.tids.known(addr, tb)
                st = key = None
                if probe is not None and tid is not None:
                    r = probe(tid)
                    if r is None:  # exited, or a pre-fork thread state: not ours
                        out.append(ThreadStack(tid, addr, False, None, "gone", time.monotonic_ns()))
                        continue
                    st, key = r
                    if st == "R" and on_cpu_elsewhere is not None and on_cpu_elsewhere(tid):
                        out.append(ThreadStack(tid, addr, False, None, "on cpu", time.monotonic_ns(), st))
                        continue
                    prev = self._last.get(addr)
                    if prev is not None and st != "R" and prev[0] == key and prev[1].tid == tid:
                        s = prev[1]
                        out.append(ThreadStack(tid, addr, self._gil(addr, tb, holder), s.frames,
                                               None, time.monotonic_ns(), st, True))
                        continue
                    if (st != "R" and self._idle_plumbing.get(addr, 0) >= 2
                            and (self._ticks + addr // 64) % THIN_EVERY):
                        out.append(ThreadStack(tid, addr, False, None, "thinned", time.monotonic_ns(), st))
                        continue
                todo.append((addr, tb, st, key))
            out += self._walk_all(todo, holder, retries, lost)
        for addr in [a for a in self._last if a not in live]:
            del self._last[addr]
        for addr in [a for a in self._idle_plumbing if a not in live]:
            del self._idle_plumbing[addr]
        return out, lost

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

    # ---- threads' stacks, batched ---------------------------------------------------

    def _gil(self, tstate: int, tb: bytes, holder: int) -> bool:
        bit, status = self.L.holds_gil_bit, self.L.tstate_status  # both set, or neither
        if bit is not None and status is not None:
            return bool(_u32(tb, status)[0] >> bit & 1)
        return tstate == holder

    def _walk_batch(self, threads: list[tuple[int, bytes]], holder: int) -> list:
        """ThreadStack, or the Torn/ReadError that sank it, for each (tstate, bytes).
        Three syscalls for all of them: frame pointers and data-stack chunks; (frames
        outside the chunks, rare, one each); then the re-check of everything."""
        L, mem = self.L, self.mem
        # 1. where each thread's current frame pointer lives, and its data-stack chunk
        spans: list[tuple[int, int]] = []
        plan: list[tuple[int, int | None, int, int, int, int]] = []
        chunk_off, top_off = L.tstate_datastack_chunk, L.tstate_datastack_top
        for tstate, tb in threads:
            if L.cframe_current_frame is None:  # the pointer is in the tstate itself
                loc, cur = tstate + L.tstate_frame, _u64(tb, L.tstate_frame)[0]
            else:  # in a _PyCFrame (3.11/3.12)
                loc, cur = _u64(tb, L.tstate_frame)[0] + L.cframe_current_frame, None
            lo = hi = 0
            if chunk_off is not None and top_off is not None:
                lo = _u64(tb, chunk_off)[0]
                hi = _u64(tb, top_off)[0]
                if not (lo and lo < hi and hi - lo <= MAX_CHUNK_COPY):
                    lo = hi = 0
            ip = ic = -1
            if cur is None and loc == L.cframe_current_frame:  # cframe NULL: no frame
                loc = cur = 0
            elif cur is None:
                ip = len(spans)
                spans.append((loc, 8))
            if hi:
                ic = len(spans)
                spans.append((lo, hi - lo))
            plan.append((loc, cur, lo, hi, ip, ic))
        got = mem.read_many(spans) if spans else []
        # 2. each thread's frame chain, from its chunk where it can
        results: list = []
        walks: list[tuple[int, bytes, int, int, list[tuple[int, int, int, int, int]], int] | None] = []
        for (tstate, tb), (loc, cur, lo, hi, ip, ic) in zip(threads, plan, strict=True):
            ts = time.monotonic_ns()
            try:
                if cur is None:
                    if ip < 0:
                        cur = 0
                    else:
                        fp = got[ip]
                        if fp is None:
                            raise Torn("frame pointer unreadable")
                        cur = _u64(fp)[0]
                chunk = got[ic] if ic >= 0 else None
                if chunk is None or not lo < cur < hi:
                    chunk, lo, hi = b"", 0, 0
                raw = self._raw_frames(cur, chunk, lo, hi)
            except (Torn, ReadError) as e:
                if isinstance(e, ProcessGone):
                    raise
                results.append(e)
                walks.append(None)
                continue
            results.append(None)
            walks.append((tstate, tb, loc, cur, raw, ts))
        # 3. one re-read of every pointer, frame and code header the walks relied on
        spans = []
        slices: list[tuple[int, list[int]] | None] = []
        for w in walks:
            if w is None:
                slices.append(None)
                continue
            tstate, tb, loc, cur, raw, _ = w
            codes = list(dict.fromkeys(r[1] for r in raw if r[3]))
            start = len(spans)
            spans.append((loc, 8))  # (loc 0, a NULL cframe: read fails, not checked)
            spans += [(r[0], self._frame_read) for r in raw]
            spans += [(c, self._code_read) for c in codes]
            if L.tstate_native_tid is None:
                spans.append((_u64(tb, L.tstate_thread_id)[0] + (self.tids.off or 0), 4))
            slices.append((start, codes))
        got = mem.read_many(spans) if spans else []
        for k, (w, sl) in enumerate(zip(walks, slices, strict=True)):
            if w is None or sl is None:  # both, or neither
                continue
            start, codes = sl
            try:
                results[k] = self._finish(w, holder, got, start, codes)
            except (Torn, ReadError) as e:
                if isinstance(e, ProcessGone):
                    raise
                results[k] = e
        return results

    def _finish(self, walk, holder: int, got: list, start: int, codes: list[int]) -> ThreadStack:
        """The stack of one thread, if the re-read matches what its walk used."""
        L = self.L
        tstate, tb, loc, cur, raw, ts = walk
        if loc and (got[start] is None or _u64(got[start])[0] != cur):
            raise Torn("torn stack")
        fbase = start + 1
        for k, (_addr, code, instr, _keep, prev) in enumerate(raw):
            fb = got[fbase + k]
            if (fb is None or _u64(fb, L.frame_code)[0] != code
                    or _u64(fb, L.frame_previous)[0] != prev
                    or k and self._instr(fb) != instr):
                raise Torn("torn stack")
        infos = {}
        cbase = fbase + len(raw)
        for k, c in enumerate(codes):
            hdr = got[cbase + k]
            if hdr is None:
                raise Torn("code object unreadable")
            infos[c] = self.code_cache.get(c, hdr)
        frames = pyframes.build(L, [(r[1], r[2], r[3]) for r in raw], infos)
        if L.tstate_native_tid is not None:
            tid = _u64(tb, L.tstate_native_tid)[0]
        else:
            tail = got[cbase + len(codes)]
            if self.tids.off is not None and tail is not None:
                tid = _i32(tail)[0]
                self.tids.remember(tstate, tb, tid)
            else:
                tid = self.tids.fallback(tb)
        return ThreadStack(tid, tstate, self._gil(tstate, tb, holder), tuple(frames), None, ts)

    def _instr(self, fb: bytes) -> int:
        if self.L.frame_model == "frameobject":
            return _i32(fb, self.L.frame_instr)[0]
        return _u64(fb, self.L.frame_instr)[0]

    def _raw_frames(self, cur: int, chunk: bytes, lo: int, hi: int) -> list[tuple[int, int, int, int, int]]:
        """[(frame address, code address, instruction, owner + 1 or 0 for a shim to
        skip, previous)] innermost first. Frames inside [lo, hi) come from chunk."""
        L, mem = self.L, self.mem
        size = self._frame_read
        # frame_owner is None only in the frameobject model, which reads no owner byte
        code_off, prev_off, owner_off = L.frame_code, L.frame_previous, L.frame_owner or 0
        frameobject = L.frame_model == "frameobject"
        skip_min = L.owner_skip_min
        out: list[tuple[int, int, int, int, int]] = []
        seen: set[int] = set()
        addr = cur
        while addr:
            if addr in seen:
                raise Torn("frame cycle")
            if len(seen) >= MAX_DEPTH:
                raise Torn("stack too deep")
            seen.add(addr)
            if lo <= addr and addr + size <= hi:
                fb = chunk[addr - lo : addr - lo + size]
            else:
                fb = mem.read(addr, size)
            code = _u64(fb, code_off)[0]
            prev = _u64(fb, prev_off)[0]
            if frameobject:
                keep = 1
            else:
                owner = fb[owner_off]
                keep = owner + 1 if skip_min is None or owner < skip_min else 0
            out.append((addr, code, self._instr(fb), keep, prev))
            addr = prev
        return out
