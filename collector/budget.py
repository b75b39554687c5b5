"""The overhead budget: gpuscope measures what it costs the machine and, when
that is more than it may take, lowers its own detail (sampling rates, event
detail), then restores full detail one level at a time when it can.

Cost = the collector process's user+sys CPU (all threads) plus, when
the kernel keeps BPF run-time statistics, the run time of the BPF programs this
process holds (they run in the target's context, so they are ours too). It is
taken as a share of the whole machine (all cores) over a sliding window, beside
the target tree's own CPU for scale.

Knobs are the sources' `levels() -> int` / `set_level(n)` (0 = full detail).
Budget levels step through them round-robin, in the order given, so each step
costs a little detail from one source rather than a lot from one (or each knob
all the way down in turn). Far over budget, one decision may drop several
levels (ceil(log2(cost / limit)), at most max_jump), so a capture is within
budget seconds after it starts; restoring is one level at a time.
The caller (the session's periodic tick) calls tick(now) about once a second and
puts the events it returns into the trace.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpuscope.probes import procfs
from gpuscope.probes.events import CounterSample, Event, Instant

from .bpfcost import BpfRunTime

DEFAULT_LIMIT = 0.02  # of the machine: 2% (4% of one core on 2 cores)
_HZ = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of every thread of pid, in seconds; None if it is gone."""
    st = procfs.stat(pid)
    return (st.utime + st.stime) / _HZ if st is not None else None


def own_cpu_s() -> float:
    """This process's user + sys CPU, all threads, ns resolution (os.times() has 10 ms)."""
    return time.process_time()


@dataclass
class Change:
    ts: int  # CLOCK_MONOTONIC ns
    level: int
    reason: str  # "over budget" | "under budget"
    own_pct: float  # % of the machine when it was decided
    detail: str


