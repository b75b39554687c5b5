"""Process lifecycle probe: follows forks (DataLoader workers, DDP ranks),
threads, exec, exit and renames of the tracked tree."""

from __future__ import annotations

import os

from . import fsnames, procfs
from .bccload import tracepoint_exists
from .events import PROC, Event, Instant, ThreadName
from .kernel import Probe
from .ringbuf import event_class, struct_of

# Kinds, as defined in proc.h.
FORK, THREAD, EXEC, EXIT, RENAME = 1, 2, 3, 4, 5


def _s(raw: bytes) -> str:
    return fsnames.text(raw.split(b"\0", 1)[0])


class ProcProbe(Probe):
    name = "proc"
    bpf_file = "proc.bpf.c"
    ring = "proc_events"
    drop_slot = 2  # DROP_PROC
    order_offset = 0  # struct proc_event starts with its ts
    raw_bytes = True

    def __init__(self):
        self.head = None  # struct proc_event up to its filename, which only exec carries
        self.listeners: list[Probe] = []  # told of forks and exits before their events

    def cflags(self) -> list[str]:
        return ["-DHAVE_TASK_RENAME"] if tracepoint_exists("task", "task_rename") else []

    def attach(self, bpf) -> None:
        self.head = struct_of(event_class(bpf[self.ring]), upto="filename")

    def initial_events(self, pids: list[int], out: list[Event]) -> None:
        import time

        now = time.monotonic_ns()
        tracked = set(pids)
        for pid in pids:
            out.append(ThreadName(pid, pid, now, procfs.comm(pid), is_process=True))
            for tid in procfs.threads(pid):
                out.append(ThreadName(pid, tid, now, procfs.comm(pid, tid)))
            # Forked before the attach: no fork instant says whose child it is, and
            # the analysis needs that to tell a rank's DataLoader workers from another's.
            st = procfs.stat(pid)
            if st is not None and st.ppid in tracked:
                out.append(Instant(PROC, "parent", pid, 0, now, {"ppid": st.ppid}))

    def decode(self, raw: bytes, size: int, out: list[Event]) -> None:
        ts, kind, pid, tid, ppid, comm = self.head.unpack_from(raw)
        comm = _s(comm)
        if kind == FORK:
            for p in self.listeners:
                p.on_fork(pid, ppid)
            out.append(Instant(PROC, "fork", ppid, 0, ts, {"child": pid, "comm": comm}))
            out.append(ThreadName(pid, pid, ts, comm, is_process=True))
        elif kind == THREAD:
            out.append(ThreadName(pid, tid, ts, comm))
        elif kind == EXEC:
            filename = _s(raw[self.head.size:])
            out.append(Instant(PROC, "exec", pid, tid, ts, {"filename": filename}))
            out.append(ThreadName(pid, pid, ts, comm or os.path.basename(filename), is_process=True))
        elif kind == EXIT:
            if tid == pid:
                for p in self.listeners:
                    p.on_exit(pid)
            out.append(Instant(PROC, "exit", pid, tid, ts, {"process": tid == pid}))
        elif kind == RENAME:
            out.append(ThreadName(pid, tid, ts, comm, is_process=(tid == pid)))
