"""Threads' frame chains, read in batched syscalls and re-checked before they count.

The target keeps running while we read: a thread's data-stack chunk is copied in
one read (3.11+), code objects are type-checked and re-read in one batched readv,
instruction bounds and cycles are checked, and the current-frame pointer is read
again last; any doubt makes the stack torn, never a wrong stack. The Walker in
pystack decides which threads to walk; this is how one is walked.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from .events import Frame
from .procmem import ProcessGone, ProcessMemory, ReadError
from .pycode import CodeCache, Torn
from .pylayouts import Layout
from .pytids import TidMap

MAX_DEPTH = 4096
MAX_CHUNK_COPY = 1 << 20
_u64 = struct.Struct("<Q").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from


def keep_of(L: Layout, owner: int) -> int:
    """owner + 1 for a frame to report, 0 for a shim (C stack, interpreter entry)."""
    if L.frame_model == "frameobject":
        return 1
    return owner + 1 if L.owner_skip_min is None or owner < L.owner_skip_min else 0


def build(L: Layout, chain: list[tuple[int, int, int]], infos: dict) -> list[Frame]:
    """Frames, outermost first, for chain = [(code, instruction, keep)] innermost
    first, with infos holding every kept frame's CodeInfo; shared with the kernel's
    walk (pyperf). Raises Torn on an instruction outside its code (a stack read
    mid-change). Frames still in their prologue are left out."""
    frames = []
    interp = L.frame_model != "frameobject"
    not_started = 1 if L.instr_is_next else 0  # (see Layout.instr_is_next)
    adaptive = L.code_adaptive or 0  # set for every interpframe layout
    for k, (c, instr, keep) in enumerate(chain):
        if not keep:
            continue
        info = infos[c]
        if not interp:
            idx = instr  # f_lasti in code units, -1 before the first instruction
            if idx < 0:
                continue  # just pushed, not started: incomplete, like 3.11+'s prologue
            if idx >= info.n_units:
                raise Torn("instruction out of range")
        else:
            idx = (instr - c - adaptive) // 2
            if keep - 1 != L.owner_generator and idx < info.firsttraceable + (k == 0) * not_started:
                continue  # incomplete frame, still in its prologue
            if not 0 <= idx < info.n_units:
                raise Torn("instruction out of range")
        frames.append(info.frame(idx))
    frames.reverse()
    return frames


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


class FrameReader:
    """The batched frame walk of pystack.Walker (its base class; it sets these)."""

    L: Layout
    mem: ProcessMemory
    tids: TidMap
    code_cache: CodeCache
    _frame_read: int
    _code_read: int

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
        frames = build(L, [(r[1], r[2], r[3]) for r in raw], infos)
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
