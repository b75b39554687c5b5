"""Per-thread scheduler facts the sampler needs, one pread each on kept-open /proc
files: the state letter (running or not) and whether the thread has run at all
since the last look (the walker reuses a stack only if it has not)."""

from __future__ import annotations

import os

from . import procfs


class ThreadStates:
    """Kernel scheduler state per thread via pread on kept-open /proc files (one
    syscall each): the state letter from stat, and from schedstat a run key (run
    count and CPU time) that changes whenever the thread has been on a CPU."""

    def __init__(self):
        self._fds: dict[tuple[int, int], tuple[int, int]] = {}

    def _open(self, pid: int, tid: int) -> tuple[int, int]:
        fds = self._fds.get((pid, tid))
        if fds is None:
            base = f"/proc/{pid}/task/{tid}/"
            stat = os.open(base + "stat", os.O_RDONLY)
            try:
                sched = os.open(base + "schedstat", os.O_RDONLY)
            except OSError:
                sched = -1
            fds = self._fds[(pid, tid)] = (stat, sched)
        return fds

    def state(self, pid: int, tid: int) -> str | None:
        """The stat state letter ('R', 'S', 'D', ...), or None if tid is not a live
        thread of pid (exited, or a stale thread state left behind by fork)."""
        r = self.probe(pid, tid)
        return r[0] if r is not None else None

    def probe(self, pid: int, tid: int) -> tuple[str, bytes | None] | None:
        """(state letter, run key), or None if tid is not a live thread of pid. The key
        is None when the kernel keeps no run counts (schedstat reads "0 0 0")."""
        try:
            stat, sched = self._open(pid, tid)
            data = os.pread(stat, 512, 0)
            key = os.pread(sched, 64, 0) if sched >= 0 else None
        except OSError:
            self.forget(pid, tid)
            return None
        state = procfs.stat_state(data)
        if state is None:
            return None
        if key is not None and key.rstrip().endswith(b" 0"):
            key = None  # no run count: cannot tell whether it ran
        return state, key

    def forget(self, pid: int, tid: int | None = None) -> None:
        for key in [k for k in self._fds if k[0] == pid and (tid is None or k[1] == tid)]:
            self._close(self._fds.pop(key))

    def keep_only(self, live: set[tuple[int, int]]) -> None:
        for key in [k for k in self._fds if k not in live]:
            self._close(self._fds.pop(key))

    @staticmethod
    def _close(fds: tuple[int, int]) -> None:
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def close(self) -> None:
        self.keep_only(set())
