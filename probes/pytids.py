"""Kernel TIDs of CPython 3.10 threads, which record only their pthread_t.

The kernel TID sits inside glibc's struct pthread (offset 720 on glibc 2.36); the
offset is found once per process by calibration against /proc/PID/task, and each
(tstate, pthread_t) -> TID seen in a walk is remembered, so a later tick knows a
thread's TID before walking it.
"""

from __future__ import annotations

import struct

from . import procfs
from .procmem import ProcessMemory, ReadError
from .pylayouts import Layout

_u64 = struct.Struct("<Q").unpack_from
_i32 = struct.Struct("<i").unpack_from


class TidMap:
    def __init__(self, layout: Layout, mem: ProcessMemory, pid: int):
        self.L, self.mem, self.pid = layout, mem, pid
        self.off: int | None = None  # offset of the TID in glibc's struct pthread
        self.note: str | None = None
        self._seen: dict[tuple[int, int], int] = {}  # (tstate, pthread_t) -> TID

    def known(self, tstate: int, tb: bytes) -> int | None:
        """The kernel TID without reading anything (None on 3.10 before its first walk)."""
        if self.L.tstate_native_tid is not None:
            return _u64(tb, self.L.tstate_native_tid)[0]
        return self._seen.get((tstate, _u64(tb, self.L.tstate_thread_id)[0]))

    def remember(self, tstate: int, tb: bytes, tid: int) -> None:
        if len(self._seen) > 65536:
            self._seen.clear()
        self._seen[(tstate, _u64(tb, self.L.tstate_thread_id)[0])] = tid

    def calibrate(self, threads: list[tuple[int, bytes]]) -> None:
        """Find the offset where the main thread's struct holds our pid and every
        other thread's holds one of our TIDs."""
        try:
            tids = set(procfs.threads(self.pid))
            if not tids:
                return
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
                self.off = off
                if off != 720:
                    self.note = f"pthread TID offset is {off}, not glibc 2.36's 720"
                return
        self.note = "could not map pthread_t to kernel TIDs; thread ids are pthread_t values"

    def fallback(self, tb: bytes) -> int:
        """The TID read on its own (a lost stack still names its thread)."""
        if self.L.tstate_native_tid is not None:
            return _u64(tb, self.L.tstate_native_tid)[0]
        if self.off is not None:
            try:
                return _i32(self.mem.read(_u64(tb, self.L.tstate_thread_id)[0] + self.off, 4))[0]
            except ReadError:
                return 0
        return _u64(tb, self.L.tstate_thread_id)[0]
