"""The event model every source produces and the collector consumes.

All times are CLOCK_MONOTONIC nanoseconds: the clock of bpf_ktime_get_ns() and
time.monotonic_ns(), so events from eBPF, the sampler and NVML merge without
conversion. PIDs are kernel PIDs (tgid) and TIDs are kernel TIDs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Categories: one per-thread child track each on the timeline.
IO = "io"
SCHED = "sched"
CUDA = "cuda"
NCCL = "nccl"
PYTHON = "python"
GPU = "gpu"
PROC = "proc"
VERDICT = "verdict"


@dataclass(slots=True)
class Span:
    """A timed interval on one thread (a syscall, an off-CPU wait, a CUDA call)."""

    cat: str
    name: str
    pid: int
    tid: int
    start: int
    end: int
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def ts(self) -> int:
        return self.start


# Span.ts reads the start slot itself, as fast as Instant.ts: the merge sorts
# every event by .ts (a property costs a Python call per event per sort).
setattr(Span, "ts", Span.__dict__["start"])  # noqa: B010 (an assignment would not type-check)


@dataclass(slots=True)
class Instant:
    """A point in time: fork, exec, exit, a rename, a verdict flag.

    tid == 0 puts it on the process track; pid == 0 on the global track.
    """

    cat: str
    name: str
    pid: int
    tid: int
    ts: int
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CounterSample:
    """One value of a counter track; pid == 0 for machine-wide counters (GPUs)."""

    track: str
    unit: str
    ts: int
    value: float
    pid: int = 0


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: int


@dataclass(slots=True)
class StackSample:
    """One sampled Python stack of one thread; frames innermost last."""

    pid: int
    tid: int
    ts: int
    state: str  # "running" | "idle"
    gil: bool
    frames: tuple[Frame, ...]


@dataclass(slots=True)
class ThreadName:
    """Names a thread (or, when tid == pid, its process) from now on."""

    pid: int
    tid: int
    ts: int
    name: str
    is_process: bool = False


@dataclass(slots=True)
class Loss:
    """Events a source could not deliver (buffer full, read failed). Never silent."""

    source: str
    ts: int
    count: int
    reason: str = "buffer full"


Event = Span | Instant | CounterSample | StackSample | ThreadName | Loss
