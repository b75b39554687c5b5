"""A capture session (`gpuscope attach`/`run`): the pipeline with a
recording (trace, stall analysis, summary) and the status line as its
consumers, stopped on duration, signal or target exit, always finishing the
trace and summary."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable

from gpuscope.probes import fsnames, procfs
from gpuscope.probes.source import Source

from .pipeline import FLUSH_EVERY_S, REORDER_NS, Consumer, Pipeline
from .recording import Capture, Recording
from .status import StatusLine

__all__ = ["REORDER_NS", "Capture", "Session"]


class Session:
    def __init__(self, pid: int, sources: list[Source], output: str,
                 duration: float | None = None, subprocesses: bool = True,
                 status: StatusLine | None = None, command: list[str] | None = None,
                 analysis=None, consumers: Iterable[Consumer] = (), budget=None):
        self.pid = pid
        self.sources = sources
        self.output = output
        self.duration = duration
        self.status = status
        # `run`'s argv as the os module decoded it; /proc's is escaped by procfs
        self.command = [fsnames.from_os(a) for a in command] if command else procfs.cmdline(pid)
        self.analysis = analysis      # the stall analysis, fed by the recording
        self.consumers = list(consumers)  # more consumers of the stream (e.g. a viewer index)
        self.budget = budget          # the overhead budget (budget.PipelineBudget), ticked once a second
        self.stop_reason: str | None = None
        self.pipeline = Pipeline(follow_children=subprocesses)
        self.recording: Recording | None = None
        self.t0 = time.monotonic()
        self.attach_s = 0.0
        self.t_live = self.t0            # when the probes were live (end of attach)
        self.t_stop: float | None = None  # when a stop was asked for
        self._stop = threading.Event()

    @property
    def processes(self) -> set[int]:
        return self.pipeline.processes

    # -- control -----------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.t_stop = time.monotonic()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self.request_stop(signal.Signals(signum).name)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    # -- run ---------------------------------------------------------------
    def run(self, on_attached=None) -> Capture:
        """Capture until stopped. Raises SourceError if the eBPF source could
        not start (the trace file, if opened, is still finished)."""
        p = self.pipeline
        rec = self.recording = Recording(self.output, self.pid, self.command, self.analysis)
        p.add_consumer(rec)
        for c in self.consumers:
            p.add_consumer(c)
        self.t0 = self.t_live = time.monotonic()
        try:
            p.attach(self.pid, self.sources)
            self.t_live = time.monotonic()   # -d and the captured time count from here
            self.attach_s = self.t_live - self.t0
            if not procfs.alive(self.pid):
                self.request_stop("target exited during attach")
            if on_attached:
                on_attached(self)
            p.on_tick(self._check, every_s=0)
            # a /proc read: on every step it was ~5% of the collector's samples on job a
            p.on_tick(self._check_target, every_s=0.2)
            p.on_tick(lambda _p: rec.check_output(), every_s=1.0)
            if self.budget is not None:
                p.on_tick(self.budget, every_s=1.0)
            if self.status:
                p.on_tick(self._show, every_s=FLUSH_EVERY_S)
            p.run(self._stop)
        finally:
            p.close()
            if self.budget is not None:
                self.budget.close()
            if self.status:
                self.status.done()
        captured = max(0.0, (self.t_stop or time.monotonic()) - self.t_live)
        cap = rec.finish(self.stop_reason or "stopped", captured,
                         p.stats(), p.processes, p.notices(), self.attach_s,
                         overhead=self.budget.state() if self.budget is not None else None)
        failed = p.failed.get(id(rec))
        if failed is not None and not cap.error:   # not a write error: a bug, said as one
            cap.error = f"writing {self.output} failed: {type(failed).__name__}: {failed}"
        return cap

    def _check(self, p: Pipeline) -> None:
        rec = self.recording
        if rec is not None and (rec.error or id(rec) in p.failed):
            self.request_stop("trace not writable")   # a disk full: stop, keep what was written
        elif self.duration is not None and time.monotonic() - self.t_live >= self.duration:
            self.request_stop("duration")

    def _check_target(self, p: Pipeline) -> None:
        if not procfs.alive(self.pid):
            self.request_stop("target exited")

    def _show(self, p: Pipeline) -> None:
        status, rec = self.status, self.recording   # both set: run() ticks this only then
        if status and rec:
            st = p.stats()
            counts = dict(rec.counts)
            if st.aggregated:   # calls and waits summed in the kernel, not shipped one by one
                counts["summed"] = sum(st.aggregated.values())
            status.update(counts, time.monotonic() - self.t_live, len(p.processes), st.total_lost,
                          self.budget.status() if self.budget is not None else "")