class OverheadBudget:
    """See the module docstring. Not thread-safe: one caller ticks it."""

    def __init__(self, limit_fraction: float, knobs: Sequence, own_pid: int | None = None,
                 target_pids_fn: Callable[[], Sequence[int]] = list, *, window_s: float = 3.0,
                 settle_s: float = 3.0, restore_after_s: float = 10.0, headroom: float = 0.5,
                 ncpu: int | None = None, bpf: BpfRunTime | None = None,
                 round_robin: bool = True, max_jump: int = 1):
        if not 0 <= limit_fraction <= 1:
            raise ValueError(f"overhead limit must be a fraction of the machine in [0, 1], "
                             f"not {limit_fraction}")
        self.limit = limit_fraction
        self.knobs = [k for k in knobs if k is not None and k.levels() > 1]
        self.own_pid = own_pid or os.getpid()
        self.target_pids_fn = target_pids_fn
        self.window_ns = int(window_s * 1e9)
        self.settle_ns = int(settle_s * 1e9)
        self.restore_base_ns = self.restore_ns = int(restore_after_s * 1e9)
        self.headroom = headroom
        self.ncpu = ncpu or len(os.sched_getaffinity(0)) or 1
        self.bpf = bpf
        self.round_robin = round_robin   # False: each knob all the way down before the next
        # Levels one decision may drop when far over budget: ceil(log2(cost / limit)),
        # at most this many (restoring is always one level at a time).
        self.max_jump = max(1, max_jump)
        self.plan = self._plan()  # level -> per-knob levels
        self.level = 0
        self.changes: list[Change] = []
        self._samples: deque = deque()  # (ts, own cpu s, bpf s, target cpu s)
        self._prev_target: dict[int, float] = {}
        self._target_total = 0.0
        self._last_change = 0
        self._under_since: int | None = None
        self._own_pct = self._bpf_pct = self._target_pct = 0.0
        self._peak_pct = 0.0
        self._first = self._last = None  # (ts, own, bpf, target) at the first and last tick

    @property
    def max_level(self) -> int:
        return len(self.plan) - 1

    def _plan(self) -> list[tuple[int, ...]]:
        cur = [0] * len(self.knobs)
        out = [tuple(cur)]
        if not self.round_robin:
            for i, k in enumerate(self.knobs):
                for n in range(1, k.levels()):
                    cur[i] = n
                    out.append(tuple(cur))
            return out
        while True:
            moved = False
            for i, k in enumerate(self.knobs):
                if cur[i] < k.levels() - 1:
                    cur[i] += 1
                    out.append(tuple(cur))
                    moved = True
            if not moved:
                return out

    # -- measuring -------------------------------------------------------------------
    def _target_cpu(self) -> float:
        """CPU the target tree used since the first tick. A process first seen later
        was born since (counted from 0); one that exits keeps its last reading."""
        first = not self._samples
        for pid in self.target_pids_fn():
            v = process_cpu_s(pid) if pid != self.own_pid else None
            if v is None:
                continue
            prev = self._prev_target.get(pid)
            self._target_total += max(0.0, v - (prev if prev is not None else v if first else 0.0))
            self._prev_target[pid] = v
        return self._target_total

    def _measure(self, ts: int) -> None:
        own = own_cpu_s() if self.own_pid == os.getpid() else (process_cpu_s(self.own_pid) or 0.0)
        # One-off set-up (a source compiling its BPF program after the start) is not
        # what the budget governs: it is spent once, whatever the level.
        own -= sum(k.setup_cpu_s() for k in self.knobs if hasattr(k, "setup_cpu_s"))
        bpf_s = self.bpf.seconds() if self.bpf is not None else 0.0
        self._samples.append((ts, own, bpf_s, self._target_cpu()))
        if self._first is None:
            self._first = self._samples[-1]
        self._last = self._samples[-1]
        while len(self._samples) > 2 and self._samples[1][0] <= ts - self.window_ns:
            self._samples.popleft()
        t0, own0, bpf0, tgt0 = self._samples[0]
        wall = (ts - t0) / 1e9
        if wall <= 0:
            return
        machine = wall * self.ncpu
        self._bpf_pct = 100 * (bpf_s - bpf0) / machine
        self._own_pct = 100 * (own - own0) / machine + self._bpf_pct
        self._target_pct = 100 * (self._samples[-1][3] - tgt0) / machine
        self._peak_pct = max(self._peak_pct, self._own_pct)

    # -- deciding --------------------------------------------------------------------
    def tick(self, now: int | None = None) -> list[Event]:
        """Measure, maybe change the level; returns counter samples (and an instant
        when the level changed) for the trace."""
        ts = now if now is not None else time.monotonic_ns()
        self._measure(ts)
        events: list[Event] = [
            CounterSample("gpuscope CPU %", "% of machine", ts, round(self._own_pct, 3)),
            CounterSample("target CPU %", "% of machine", ts, round(self._target_pct, 3)),
        ]
        full = len(self._samples) > 1 and self._samples[-1][0] - self._samples[0][0] >= self.window_ns * 0.66
        settled = ts - self._last_change >= self.settle_ns
        limit_pct = 100 * self.limit
        new = self.level
        reason = ""
        if full and settled and self._own_pct > limit_pct and self.level < self.max_level:
            over = self._own_pct / limit_pct if limit_pct > 0 else float("inf")
            jump = min(self.max_jump, max(1, math.ceil(math.log2(over))) if over < 2 ** 16 else self.max_jump)
            new, reason = min(self.max_level, self.level + jump), "over budget"
            if self.changes and self.changes[-1].reason == "under budget" and \
                    ts - self.changes[-1].ts < 3 * self.restore_ns:
                self.restore_ns = min(self.restore_ns * 2, int(300e9))  # it did not fit: wait longer
            self._under_since = None
        elif self._own_pct <= limit_pct * self.headroom and self.level > 0:
            if self._under_since is None:
                self._under_since = ts
            elif full and settled and ts - self._under_since >= self.restore_ns:
                new, reason = self.level - 1, "under budget"
                self._under_since = None
        else:
            self._under_since = None
            if ts - self._last_change > 10 * self.restore_ns:
                self.restore_ns = self.restore_base_ns  # stable a long time: forget the backoff
        if new != self.level:
            self._last_change = ts
            # A jump passes each level on the way, each said (one decision, one ts).
            step = 1 if new > self.level else -1
            for lvl in range(self.level + step, new + step, step):
                self._apply(lvl)
                detail = self.describe(lvl)
                self.changes.append(Change(ts, lvl, reason, round(self._own_pct, 3), detail))
                events.append(Instant("gpuscope", f"overhead: level {lvl} ({detail}), gpuscope "
                                      f"{self._own_pct:.1f}% of machine ({reason}, limit "
                                      f"{limit_pct:g}%)", 0, 0, ts,
                                      {"level": lvl, "reason": reason, "own_pct": round(self._own_pct, 3),
                                       "target_pct": round(self._target_pct, 3), "limit_pct": limit_pct}))
            # The window measured the old level: start it again for the new one.
            last = self._samples[-1]
            self._samples.clear()
            self._samples.append(last)
        events.append(CounterSample("detail level", "level", ts, self.level))
        return events

    def _apply(self, level: int) -> None:
        self.level = level
        for knob, n in zip(self.knobs, self.plan[level], strict=True):
            knob.set_level(n)

    def describe(self, level: int | None = None) -> str:
        """What each knob does at this level ("python sampler 25 Hz, kernel level 1")."""
        level = self.level if level is None else level
        if level == 0:
            return "full detail"
        parts = []
        for knob, n in zip(self.knobs, self.plan[level], strict=True):
            if n:
                fn = getattr(knob, "describe_level", None)
                parts.append(fn(n) if fn else f"{getattr(knob, 'name', 'source')} level {n}")
        return ", ".join(parts)

    def mean_pct(self) -> tuple[float, float]:
        """(gpuscope, target) CPU as % of the machine from the first tick to the last."""
        if self._first is None or self._last[0] <= self._first[0]:
            return 0.0, 0.0
        machine = (self._last[0] - self._first[0]) / 1e9 * self.ncpu
        own = (self._last[1] - self._first[1]) + (self._last[2] - self._first[2])
        return 100 * own / machine, 100 * (self._last[3] - self._first[3]) / machine

    def state(self) -> dict:
        """For the status line and the summary."""
        mean_own, mean_target = self.mean_pct()
        return {
            "limit_pct": 100 * self.limit,
            "level": self.level,
            "max_level": self.max_level,
            "detail": self.describe(),
            "own_cpu_pct": round(self._own_pct, 3),
            "bpf_cpu_pct": round(self._bpf_pct, 3) if self.bpf is not None else None,
            "target_cpu_pct": round(self._target_pct, 3),
            "peak_own_cpu_pct": round(self._peak_pct, 3),
            "mean_own_cpu_pct": round(mean_own, 3),
            "mean_target_cpu_pct": round(mean_target, 3),
            "cpus": self.ncpu,
            "changes": [{"ts": c.ts, "level": c.level, "reason": c.reason, "own_cpu_pct": c.own_pct,
                         "detail": c.detail} for c in self.changes],
        }

    def status(self) -> str:
        """A short piece of the status line: "overhead 1.2%/2% L0"."""
        s = f"overhead {self._own_pct:.1f}%/{100 * self.limit:g}%"
        return s + (f" L{self.level} ({self.describe()})" if self.level else "")

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.close()


