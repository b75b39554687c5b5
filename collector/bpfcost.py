"""Run time of the BPF programs this process holds, from the kernel's own
statistics: they run in the traced threads' context, so a profiler that only
counted its own process's CPU would leave most of its cost out.

The kernel keeps per-program run_time_ns only while statistics are enabled.
BPF_ENABLE_STATS turns them on for as long as we hold the fd it returns (so
nothing stays switched on after gpuscope exits, even if it is killed); each
program's total is then in /proc/self/fdinfo/FD of its fd. The cost of the
statistics themselves (two clock reads per program run) is measured in
bench/bench_overhead.py.
"""

from __future__ import annotations

import ctypes
import os
import time

_SYS_BPF = 321  # x86-64
_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0
_libc = ctypes.CDLL(None, use_errno=True)


def enable_stats() -> int | None:
    """An fd that keeps BPF run-time statistics on while open, or None (old kernel,
    no privilege, another architecture)."""
    if os.uname().machine != "x86_64":
        return None
    attr = ctypes.create_string_buffer(16)
    ctypes.c_uint32.from_buffer(attr).value = _BPF_STATS_RUN_TIME
    fd = _libc.syscall(_SYS_BPF, _BPF_ENABLE_STATS, attr, ctypes.c_uint(16))
    return fd if fd >= 0 else None


def _prog_fds() -> list[int]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:bpf-prog":
                out.append(int(name))
        except OSError:
            continue
    return out


def _run_time_ns(fd: int) -> int:
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"run_time_ns:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class BpfRunTime:
    """Total run time, seconds, of this process's BPF programs since it enabled
    the statistics. available is False when the kernel would not enable them."""

    def __init__(self, refresh_s: float = 5.0):
        self._stats_fd = enable_stats()
        self.available = self._stats_fd is not None
        self._fds: list[int] = []
        self._fds_at = -1e9
        self._refresh_s = refresh_s

    def seconds(self) -> float:
        if not self.available:
            return 0.0
        now = time.monotonic()
        if now - self._fds_at > self._refresh_s:  # programs are loaded and unloaded rarely
            self._fds, self._fds_at = _prog_fds(), now
        return sum(_run_time_ns(fd) for fd in self._fds) / 1e9

    def close(self) -> None:
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None
