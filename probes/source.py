"""What the collector expects of every event source (eBPF probes, sampler, NVML)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from .events import Event


class SourceError(Exception):
    """A source could not start; the message says what to do about it."""


@dataclass
class SourceStats(Mapping):
    """A source's counters. `events` and `lost` are per stream (a probe: "io",
    "cuda"; or the source itself: "python", "nvml"), which is how the status
    line, the summary and the metrics show them. `counters` holds whatever
    else the source counts (the sampler's ticks, late ticks, threads).

    Read as a mapping it is flat: "events" and "lost" are the totals, then the
    counters, for quick looks in benches and tests."""

    events: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    # Per stream: events counted in the kernel's per-thread sums instead of
    # shipped one by one (they reach the trace as summary slices).
    aggregated: dict[str, int] = field(default_factory=dict)

    @property
    def total_events(self) -> int:
        return sum(self.events.values())

    @property
    def total_lost(self) -> int:
        return sum(self.lost.values())

    def __add__(self, other: SourceStats) -> SourceStats:
        return SourceStats(_merge(self.events, other.events, 1), _merge(self.lost, other.lost, 1),
                           _merge(self.counters, other.counters, 1),
                           _merge(self.aggregated, other.aggregated, 1))

    def __sub__(self, other: SourceStats) -> SourceStats:
        """What was counted since `other` was taken (of the same, growing, stats)."""
        return SourceStats(_merge(self.events, other.events, -1),
                           _merge(self.lost, other.lost, -1),
                           _merge(self.counters, other.counters, -1),
                           _merge(self.aggregated, other.aggregated, -1))

    # -- the flat view -------------------------------------------------------
    def __getitem__(self, key: str):
        if key == "events":
            return self.total_events
        if key == "lost":
            return self.total_lost
        return self.counters[key]

    def __iter__(self) -> Iterator[str]:
        yield "events"
        yield "lost"
        yield from (k for k in self.counters if k not in ("events", "lost"))

    def __len__(self) -> int:
        return 2 + sum(1 for k in self.counters if k not in ("events", "lost"))


def _merge(a: dict, b: dict, sign: int) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + sign * v
    return out


class Source:
    """An event source. The collector runs each one on its own thread:
    start(), then poll() in a loop, then drain() and stop(). poll() returns a
    batch and must return within about timeout_s so the collector can stop it.
    """

    name = "source"

    def start(self, pids: Iterable[int]) -> None:
        """Begin watching these processes (kernel PIDs) and their descendants."""

    def poll(self, timeout_s: float) -> list[Event]:
        raise NotImplementedError

    def drain(self) -> list[Event]:
        """Whatever is still buffered once polling stopped (before stop())."""
        return []

    def add_process(self, pid: int) -> None:
        """A new process joined the target tree (the lifecycle probe saw a fork)."""

    def remove_process(self, pid: int) -> None:
        """A process of the target tree exited."""

    def stop(self) -> None:
        """Detach everything. Must be safe to call twice and after a failed start."""

    def stats(self) -> SourceStats:
        """Events delivered and lost, per stream, for the status line, summary and metrics."""
        return SourceStats()

    def notices(self) -> list[str]:
        """Human-readable remarks for the summary (a probe skipped, a version unsupported)."""
        return []
