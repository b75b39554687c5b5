"""Events summed in the kernel (summed.h), turned back into events.

IO on pipes, sockets and other non-data fds, and short off-CPU waits, are
too many to ship one by one (a DataLoader makes tens of thousands a second)
and too low in value: the kernel adds them to per-thread counters instead.
About twice a second these counters are read in one batch syscall and what
changed since the last read becomes one summary slice per thread and class
over that interval, so they stay on the timeline and in the totals. The
counters are only diffed, never reset, so no increment is lost between a
read and a reset; a thread's counters are deleted once it has exited (the
kernel lists it in summed_gone), when they cannot change any more.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from .events import Event, Loss, Span

# Classes, as in summed.h.
CLS_DATA, CLS_OTHER, CLS_OFFCPU = 1, 2, 3
SUM_BLOCKED, SUM_PREEMPTED = 100, 101

# Categories of the summary slices: a child track each under the thread.
IPC = "ipc"                 # IO on non-data fds
IO_SUMMED = "io.summed"     # short data-file transfers (higher levels only)
OFFCPU_SUMMED = "sched.summed"  # short off-CPU waits
CATEGORY_OF = {CLS_OTHER: IPC, CLS_DATA: IO_SUMMED, CLS_OFFCPU: OFFCPU_SUMMED}
TITLES = {IPC: "IPC (summed)", IO_SUMMED: "IO (summed)", OFFCPU_SUMMED: "Off-CPU (summed)"}
# Which probe's totals each class counts towards (summary "aggregated").
SOURCE_OF = {CLS_OTHER: "io", CLS_DATA: "io", CLS_OFFCPU: "sched"}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


class SummedReader:
    """Diffs the kernel's sums and emits one slice per (thread, class) per interval."""

    def __init__(self, kind_names: dict[int, str], user_pid=lambda k: k):
        self.kind_names = {**kind_names, SUM_BLOCKED: "blocked", SUM_PREEMPTED: "preempted"}
        self.user_pid = user_pid
        self.last: dict[tuple[int, int, int, int], tuple[int, int, int, int]] = {}
        self.since = time.monotonic_ns()
        self.totals: dict[str, int] = defaultdict(int)   # source -> events summed
        self.oneby_wait_ns = 0  # the threshold in force, for the slice's name
        self.untranslated = 0     # summed events of processes whose PID could not be translated

    def read(self, bpf, out: list[Event]) -> None:
        gone = [getattr(k, "value", k) for k, _ in _batch(bpf["summed_gone"])]
        now = time.monotonic_ns()
        per: dict[tuple[int, int, int], dict[int, list[int]]] = {}
        untranslated = self.untranslated
        final = []
        gone_set = set(gone)
        for k, v in _batch(bpf["summed"]):
            key = (k.pid, k.tid, k.kind, k.cls)
            cur = (v.calls, v.bytes, v.ns, v.errors)
            prev = self.last.get(key, (0, 0, 0, 0))
            if k.tid in gone_set:
                final.append(k)
                self.last.pop(key, None)
            else:
                self.last[key] = cur
            if cur[0] != prev[0]:
                per.setdefault((k.pid, k.tid, k.cls), {})[k.kind] = [c - p for c, p in zip(cur, prev, strict=True)]
        if final:
            _delete(bpf["summed"], final)
        if gone:
            _delete(bpf["summed_gone"], [bpf["summed_gone"].Key(t) for t in gone])
        for (kpid, ktid, cls), kinds in per.items():
            pid = self.user_pid(kpid)
            if pid is None:  # outside the user's PID namespace: counted, not shown
                self.untranslated += sum(d[0] for d in kinds.values())
                continue
            tid = self.user_pid(ktid) or pid
            ev = self._slice(cls, pid, tid, kinds, now)
            if ev is not None:
                out.append(ev)
        if self.untranslated > untranslated:
            out.append(Loss("summed", now, self.untranslated - untranslated,
                            "process exited before its PID could be translated"))
        self.since = now

    def _slice(self, cls: int, pid: int, tid: int, kinds: dict[int, list[int]], now: int) -> Span | None:
        calls = sum(d[0] for d in kinds.values())
        nbytes = sum(d[1] for d in kinds.values())
        ns = sum(d[2] for d in kinds.values())
        errors = sum(d[3] for d in kinds.values())
        self.totals[SOURCE_OF.get(cls, "io")] += calls
        args: dict[str, Any] = {"calls": calls, "summed_in_kernel": True}
        for kind, d in sorted(kinds.items()):
            name = self.kind_names.get(kind, f"kind{kind}")
            args[name] = d[0]
            if d[1] and cls != CLS_OFFCPU:
                args[f"{name}_bytes"] = d[1]   # per call kind: reads and writes apart
        if cls == CLS_OFFCPU:
            pre, blk = kinds.get(SUM_PREEMPTED, [0] * 4), kinds.get(SUM_BLOCKED, [0] * 4)
            args.update(blocked_ms=round(blk[2] / 1e6, 3), preempted_ms=round(pre[2] / 1e6, 3),
                        preempted_ns=pre[2], blocked_ns=blk[2])
            below = f" < {self.oneby_wait_ns / 1e6:g} ms" if self.oneby_wait_ns else ""
            name = f"off-CPU waits{below}: {calls}, {ns / 1e6:.1f} ms"
        else:
            args.update(bytes=nbytes, syscall_ms=round(ns / 1e6, 3), syscall_ns=ns, errors=errors)
            what = "IPC" if cls == CLS_OTHER else "short file IO"
            name = f"{what}: {calls} calls, {_mb(nbytes)}, {ns / 1e6:.1f} ms in syscalls"
        cat = CATEGORY_OF.get(cls)
        if cat is None:
            return None
        return Span(cat, name, pid, tid, self.since, now, args)


def _batch(table):
    """(key, value) of every entry, in batch syscalls (falls back to one by one)."""
    try:
        return list(table.items_lookup_batch())
    except Exception:
        return list(table.items())


def _delete(table, keys) -> None:
    for k in keys:
        try:
            del table[k]
        except KeyError:
            pass