class PipelineBudget:
    """Keeps a pipeline within the budget: ticked by it (`pipeline.on_tick(b, 1.0)`),
    it turns the knobs of whatever sources are attached now (a sidecar re-attaches
    to a restarted job: a new generation of sources, measured afresh) and puts the
    budget's counters and level changes into the stream."""

    # Kernel event detail goes first, all of it: the verdict's step model rests on the
    # Python samples (a lower rate sees fewer short steps), the kernel's lower levels
    # only sum what the verdict does not read one by one.
    KNOBS = ("ebpf", "python")

    def __init__(self, limit_fraction: float):
        if not 0 < limit_fraction <= 1:
            raise ValueError(f"overhead limit must be in (0, 100%], not {100 * limit_fraction:g}%")
        self.limit = limit_fraction
        self.budget: OverheadBudget | None = None
        self._generation = -1

    def __call__(self, p) -> None:
        if p.target is None:
            return
        if p.generation != self._generation:
            self.close()
            self._generation = p.generation
            knobs = [p.source(name) for name in self.KNOBS]
            self.budget = OverheadBudget(self.limit, [k for k in knobs if hasattr(k, "set_level")],
                                         target_pids_fn=lambda: sorted(p.live), bpf=BpfRunTime(),
                                         round_robin=False, window_s=2.0, settle_s=2.0,
                                         max_jump=3)
        if self.budget is not None:
            p.emit(self.budget.tick())

    def state(self) -> dict | None:
        return self.budget.state() if self.budget is not None else None

    def status(self) -> str:
        return self.budget.status() if self.budget is not None else ""

    def close(self) -> None:
        if self.budget is not None:
            self.budget.close()
