"""Run time of the BPF programs this process holds, from the kernel's own
statistics: they run in the traced threads' context, so a profiler that only
counted its own process's CPU would leave most of its cost out.

The kernel keeps per-program run_time_ns only while statistics are enabled.
BPF_ENABLE_STATS turns them on for as long as we hold the fd it returns (so
nothing stays switched on after gpuscope exits, even if it is killed); each
program's total is then in /proc/self/fdinfo/FD of its fd. The statistics
themselves cost two clock reads per program run (measured in
bench/bench_overhead.py), so they are kept on only part of the time.
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
    """Run time, seconds, of this process's BPF programs since it started measuring.

    Statistics cost about 40-50 ns per program run (bench_overhead), on every
    traced syscall of the machine, so by default they are on for on_s out of every
    period_s and the total is extrapolated from the rate measured in those windows
    (duty=None: always on, the exact total). available is False when the kernel
    would not enable them.
    """

    def __init__(self, refresh_s: float = 5.0, duty: tuple[float, float] | None = (1.0, 10.0)):
        self._duty = duty
        self._fds: list[int] = []
        self._fds_at = -1e9
        self._refresh_s = refresh_s
        self._stats_fd = enable_stats()
        self.available = self._stats_fd is not None
        now = time.monotonic()
        self._start = self._since = now
        self._base = self._total_ns() if self.available else 0
        self._measured_ns = 0  # run time inside the on-windows
        self._measured_s = 0.0  # their length

    def _total_ns(self) -> int:
        now = time.monotonic()
        if now - self._fds_at > self._refresh_s:  # programs are loaded and unloaded rarely
            self._fds, self._fds_at = _prog_fds(), now
        return sum(_run_time_ns(fd) for fd in self._fds)

    def seconds(self) -> float:
        if not self.available:
            return 0.0
        if self._duty is None:
            return (self._total_ns() - self._base) / 1e9
        on_s, period_s = self._duty
        now = time.monotonic()
        if self._stats_fd is not None and now - self._since >= on_s:
            self._measured_ns += self._total_ns() - self._base
            self._measured_s += now - self._since
            os.close(self._stats_fd)
            self._stats_fd, self._since = None, now
        elif self._stats_fd is None and now - self._since >= period_s - on_s:
            self._stats_fd = enable_stats()
            self._since = now
            self._base = self._total_ns()
        if not self._measured_s:
            return 0.0
        return self._measured_ns / 1e9 / self._measured_s * (now - self._start)

    def close(self) -> None:
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None
