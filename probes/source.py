"""What the collector expects of every event source (eBPF probes, sampler, NVML)."""

from __future__ import annotations

from collections.abc import Iterable

from .events import Event


class SourceError(Exception):
    """A source could not start; the message says what to do about it."""


class Source:
    """An event source. The collector runs each one on its own thread:
    start(), then poll() in a loop, then stop(). poll() returns a batch and
    must return within about timeout_s so the collector can stop it.
    """

    name = "source"

    def start(self, pids: Iterable[int]) -> None:
        """Begin watching these processes (kernel PIDs) and their descendants."""

    def poll(self, timeout_s: float) -> list[Event]:
        raise NotImplementedError

    def add_process(self, pid: int) -> None:
        """A new process joined the target tree (the lifecycle probe saw a fork)."""

    def remove_process(self, pid: int) -> None:
        """A process of the target tree exited."""

    def stop(self) -> None:
        """Detach everything. Must be safe to call twice and after a failed start."""

    def stats(self) -> dict[str, int]:
        """Counters for the status line and summary: at least 'events' and 'lost'."""
        return {}

    def notices(self) -> list[str]:
        """Human-readable remarks for the summary (a probe skipped, a version unsupported)."""
        return []
