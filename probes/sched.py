"""Scheduling probe: off-CPU intervals of tracked threads, and why."""

from __future__ import annotations

import struct

from . import fsnames
from .events import SCHED, Event, Span
from .kernel import Probe

# prev_state as sched_switch reports it (TASK_REPORT bits; 0x100 = preempted).
_STATES = {0: "runnable", 1: "sleeping", 2: "disk", 4: "stopped", 8: "traced",
           0x40: "parked", 0x80: "idle", 0x100: "preempted"}


def classify(state: int) -> tuple[str, str]:
    """(name, state) of an off-CPU interval: blocked waits vs preemption."""
    label = _STATES.get(state, hex(state))
    if state in (0, 0x100):
        return "preempted", label
    return "blocked", label


class SchedProbe(Probe):
    name = "sched"
    layout: struct.Struct  # raw_bytes: set from BCC's record type before any decode
    bpf_file = "sched.bpf.c"
    ring = "sched_events"
    drop_slot = 1  # DROP_SCHED

    raw_bytes = True

    def __init__(self, min_offcpu_us: int = 50):
        self.min_offcpu_us = min_offcpu_us

    def cflags(self) -> list[str]:
        return [f"-DMIN_OFFCPU_NS={int(self.min_offcpu_us * 1000)}"]

    def decode(self, raw: bytes, size: int, out: list[Event]) -> None:
        start, end, wakeup, pid, tid, waker_pid, waker_tid, st, comm = self.layout.unpack_from(raw)
        name, state = classify(st)
        args = {"state": state}
        if wakeup:
            args["waker_pid"] = waker_pid
            args["waker_tid"] = waker_tid
            args["waker"] = fsnames.text(comm.split(b"\0", 1)[0])
            args["runq_delay_us"] = round((end - wakeup) / 1000, 1)
        out.append(Span(SCHED, name, pid, tid, start, end, args))
