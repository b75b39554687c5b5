"""The sidecar's always-on loop: finds the training process and runs the
collector's pipeline on it, whose consumers are the metrics, the flight
recorder and the thread names a capture starts with. Nothing is written to
disk here; a capture is one more consumer of the same pipeline (captures.py).

When the target exits the sources are stopped and discovery starts again,
so a restarted job (a new PID, after a crash or an operator's restart) is
followed with freshly attached probes; the pipeline, its consumers and its
statistics carry over.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from gpuscope.collector.pipeline import Consumer, Pipeline, Tap
from gpuscope.probes import procfs
from gpuscope.probes.events import Event, Instant, ThreadName
from gpuscope.probes.source import Source, SourceError, SourceStats

from .flightrec import FlightRecorder
from .metrics import Metrics

CHECK_EVERY_S = 0.5
REPLAY_EVENTS = 50_000   # a capture's flight window is fed in parts of this many events
RETRY_ATTACH_S = 5.0
STOP_WAIT_S = 60.0


class Names:
    """The current name of every live thread and process, in stream order:
    what a capture starting now must write first."""

    name = "names"

    def __init__(self):
        self.names: dict[tuple[int, int, bool], ThreadName] = {}

    def feed(self, batch: list[Event]) -> None:
        names = self.names
        for ev in batch:
            if type(ev) is ThreadName:
                names[(ev.pid, ev.tid, ev.is_process)] = ev
            elif type(ev) is Instant and ev.cat == "proc" and ev.name == "exit":
                names.pop((ev.pid, ev.tid, False), None)
                if ev.args.get("process"):
                    names.pop((ev.pid, ev.pid, True), None)

    def as_of(self, ts: int) -> list[ThreadName]:
        return [ThreadName(n.pid, n.tid, ts, n.name, n.is_process)
                for n in sorted(self.names.values(), key=lambda n: (not n.is_process, n.tid))]

    def pids(self) -> set[int]:
        return {n.pid for n in self.names.values()}

    def close(self) -> None:
        self.names.clear()


class Monitor:
    def __init__(self, make_sources: Callable[[], list[Source]],
                 find_target: Callable[[], int | None], metrics: Metrics,
                 flight: FlightRecorder, log: Callable[[str], None] = lambda m: None,
                 rediscover_s: float = 1.0, budget=None):
        self.make_sources = make_sources
        self.budget = budget      # budget.PipelineBudget: ticked by the pipeline, shown in metrics
        self.find_target = find_target
        self.metrics = metrics
        self.flight = flight
        self.log = log
        self.rediscover_s = rediscover_s
        self.command: list[str] = []
        self.attached_at: float | None = None
        self.restarts = 0
        self.error: str | None = None
        self.names = Names()
        self.pipeline = Pipeline(follow_children=True, max_notices=50)
        self.pipeline.add_consumer(Tap(metrics.observe, "metrics"))
        self.pipeline.add_consumer(flight)
        self.pipeline.add_consumer(self.names)
        self.pipeline.on_tick(self._check, CHECK_EVERY_S)
        if budget is not None:
            self.pipeline.on_tick(budget, 1.0)
        self._exited = False
        self._stop = threading.Event()
        self._wake = threading.Event()        # ends the current attach
        self._thread: threading.Thread | None = None
        self.attached = threading.Event()

    @property
    def target(self) -> int | None:
        return self.pipeline.target

    @property
    def processes(self) -> set[int]:
        return set(self.pipeline.live)

    # -- control -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpuscope-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
            if self._thread.is_alive():  # exiting still removes every probe (the kernel's)
                self.log(f"detach still running after {STOP_WAIT_S:.0f}s; exiting without it")
        if self.budget is not None:
            self.budget.close()

    def _run(self) -> None:
        next_try = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now < next_try:
                    self._stop.wait(min(self.rediscover_s, next_try - now))
                    continue
                pid = self.find_target()
                if pid is None:
                    self._stop.wait(self.rediscover_s)
                    continue
                if not self._attach(pid):
                    next_try = time.monotonic() + RETRY_ATTACH_S
                    continue
                self.pipeline.run(self._wake)
                if self._exited:
                    self._detach(f"target {pid} exited")
                    self.restarts += 1
                    self.metrics.inc("gpuscope_target_restarts_total")
        finally:
            self._detach("gpuscope stopping")
            self.pipeline.close()

    def _check(self, p: Pipeline) -> None:
        if p.target is not None and not procfs.alive(p.target):
            self._exited = True
            self._wake.set()
        else:
            self._publish()

    # -- attach / detach -----------------------------------------------------
    def _attach(self, pid: int) -> bool:
        t0 = time.monotonic()
        try:
            self.pipeline.attach(pid, self.make_sources())
        except SourceError as e:
            self.error = f"cannot attach to PID {pid}: {e}"
            self.log(self.error)
            return False
        except Exception as e:  # keep serving; report and retry
            self.error = f"attaching to PID {pid} failed: {type(e).__name__}: {e}"
            self.log(self.error)
            return False
        self.command, self.error, self._exited = procfs.cmdline(pid), None, False
        freed = self.pipeline.compiler_freed_kb   # BCC's compiler memory, given back at attach
        self._wake.clear()
        if self._stop.is_set():
            self._wake.set()
        self.attached_at = time.time()
        self.log(f"attached to PID {pid} ({' '.join(self.command)[:120]}), "
                 f"{len(self.pipeline.processes)} process(es), in {time.monotonic() - t0:.1f}s; "
                 f"{freed >> 10} MB of compiler memory released")
        self._publish()
        self.attached.set()
        return True

    def _detach(self, reason: str) -> None:
        pid = self.pipeline.target
        if pid is None:
            return
        self.attached.clear()
        t0 = time.monotonic()
        self.pipeline.detach()
        self.log(f"detached from PID {pid} in {time.monotonic() - t0:.1f}s: {reason}")
        self.attached_at = None
        self.names.close()
        self._publish()

    # -- captures ------------------------------------------------------------
    def add_capture(self, c: Consumer, with_flight: bool) -> dict:
        """Adds `c` to the pipeline, atomically preceded by the current thread
        and process names and (if asked) the flight recorder's window. Returns
        what the capture needs of that moment: 'replayed' (events from the
        window), 'processes' (of the target tree, then), 'generation'."""
        start: dict = {}

        def prelude() -> list[Event]:
            # Fed here a batch at a time (the window decodes chunk by chunk), names first.
            p = self.pipeline
            now = time.monotonic_ns()
            chunks = self.flight.chunks(now) if with_flight else iter(())
            head = next(chunks, [])
            names: list[Event] = list(self.names.as_of((head[0].ts if head else now) - 1))
            c.feed(names)
            replayed, forks = 0, set[int]()
            part: list[Event] = []   # fed in parts of REPLAY_EVENTS: a feed flushes the trace
            for chunk in itertools.chain([head], chunks, [None]):
                if chunk is not None:
                    replayed += sum(1 for ev in chunk if type(ev) is not ThreadName)
                    forks.update(ev.args["child"] for ev in chunk if type(ev) is Instant
                                 and ev.cat == "proc" and ev.name == "fork")
                    part += chunk
                if part and (chunk is None or len(part) >= REPLAY_EVENTS):
                    c.feed(part)
                    part = []
            start.update(replayed=replayed,
                         processes=set(p.live) | set(self.names.pids()) | forks,
                         seen=set(p.processes), generation=p.generation)
            return []

        self.pipeline.add_consumer(c, prelude)
        return start

    # -- state ---------------------------------------------------------------
    def stats(self) -> SourceStats:
        """Events and losses per probe, over every attach so far."""
        return self.pipeline.stats()

    def notices(self) -> list[str]:
        return self.pipeline.notices()

    def _publish(self) -> None:
        m = self.metrics
        target = self.target
        m.set("gpuscope_up", 1.0 if target is not None else 0.0)
        m.clear("gpuscope_target_info")
        if target is not None:
            m.set("gpuscope_target_info", 1.0, (("pid", str(target)),
                                                 ("comm", procfs.comm(target))))
        m.set("gpuscope_target_processes", len(self.pipeline.live))
        st = self.stats()
        for probe, n in st.events.items():
            m.set("gpuscope_probe_events_total", n, (("probe", probe),))
        for probe, n in st.lost.items():
            m.set("gpuscope_probe_events_lost_total", n, (("probe", probe),))
        m.set("gpuscope_events_total", m.events)
        ov = self.budget.state() if self.budget is not None else None
        if ov is not None:
            m.set("gpuscope_overhead_ratio", ov["own_cpu_pct"] / 100)
            m.set("gpuscope_overhead_limit_ratio", ov["limit_pct"] / 100)
            m.set("gpuscope_detail_level", ov["level"])
        f = self.flight
        m.set("gpuscope_flight_recorder_events", f.events)
        m.set("gpuscope_flight_recorder_bytes", f.bytes)
        m.set("gpuscope_flight_recorder_dropped_total", f.dropped)
        oldest = f.oldest_ns()
        m.set("gpuscope_flight_recorder_window_seconds",
              0.0 if oldest is None else max(0.0, (time.monotonic_ns() - oldest) / 1e9))
