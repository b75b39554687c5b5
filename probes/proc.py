"""Process lifecycle probe: follows forks (DataLoader workers, DDP ranks),
threads, exec, exit and renames of the tracked tree."""

from __future__ import annotations

import os

from . import procfs
from .events import PROC, Event, Instant, ThreadName
from .kernel import Probe, tracepoint_exists

# Kinds, as defined in proc.h.
FORK, THREAD, EXEC, EXIT, RENAME = 1, 2, 3, 4, 5


def _s(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class ProcProbe(Probe):
    name = "proc"
    bpf_file = "proc.bpf.c"
    ring = "proc_events"
    drop_slot = 2  # DROP_PROC
    order_offset = 0  # struct proc_event starts with its ts

    def __init__(self):
        self.table = None
        self.listeners: list[Probe] = []  # told of forks and exits before their events

    def cflags(self) -> list[str]:
        return ["-DHAVE_TASK_RENAME"] if tracepoint_exists("task", "task_rename") else []

    def attach(self, bpf) -> None:
        self.table = bpf[self.ring]

    def initial_events(self, pids: list[int], out: list[Event]) -> None:
        import time

        now = time.monotonic_ns()
        for pid in pids:
            out.append(ThreadName(pid, pid, now, procfs.comm(pid), is_process=True))
            for tid in procfs.threads(pid):
                out.append(ThreadName(pid, tid, now, procfs.comm(pid, tid)))

    def decode(self, raw, size: int, out: list[Event]) -> None:
        e = self.table.event(raw)
        kind, pid, tid, ts = e.kind, e.pid, e.tid, e.ts
        comm = _s(bytes(e.comm))
        if kind == FORK:
            for p in self.listeners:
                p.on_fork(pid, e.ppid)
            out.append(Instant(PROC, "fork", e.ppid, 0, ts, {"child": pid, "comm": comm}))
            out.append(ThreadName(pid, pid, ts, comm, is_process=True))
        elif kind == THREAD:
            out.append(ThreadName(pid, tid, ts, comm))
        elif kind == EXEC:
            filename = _s(bytes(e.filename))
            out.append(Instant(PROC, "exec", pid, tid, ts, {"filename": filename}))
            out.append(ThreadName(pid, pid, ts, comm or os.path.basename(filename), is_process=True))
        elif kind == EXIT:
            if tid == pid:
                for p in self.listeners:
                    p.on_exit(pid)
            out.append(Instant(PROC, "exit", pid, tid, ts, {"process": tid == pid}))
        elif kind == RENAME:
            out.append(ThreadName(pid, tid, ts, comm, is_process=(tid == pid)))
