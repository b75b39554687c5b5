"""A recording: the consumer that writes one capture's trace (a Timeline over
a TraceWriter) and feeds its stall analysis; at the end it writes the
verdict into the trace and the summary beside it. `attach`/`run` have one
for the whole run; a sidecar capture adds one to the running pipeline."""

from __future__ import annotations

import operator
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from gpuscope.probes.events import (
    CounterSample,
    Event,
    Instant,
    Loss,
    Span,
    StackSample,
    ThreadName,
)
from gpuscope.probes.source import SourceStats

from .gpusummary import GpuSummary
from .liveindex import LiveIndex
from .perfetto import TraceWriter
from .summary import write_summary
from .timeline import Timeline
from .verdict import verdict_events

# The trace is written out at most this often (and when the writer's buffer
# fills): the viewer polls every 500 ms and the live index follows the file.
FLUSH_EVERY_S = 0.25


@dataclass
class Capture:
    """What a finished recording hands back (the CLI prints it, the sidecar serves it)."""

    trace: str
    summary_path: str
    reason: str
    duration_s: float
    events: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    aggregated: dict[str, int] = field(default_factory=dict)   # summed in the kernel
    processes: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    error: str = ""     # why the trace stopped being written early (disk full), if it did


class Recording:
    name = "trace"

    def __init__(self, output: str, pid: int, command: list[str], analysis=None):
        self.output, self.pid, self.command = output, pid, command
        self.writer = TraceWriter(output)
        # The viewer's index, written beside the trace by an idle-priority child.
        self.index = LiveIndex(output)
        self.timeline = Timeline(self.writer)
        # The target's track first: a trace read without its summary names the
        # target by it (replay.target_pid), not by whichever process spoke first.
        self.timeline.process(pid)
        self.analysis = analysis        # the stall analysis: feed(batch), result()
        self.gpu = GpuSummary()         # the summary's gpu section
        self.counts: dict[str, int] = {}  # events written, per category
        self.result: dict = {}
        self.notices: list[str] = []
        self._closed = False
        self._flushed = 0.0

    def feed(self, batch: list[Event]) -> None:
        self.timeline.add_many(batch)
        counts = self.counts
        if set(map(type, batch)) <= _BY_CAT:   # spans and instants: counted in C
            for k, n in Counter(map(_cat, batch)).items():
                counts[k] = counts.get(k, 0) + n
        else:
            for ev in batch:
                k = _COUNT_AS.get(type(ev)) or getattr(ev, "cat", None)
                if k:
                    counts[k] = counts.get(k, 0) + 1
        now = time.monotonic()
        if now - self._flushed >= FLUSH_EVERY_S:
            self._flushed = now
            self.writer.flush()
        self.gpu.feed(batch)
        if self.analysis is not None:
            try:
                self.analysis.feed(batch)
            except Exception as e:  # the trace goes on without a verdict
                self.notices.append(f"stall analysis failed: {e}")
                self.analysis = None

    def close(self) -> None:
        """The verdict into the trace (Verdict track), then the trace finished."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.analysis is not None:
                try:
                    self.result = self.analysis.result()
                    for ev in verdict_events(self.analysis, self.result):
                        self.timeline.add(ev)
                except Exception as e:  # the trace must still be finished
                    self.notices.append(f"stall analysis failed: {e}")
            self.timeline.close()
        except OSError:
            pass   # a write failed: self.error says which; what was flushed stays readable
        finally:
            try:
                self.writer.close()
            except OSError:
                pass
            self.index.close()
            if self.index.index_error:
                self.notices.append(self.index.index_error)

    @property
    def error(self) -> str | None:
        """Why the trace stopped being written (disk full, I/O error, the file
        or its directory removed), if it did."""
        e = self.writer.error
        if e is not None:
            return f"cannot write {self.output}: {e.strerror or e}"
        return self._removed

    _removed: str | None = None

    def check_output(self) -> None:
        """Notices a trace file deleted under us (writes to it would all be lost)."""
        try:
            gone = self.writer.fd >= 0 and os.fstat(self.writer.fd).st_nlink == 0
        except OSError:
            gone = False
        if gone and self._removed is None:
            self._removed = (f"the trace file {self.output} was deleted during the capture "
                             "(or its directory removed)")

    def finish(self, reason: str, duration_s: float, stats: SourceStats, processes,
               notices: list[str], attach_s: float = 0.0, overhead: dict | None = None) -> Capture:
        """Closes the trace (if not yet) and writes the summary."""
        self.close()
        lost = dict(stats.lost)
        for source, n in self.timeline.lost.items():
            lost[source] = max(lost.get(source, 0), n)
        cap = Capture(trace=self.output,
                      summary_path=os.path.splitext(self.output)[0] + ".summary.json",
                      reason=reason, duration_s=duration_s, events=dict(stats.events),
                      lost=lost, aggregated=dict(stats.aggregated),
                      processes=sorted(processes),
                      notices=list(notices) + self.notices)
        if self.error:
            cap.error = self.error
            cap.notices.append(self.error if self._removed else
                               f"{self.error}; the trace holds what was written before "
                               f"({self.writer.bytes_written} bytes)")
        if overhead is not None:   # the index child's CPU, beside (not in) the budget's figures
            cpu = self.index.cpu_s
            overhead = {**overhead, "indexer_cpu_s": round(cpu, 3) if cpu is not None else None}
        try:
            cap.summary = write_summary(cap, pid=self.pid, command=self.command,
                                        writer=self.writer, attach_s=attach_s,
                                        counts=self.counts, result=self.result,
                                        overhead=overhead, gpu=self.gpu.result())
        except OSError as e:   # the same full disk, most likely: the capture still reports
            cap.notices.append(f"summary not written ({cap.summary_path}): {e.strerror or e}")
            cap.summary_path = ""
        return cap


# What the status line and summary count events as (names and losses are not events of a source).
_COUNT_AS = {StackSample: "python", CounterSample: "counters", ThreadName: "", Loss: ""}
_BY_CAT = {Span, Instant}
_cat = operator.attrgetter("cat")
