"""Walk every thread's Python stack in a live process, from outside.

The target keeps running while we read, so every sample is a set of reads of
memory that may be changing. Consistency comes from: whole-struct reads, the
thread's data-stack chunk copied in one read (3.11+), code objects type-checked
against &PyCode_Type and re-read in one batched readv per thread, instruction
bounds, cycle detection, a depth cap, and a final re-read of the thread's
current-frame pointer; any doubt makes the stack torn (retried by the caller,
then counted lost) — never a wrong stack.

Code objects are cached by address with a signature of their header (names,
line table, first line), so a freed-and-reused address is noticed.
"""

from __future__ import annotations

import bisect
import os
import struct
import time
from dataclasses import dataclass, field

from .events import Frame
from .procmem import ProcessGone, ProcessMemory, ReadError
from .pylines import parse_lnotab310, parse_locations311
from .pyruntime import Runtime

MAX_DEPTH = 4096
MAX_THREADS = 4096
MAX_CHUNK_COPY = 1 << 20
_u64 = struct.Struct("<Q").unpack_from
_i64 = struct.Struct("<q").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from


class Torn(Exception):
    """The stack changed (or looked inconsistent) while we read it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class CodeInfo:
    sig: bytes  # header bytes the entry was built from
    function: str
    file: str
    firstlineno: int
    starts: list[int]  # line table ranges in code units, sorted by start
    ends: list[int]
    lines: list[int]
    n_units: int  # code size in code units (bound for the instruction index)
    firsttraceable: int
    line_cache: dict[int, int] = field(default_factory=dict)

    def line(self, idx: int) -> int:
        line = self.line_cache.get(idx)
        if line is None:
            k = bisect.bisect_right(self.starts, idx) - 1
            line = self.lines[k] if k >= 0 and idx < self.ends[k] else -1
            if line < 0:
                line = self.firstlineno if idx < 0 else 0
            if len(self.line_cache) < 4096:
                self.line_cache[idx] = line
        return line


@dataclass
class ThreadStack:
    tid: int
    tstate: int
    gil: bool
    frames: tuple[Frame, ...] | None  # innermost last; None when lost
    error: str | None = None
    ts: int = 0  # CLOCK_MONOTONIC ns when the walk of this thread began


class Walker:
    """Reads all thread stacks of one process. Not thread-safe; one per pid."""

    def __init__(self, rt: Runtime, mem: ProcessMemory | None = None):
        self.rt = rt
        self.L = rt.layout
        self.mem = mem or ProcessMemory(rt.pid)
        self.pid = rt.pid
        self._frame_read = self.L.frame_read
        self._tstate_read = self.L.tstate_read
        self._code_read = self.L.code_read
        self.codes: dict[int, CodeInfo] = {}
        self._interps: list[int] = []
        self._interps_at = 0.0
        self._gil_struct: dict[int, int] = {}
        self._tid_off: int | None = None  # 3.10: offset of the TID in glibc's struct pthread
        self.tid_note: str | None = None

    # ---- interpreters and threads -------------------------------------------------

    def interpreters(self) -> list[int]:
        """Interpreter states, refreshed once a second (sub-interpreters are rare)."""
        now = time.monotonic()
        if not self._interps or now - self._interps_at > 1.0:
            out, addr = [], _u64(self.mem.read(self.rt.runtime_addr + self.L.runtime_interp_head, 8))[0]
            while addr and len(out) < 64 and addr not in out:
                out.append(addr)
                addr = _u64(self.mem.read(addr + self.L.interp_next, 8))[0]
            self._interps, self._interps_at = out, now
        return self._interps

    def _thread_list(self, interp: int) -> tuple[list[tuple[int, bytes]], int]:
        """[(tstate address, tstate bytes)] newest first, and the GIL holder's tstate."""
        L, mem = self.L, self.mem
        spans = [(interp + L.interp_threads_head, 8)]
        if L.runtime_tstate_current is not None:
            spans.append((self.rt.runtime_addr + L.runtime_tstate_current, 8))
        elif L.interp_gil_ptr is not None and L.holds_gil_bit is None:
            gil = self._gil_struct.get(interp)
            if gil is None:
                gil = self._gil_struct[interp] = _u64(mem.read(interp + L.interp_gil_ptr, 8))[0]
            spans.append((gil, max(L.gil_last_holder, L.gil_locked) + 8))
        got = mem.read_many(spans)
        if any(g is None for g in got):
            raise Torn("interpreter state unreadable")
        head = _u64(got[0])[0]
        holder = 0
        if L.runtime_tstate_current is not None:
            holder = _u64(got[1])[0]
        elif len(got) > 1:
            if _i32(got[1], L.gil_locked)[0]:
                holder = _u64(got[1], L.gil_last_holder)[0]
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
        return out, holder

    # ---- one snapshot --------------------------------------------------------------

    def sample(self, retries: int = 3) -> tuple[list[ThreadStack], dict[str, int]]:
        """Every thread's stack now. Returns (stacks, lost counts by reason); a stack
        that stays torn after `retries` attempts comes back with frames=None."""
        lost: dict[str, int] = {}
        out: list[ThreadStack] = []
        for interp in self.interpreters():
            for attempt in range(retries):
                try:
                    threads, holder = self._thread_list(interp)
                    break
                except (Torn, ReadError) as e:
                    if isinstance(e, ProcessGone):
                        raise
                    if attempt == retries - 1:
                        lost["thread list"] = lost.get("thread list", 0) + 1
                        threads, holder = [], 0
            if self.L.tstate_native_tid is None and self._tid_off is None and threads:
                self._calibrate_tid(threads)
            for addr, tb in threads:
                stack = None
                for _attempt in range(retries):
                    try:
                        stack = self._walk(addr, tb, holder)
                        break
                    except (Torn, ReadError) as e:
                        if isinstance(e, ProcessGone):
                            raise
                        err = e.reason if isinstance(e, Torn) else "read failed"
                        try:  # re-read the thread state: it may have moved on
                            tb = self.mem.read(addr, self._tstate_read)
                        except ReadError:
                            break
                if stack is None:
                    lost[err] = lost.get(err, 0) + 1
                    stack = ThreadStack(self._tid_fallback(tb), addr, False, None, err, time.monotonic_ns())
                out.append(stack)
        return out, lost

    # ---- one thread ----------------------------------------------------------------

    def _frame_ptr_loc(self, tb: bytes) -> int | None:
        """Where the current frame pointer lives: in a _PyCFrame (3.11/3.12) or the tstate."""
        if self.L.cframe_current_frame is None:
            return None
        return _u64(tb, self.L.tstate_frame)[0] + self.L.cframe_current_frame

    def _walk(self, tstate: int, tb: bytes, holder: int) -> ThreadStack:
        L, mem = self.L, self.mem
        ts = time.monotonic_ns()
        loc = self._frame_ptr_loc(tb)
        if loc is None:
            loc = tstate + L.tstate_frame
            cur = _u64(tb, L.tstate_frame)[0]
        elif loc == L.cframe_current_frame:  # cframe NULL
            cur = 0
        else:
            cur = _u64(mem.read(loc, 8))[0]
        if L.holds_gil_bit is not None:
            gil = bool(_u32(tb, L.tstate_status)[0] >> L.holds_gil_bit & 1)
        else:
            gil = tstate == holder
        raw = self._raw_frames(cur, tb)
        # One batched read re-checks everything the walk relied on: the frame pointer,
        # every frame (the chain may have changed while we followed it), the code
        # headers, and (3.10) the TID. A chain that reads the same twice, the second
        # time within one syscall, existed as a whole.
        codes = list(dict.fromkeys(r[1] for r in raw if r[3]))
        spans = [(loc, 8)] + [(r[0], self._frame_read) for r in raw] + [(c, self._code_read) for c in codes]
        if L.tstate_native_tid is None:
            spans.append((_u64(tb, L.tstate_thread_id)[0] + (self._tid_off or 0), 4))
        got = mem.read_many(spans)
        if got[0] is None or _u64(got[0])[0] != cur:
            raise Torn("torn stack")
        for k, (_addr, code, instr, _keep, prev) in enumerate(raw):
            fb = got[1 + k]
            if (fb is None or _u64(fb, L.frame_code)[0] != code
                    or _u64(fb, L.frame_previous)[0] != prev
                    or k and self._instr(fb) != instr):
                raise Torn("torn stack")
        infos = {}
        base = 1 + len(raw)
        for k, c in enumerate(codes):
            hdr = got[base + k]
            if hdr is None:
                raise Torn("code object unreadable")
            infos[c] = self._code(c, hdr)
        frames = []
        for _addr, c, instr, keep, _prev in raw:
            owner = keep - 1
            if not keep:
                continue
            info = infos[c]
            if L.frame_model == "frameobject":
                idx = instr  # f_lasti in code units, -1 before the first instruction
                if idx < 0:
                    continue  # just pushed, not started: incomplete, like 3.11+'s prologue
                if idx >= info.n_units:
                    raise Torn("instruction out of range")
            else:
                idx = (instr - c - L.code_adaptive) // 2
                if owner != L.owner_generator and idx < info.firsttraceable:
                    continue  # incomplete frame, still in its prologue
                if not 0 <= idx < info.n_units:
                    raise Torn("instruction out of range")
            frames.append(Frame(info.function, info.file, info.line(idx)))
        frames.reverse()
        if L.tstate_native_tid is not None:
            tid = _u64(tb, L.tstate_native_tid)[0]
        elif self._tid_off is not None and got[-1] is not None:
            tid = _i32(got[-1])[0]
        else:
            tid = self._tid_fallback(tb)
        return ThreadStack(tid, tstate, gil, tuple(frames), None, ts)

    def _instr(self, fb: bytes) -> int:
        if self.L.frame_model == "frameobject":
            return _i32(fb, self.L.frame_instr)[0]
        return _u64(fb, self.L.frame_instr)[0]

    def _raw_frames(self, cur: int, tb: bytes) -> list[tuple[int, int, int, int, int]]:
        """[(frame address, code address, instruction, owner + 1 or 0 for a shim to
        skip, previous)] innermost first."""
        L, mem = self.L, self.mem
        lo = hi = 0
        chunk = b""
        if L.tstate_datastack_chunk is not None and cur:
            lo = _u64(tb, L.tstate_datastack_chunk)[0]
            hi = _u64(tb, L.tstate_datastack_top)[0]
            if lo and lo < cur < hi and hi - lo <= MAX_CHUNK_COPY:
                chunk = mem.read(lo, hi - lo)
            else:
                lo = hi = 0
        size = self._frame_read
        out = []
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
            code = _u64(fb, L.frame_code)[0]
            prev = _u64(fb, L.frame_previous)[0]
            if L.frame_model == "frameobject":
                keep = 1
            else:
                owner = fb[L.frame_owner]
                keep = owner + 1 if L.owner_skip_min is None or owner < L.owner_skip_min else 0
            out.append((addr, code, self._instr(fb), keep, prev))
            addr = prev
        return out

    # ---- code objects and strings ----------------------------------------------------

    def _code(self, addr: int, hdr: bytes) -> CodeInfo:
        L = self.L
        if _u64(hdr, L.ob_type)[0] != self.rt.code_type:
            raise Torn("not a code object")
        sig = hdr[L.ob_type :]
        info = self.codes.get(addr)
        if info is not None and info.sig == sig:
            return info
        mem = self.mem
        name_ptr = _u64(hdr, L.code_qualname if L.code_qualname is not None else L.code_name)[0]
        function = self.read_str(name_ptr)
        filename = self.read_str(_u64(hdr, L.code_filename)[0])
        first = _i32(hdr, L.code_firstlineno)[0]
        table_ptr = _u64(hdr, L.code_linetable)[0]
        size = _i64(mem.read(table_ptr + L.ob_size, 8))[0]
        if not 0 <= size < 1 << 24:
            raise Torn("bad line table")
        table = mem.read(table_ptr + L.bytes_data, size)
        try:
            if L.linetable_format == "lnotab310":
                starts, ends, lines, n_units = parse_lnotab310(table, first)
            else:
                starts, ends, lines, n_units = parse_locations311(table, first)
        except (ValueError, IndexError) as e:
            raise Torn("bad line table") from e
        if L.frame_model == "interpframe":
            n_units = _i64(hdr, L.ob_size)[0]  # code units in co_code_adaptive
        ft = _i32(hdr, L.code_firsttraceable)[0] if L.code_firsttraceable is not None else 0
        info = CodeInfo(sig, function, filename, first, starts, ends, lines, n_units, ft)
        if len(self.codes) > 100_000:
            self.codes.clear()
        self.codes[addr] = info
        return info

    def read_str(self, addr: int) -> str:
        """A compact str object's text (kind and ascii bits honoured)."""
        L = self.L
        hdr = self.mem.read(addr, L.str_compact_data)
        length = _i64(hdr, 16)[0]
        state = _u32(hdr, 32)[0]
        kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not compact or kind not in (1, 2, 4) or not 0 <= length < 1 << 20:
            raise Torn("bad string")
        data = self.mem.read(addr + (L.str_ascii_data if ascii_ else L.str_compact_data), length * kind)
        enc = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        try:
            return data.decode(enc)
        except UnicodeDecodeError as e:
            raise Torn("bad string") from e

    # ---- 3.10 thread ids -----------------------------------------------------------

    def _calibrate_tid(self, threads: list[tuple[int, bytes]]) -> None:
        """3.10 has only pthread_t; the kernel TID sits inside glibc's struct pthread
        (offset 720 on glibc 2.36). Find the offset where the main thread's struct holds
        our pid and every other thread's holds one of our TIDs."""
        try:
            tids = {int(t) for t in os.listdir(f"/proc/{self.pid}/task")}
            blobs = [self.mem.read(_u64(tb, self.L.tstate_thread_id)[0], 2048) for _, tb in threads]
        except (OSError, ReadError):
            return
        main = blobs[-1]  # the oldest thread state: the main thread
        offs = [720] + [o for o in range(0, 2048 - 4, 4) if o != 720]
        for off in offs:
            if _i32(main, off)[0] != self.pid:
                continue
            vals = [_i32(b, off)[0] for b in blobs]
            if all(v in tids for v in vals) and len(set(vals)) == len(vals):
                self._tid_off = off
                if off != 720:
                    self.tid_note = f"pthread TID offset is {off}, not glibc 2.36's 720"
                return
        self.tid_note = "could not map pthread_t to kernel TIDs; thread ids are pthread_t values"

    def _tid_fallback(self, tb: bytes) -> int:
        if self.L.tstate_native_tid is not None:
            return _u64(tb, self.L.tstate_native_tid)[0]
        if self._tid_off is not None:
            try:
                return _i32(self.mem.read(_u64(tb, self.L.tstate_thread_id)[0] + self._tid_off, 4))[0]
            except ReadError:
                return 0
        return _u64(tb, self.L.tstate_thread_id)[0]
