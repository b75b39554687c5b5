"""A capture session: starts the sources, merges their batches on
CLOCK_MONOTONIC, streams them to the Perfetto trace, and stops cleanly on
duration, signal or target exit, always finishing the trace and summary."""

from __future__ import annotations

import bisect
import operator
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field

from gpuscope.probes import procfs
from gpuscope.probes.events import (
    CounterSample,
    Event,
    Instant,
    Loss,
    Span,
    StackSample,
    ThreadName,
)
from gpuscope.probes.source import Source, SourceError

from .liveindex import IndexedWriter
from .perfetto import TraceWriter
from .pystacks import Attribution
from .status import StatusLine
from .summary import write_summary
from .timeline import Timeline
from .verdict import verdict_events

REORDER_NS = 300_000_000     # events are written once this much older than now
FLUSH_EVERY_S = 0.25


@dataclass
class Capture:
    """What a finished session hands back to the CLI."""

    trace: str
    summary_path: str
    reason: str
    duration_s: float
    events: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    processes: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


class Session:
    def __init__(self, pid: int, sources: list[Source], output: str,
                 duration: float | None = None, subprocesses: bool = True,
                 status: StatusLine | None = None, command: list[str] | None = None,
                 analysis=None):
        self.pid = pid
        self.sources = sources
        self.output = output
        self.duration = duration
        self.subprocesses = subprocesses
        self.status = status
        self.command = command or procfs.cmdline(pid)
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pending: list[Event] = []
        self._started: list[Source] = []
        self.processes: set[int] = set()
        self.notices: list[str] = []
        self.counts: dict[str, int] = {}
        self.attribution = Attribution()
        # Consumers of the merged, time-ordered stream besides the trace (the
        # stall analysis, the sidecar's metrics and flight recorder). Called
        # from the collector thread with each written batch; must be quick.
        self.taps: list = []
        # The stall analysis: fed like a tap, asked for its verdict at the end,
        # which is written into the trace (Verdict track) and the summary.
        self.analysis = analysis
        self.result: dict = {}
        if analysis is not None:
            self.taps.append(analysis.feed)

    # -- control -----------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self.request_stop(signal.Signals(signum).name)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    # -- run ---------------------------------------------------------------
    def run(self, on_attached=None) -> Capture:
        """Capture until stopped. Raises SourceError if no source could start
        (the trace file, if opened, is still finished)."""
        # viewer-index hook (viewer branch): the trace writer also writes the viewer's index.
        writer = IndexedWriter.for_trace(self.output)
        timeline = Timeline(writer)
        self.t0 = time.monotonic()
        try:
            self._start_sources()
            self.attach_s = time.monotonic() - self.t0
            if on_attached:
                on_attached(self)
            self._loop(timeline, writer)
        finally:
            self._finish(timeline, writer)
        return self._capture(timeline, writer)

    def _start_sources(self) -> None:
        pids = procfs.descendants(self.pid) if self.subprocesses else [self.pid]
        if not procfs.alive(self.pid):
            raise SourceError(f"process {self.pid} exited before gpuscope could attach")
        self.processes.update(pids)
        for src in self.sources:
            try:
                src.start(pids)
            except SourceError as e:
                if src is self.sources[0]:
                    raise
                self.notices.append(f"{src.name}: {e}")
                continue
            self._started.append(src)
        if self.subprocesses:
            # Children forked while the probes were being attached.
            for pid in procfs.descendants(self.pid):
                if pid not in self.processes:
                    self._add_process(pid)
        if not procfs.alive(self.pid):
            self.request_stop("target exited during attach")
        for src in self._started:
            t = threading.Thread(target=self._pump, args=(src,), name=f"gpuscope-{src.name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, src: Source) -> None:
        while not self._stop.is_set():
            try:
                batch = src.poll(0.1)
            except Exception as e:  # a failing source must not stop the others
                self._queue.put([Loss(src.name, time.monotonic_ns(), 1, f"source failed: {e}")])
                self.notices.append(f"{src.name} stopped: {e}")
                return
            if batch:
                self._queue.put(batch)

    def _add_process(self, pid: int) -> None:
        self.processes.add(pid)
        for src in self._started:
            src.add_process(pid)

    def _loop(self, timeline: Timeline, writer: TraceWriter) -> None:
        last_flush = time.monotonic()
        while not self._stop.is_set():
            self._take(timeout=0.05)
            now = time.monotonic()
            if now - last_flush >= FLUSH_EVERY_S:
                last_flush = now
                self._write(timeline, time.monotonic_ns() - REORDER_NS)
                writer.flush()
                if self.status:
                    self.status.update(self)
            if self.duration is not None and now - self.t0 >= self.duration:
                self.request_stop("duration")
            elif not procfs.alive(self.pid):
                self.request_stop("target exited")

    def _take(self, timeout: float) -> None:
        try:
            batch = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._ingest(batch)
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                return

    def _ingest(self, batch: list[Event]) -> None:
        for ev in batch:
            if type(ev) is StackSample:
                self.attribution.remember(ev)
            elif type(ev) is Instant and ev.cat == "proc":
                if ev.name == "fork" and self.subprocesses:
                    self._add_process(ev.args["child"])
                elif ev.name == "exec":
                    self._add_process(ev.pid)  # the sampler re-resolves a new image
                elif ev.name == "exit" and ev.args.get("process"):
                    for src in self._started:
                        src.remove_process(ev.pid)
        self._pending.extend(batch)

    def _write(self, timeline: Timeline, upto: int | None) -> None:
        if not self._pending:
            return
        self._pending.sort(key=_ts)
        cut = len(self._pending) if upto is None else bisect.bisect_right(self._pending, upto, key=_ts)
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        attribution = self.attribution
        for ev in ready:
            if type(ev) is Span and ev.tid in attribution.hist:
                attribution.annotate(ev)
            timeline.add(ev)
            k = _COUNT_AS.get(type(ev)) or getattr(ev, "cat", None)
            if k:
                self.counts[k] = self.counts.get(k, 0) + 1
        for tap in self.taps:
            tap(ready)

    def _finish(self, timeline: Timeline, writer: TraceWriter) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for src in self._started:
            drain = getattr(src, "drain", None)
            if drain is not None:
                try:
                    self._queue.put(drain())
                except Exception as e:
                    self.notices.append(f"{src.name}: final drain failed: {e}")
        for src in self._started:
            try:
                src.stop()
            except Exception as e:
                self.notices.append(f"{src.name}: detach failed: {e}")
        self._take(timeout=0)
        self._write(timeline, None)
        if self.analysis is not None:
            try:
                self.result = self.analysis.result()
                for ev in verdict_events(self.analysis, self.result):
                    timeline.add(ev)
            except Exception as e:  # the trace must still be finished
                self.notices.append(f"stall analysis failed: {e}")
        timeline.close()
        writer.close()
        if getattr(writer, "index_error", None):   # viewer-index hook (viewer branch)
            self.notices.append(writer.index_error)
        if self.status:
            self.status.done()

    def _capture(self, timeline: Timeline, writer: TraceWriter) -> Capture:
        events, lost = {}, {}
        for src in self._started:
            st = src.stats()
            for k, v in st.items():
                if k.endswith(".events"):
                    events[k[:-7]] = v
                elif k.endswith(".lost"):
                    lost[k[:-5]] = v
            if not any(k.endswith(".events") for k in st):
                events[src.name] = st.get("events", 0)
                lost[src.name] = st.get("lost", 0)
            self.notices.extend(src.notices())
        for source, n in timeline.lost.items():
            lost[source] = max(lost.get(source, 0), n)
        cap = Capture(
            trace=self.output, summary_path=os.path.splitext(self.output)[0] + ".summary.json",
            reason=self.stop_reason or "stopped", duration_s=time.monotonic() - self.t0,
            events=events, lost=lost, processes=sorted(self.processes), notices=self.notices)
        cap.summary = write_summary(self, cap, writer)
        return cap


_ts = operator.attrgetter("ts")
# What the status line and summary count events as (names and losses are not events of a source).
_COUNT_AS = {StackSample: "python", CounterSample: "counters", ThreadName: "", Loss: ""}  # a Span's ts is its start
