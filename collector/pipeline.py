"""The one event pipeline: sources -> a time-ordered merge -> consumers.

`gpuscope attach`/`run` (session.py) and the sidecar's always-on monitor both
run one. It owns what both need the same way: starting the sources (the
first is required, the others optional: a failure becomes a notice), one
pump thread per source (the pipeline never blocks a source), following the
target's tree (fork -> add_process on every source, exec -> re-resolve,
exit -> remove_process), draining before stopping, losses and per-source
statistics (typed: SourceStats).

The merge holds events for REORDER_NS (sources deliver in batches, late by
up to a poll), sorts them on CLOCK_MONOTONIC and hands every consumer the
same time-ordered batches, about every FLUSH_EVERY_S. Spans are annotated
with the Python line running on their thread (pystacks.Attribution) before
any consumer sees them.

Threads: attach/detach/run/step are called from one thread, the pipeline's.
Consumers are fed on it, under a lock that add_consumer/remove_consumer also
take, so captures can come and go from other threads (the HTTP API).
Callbacks registered with on_tick run on the pipeline's thread between
batches, e.g. the status line, stop conditions, an overhead budget.
"""

from __future__ import annotations

import bisect
import gc
import operator
import queue
import threading
import time
from collections.abc import Callable, Collection
from typing import Protocol

from gpuscope.probes import memtrim, procfs
from gpuscope.probes.events import Event, Instant, Loss, Span, StackSample
from gpuscope.probes.source import Source, SourceError, SourceStats

from .pystacks import Attribution

REORDER_NS = 300_000_000     # events are handed on once this much older than now
FLUSH_EVERY_S = 0.25
# Young objects before CPython's cyclic GC runs (default 700). The pipeline
# makes several per event (the event, its args, records), none in cycles; at
# the default the GC ran every ~100 events and took ~12% of a recording's CPU
# (bench/bench_capture.py's one-by-one path).
GC_GEN0 = 100_000


class Consumer(Protocol):
    """Takes the merged stream. feed() gets time-ordered batches and must be
    quick (it runs on the pipeline's thread); close() ends it."""

    def feed(self, batch: list[Event]) -> None: ...

    def close(self) -> None: ...


class Tap:
    """A function of a batch as a consumer (e.g. Metrics.observe)."""

    def __init__(self, feed: Callable[[list[Event]], None], name: str = ""):
        self.feed = feed
        self.name = name or getattr(feed, "__qualname__", "tap")

    def close(self) -> None:
        pass


class _Tick:
    __slots__ = ("fn", "every_s", "due")

    def __init__(self, fn, every_s: float):
        self.fn, self.every_s, self.due = fn, every_s, 0.0


class Pipeline:
    def __init__(self, follow_children: bool = True, reorder_ns: int = REORDER_NS,
                 flush_every_s: float = FLUSH_EVERY_S, max_notices: int | None = None):
        self.follow_children = follow_children
        self.reorder_ns = reorder_ns
        self.flush_every_s = flush_every_s
        self.max_notices = max_notices
        self.target: int | None = None
        self.sources: list[Source] = []        # started, while attached
        self.processes: set[int] = set()       # the target's tree, every process seen
        self.live: set[int] = set()            # ... and still running
        self.generation = 0                    # attach count
        self.compiler_freed_kb = 0             # RSS given back after the last attach's compiles
        self.attribution = Attribution()
        self.failed: dict[int, BaseException] = {}   # id(consumer) -> what its feed raised
        self._notices: list[str] = []
        self._queue: queue.Queue[list[Event]] = queue.Queue()
        self._pending: list[Event] = []
        self._consumers: list[Consumer] = []
        self._lock = threading.Lock()          # pending + consumers
        self._ticks: list[_Tick] = []
        self._pumps: list[threading.Thread] = []
        self._pump_stop = threading.Event()
        self._base = SourceStats()             # stats of sources detached so far
        self._losses: dict[str, int] = {}      # Loss events seen, per source
        self._last_flush = 0.0

    # -- consumers and ticks -------------------------------------------------
    def add_consumer(self, c: Consumer, prelude: Callable[[], list[Event]] | None = None) -> None:
        """Feeds `c` every batch from now on. `prelude`, if given, is called
        under the same lock as the feeding and its events are fed first: what
        `c` must see before the live stream (names, a flight recorder's window),
        with nothing lost or doubled in between."""
        with self._lock:
            first = prelude() if prelude is not None else []
            if first:
                c.feed(first)
            self._consumers.append(c)

    def remove_consumer(self, c: Consumer, flush: bool = True) -> None:
        """Stops feeding `c`; with `flush`, first hands it what is still held in
        the reorder window (time-ordered), as a detach would. Does not close it."""
        with self._lock:
            if c not in self._consumers:
                return
            self._consumers.remove(c)
            if flush and self._pending:
                self._pending.sort(key=_ts)
                self._annotate(self._pending)
                c.feed(list(self._pending))

    def on_tick(self, fn: Callable[[Pipeline], None], every_s: float = 1.0) -> None:
        """Calls fn(pipeline) about every `every_s` (0: every step, ~20 times a
        second) on the pipeline's thread. An exception is a notice."""
        self._ticks.append(_Tick(fn, every_s))

    def remove_tick(self, fn) -> None:
        self._ticks = [t for t in self._ticks if t.fn is not fn]

    def emit(self, events: list[Event]) -> None:
        """Events of gpuscope's own (the overhead budget's) into the stream, merged
        in time order like a source's batch."""
        if events:
            self._queue.put(events)

    # -- attach / detach -----------------------------------------------------
    def attach(self, pid: int, sources: list[Source],
               required: Collection[Source] | None = None) -> None:
        """Starts `sources` on `pid` and its descendants. A required source
        (default: the first) that cannot start raises SourceError, after the
        started ones are stopped again; the others become notices."""
        if self.target is not None:
            raise RuntimeError(f"already attached to {self.target}")
        required = sources[:1] if required is None else required
        pids = procfs.descendants(pid) if self.follow_children else [pid]
        if not procfs.alive(pid):
            raise SourceError(f"process {pid} exited before gpuscope could attach")
        # Slow one-off set-up (the sampler's kernel walker compiles for seconds) runs
        # beside the other sources' start, and is waited for before the capture counts.
        for src in sources:
            prepare = getattr(src, "prepare", None)
            if prepare is not None:
                prepare(pids)
        started: list[Source] = []
        for src in sources:
            try:
                src.start(pids)
            except SourceError as e:
                if any(src is r for r in required):
                    for s in started:
                        self._stop_source(s)
                    raise
                self._notice(f"{src.name}: {e}")
                continue
            started.append(src)
        for src in started:
            ready = getattr(src, "wait_ready", None)
            if ready is not None:
                ready(120.0)
        # Every compile is done: BCC's compiler memory back to the kernel (~100 MB).
        self.compiler_freed_kb = memtrim.release_compiler_memory()
        self.target, self.sources = pid, started
        self.processes, self.live = set(pids), set(pids)
        self.generation += 1
        if self.follow_children:
            for p in procfs.descendants(pid):   # forked while the sources were starting
                if p not in self.processes:
                    self._add_process(p)
        # What the first attach built (BCC's program and tables, symbol caches)
        # lives on: out of the GC's scans. Fewer, larger young collections.
        if self.generation == 1:
            gc.freeze()
        if gc.get_threshold()[0] < GC_GEN0:
            gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])
        self._pump_stop = threading.Event()
        self._pumps = []
        for src in started:
            t = threading.Thread(target=self._pump, args=(src, self._pump_stop),
                                 name=f"gpuscope-{src.name}", daemon=True)
            t.start()
            self._pumps.append(t)

    def detach(self) -> None:
        """Stops polling, drains and stops every source, and hands everything
        still held to the consumers (who stay, for a next attach)."""
        if self.target is None:
            return
        self._pump_stop.set()
        for t in self._pumps:
            t.join(timeout=5)
        for src in self.sources:
            try:
                self._queue.put(src.drain())
            except Exception as e:
                self._notice(f"{src.name}: final drain failed: {e}")
        for src in self.sources:
            self._stop_source(src)
        self._take(0)
        self._write(None)
        self._base = self._base + self._source_stats()
        for src in self.sources:
            self._notices.extend(_safe(src.notices, []))
        self._trim_notices()
        self.sources, self._pumps, self.target = [], [], None
        self.live = set()

    def close(self) -> None:
        """Detaches, then closes every consumer (a failure there is a notice)."""
        self.detach()
        with self._lock:
            consumers, self._consumers = self._consumers, []
        for c in consumers:
            try:
                c.close()
            except Exception as e:
                self._notice(f"{_name(c)}: close failed: {e}")

    # -- the loop ------------------------------------------------------------
    def run(self, until: threading.Event) -> None:
        """Moves events from the sources to the consumers until `until` is set
        (by a tick, a signal handler or another thread)."""
        while not until.is_set():
            self.step(0.05)

    def step(self, timeout: float) -> None:
        self._take(timeout)
        now = time.monotonic()
        if now - self._last_flush >= self.flush_every_s:
            self._last_flush = now
            self._write(time.monotonic_ns() - self.reorder_ns)
        for tick in list(self._ticks):
            if now >= tick.due:
                tick.due = now + tick.every_s
                try:
                    tick.fn(self)
                except Exception as e:  # a broken callback must not stop the capture
                    self._notice(f"tick {getattr(tick.fn, '__qualname__', tick.fn)}: {e}")

    def _pump(self, src: Source, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batch = src.poll(0.1)
            except Exception as e:  # a failing source must not stop the others
                self._queue.put([Loss(src.name, time.monotonic_ns(), 1, f"source failed: {e}")])
                self._notice(f"{src.name} stopped: {e}")
                return
            if batch:
                self._queue.put(batch)

    def _take(self, timeout: float) -> None:
        try:
            batch = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        with self._lock:
            while True:
                self._ingest(batch)
                try:
                    batch = self._queue.get_nowait()
                except queue.Empty:
                    return

    def _ingest(self, batch: list[Event]) -> None:
        """Ahead of the merge: the target's tree changes at once (a fork's child
        must be tracked before its first events), samples are remembered for
        attribution (a sample taken during a span arrives after it)."""
        kinds = set(map(type, batch))   # most batches are spans only: no loop in Python
        if StackSample in kinds or Instant in kinds:
            self._scan(batch)
        self._pending.extend(batch)

    def _scan(self, batch: list[Event]) -> None:
        for ev in batch:
            if type(ev) is StackSample:
                self.attribution.remember(ev)
            elif type(ev) is Instant and ev.cat == "proc":
                if ev.name == "fork" and self.follow_children:
                    self._add_process(ev.args["child"])
                elif ev.name == "exec":
                    self._add_process(ev.pid)  # the sampler re-resolves a new image
                elif ev.name == "exit" and ev.args.get("process"):
                    self.live.discard(ev.pid)
                    for src in self.sources:
                        src.remove_process(ev.pid)

    def _add_process(self, pid: int) -> None:
        self.processes.add(pid)
        self.live.add(pid)
        for src in self.sources:
            src.add_process(pid)

    def _write(self, upto: int | None) -> None:
        with self._lock:
            if not self._pending:
                return
            self._pending.sort(key=_ts)
            cut = (len(self._pending) if upto is None
                   else bisect.bisect_right(self._pending, upto, key=_ts))
            if not cut:
                return
            ready, self._pending = self._pending[:cut], self._pending[cut:]
            self._annotate(ready, count_losses=True)
            for c in list(self._consumers):
                try:
                    c.feed(ready)
                except Exception as e:  # one broken consumer must not stop the others
                    self._consumers.remove(c)
                    self.failed[id(c)] = e
                    self._notice(f"{_name(c)} failed: {type(e).__name__}: {e}")

    def _annotate(self, ready: list[Event], count_losses: bool = False) -> None:
        hist, annotate, losses = self.attribution.hist, self.attribution.annotate, self._losses
        if not hist and not (count_losses and Loss in set(map(type, ready))):
            return   # no samples to attribute to, no losses to count
        for ev in ready:
            if type(ev) is Span:
                if ev.tid in hist:
                    annotate(ev)
            elif type(ev) is Loss and count_losses:
                losses[ev.source] = losses.get(ev.source, 0) + ev.count

    # -- state ---------------------------------------------------------------
    def _source_stats(self) -> SourceStats:
        out = SourceStats()
        for src in self.sources:
            st = _safe(src.stats, SourceStats())
            # A source that counts nothing still shows, as 0: losses are never omitted.
            out = out + SourceStats(st.events or {src.name: 0}, st.lost or {src.name: 0},
                                    st.counters, st.aggregated)
        return out

    def stats(self) -> SourceStats:
        """Events and losses per stream over every attach so far. A loss the
        sources do not count themselves (a source that failed, a PID that
        could not be translated) shows from its Loss events."""
        st = self._base + self._source_stats()
        for source, n in list(self._losses.items()):
            if n > st.lost.get(source, 0):
                st.lost[source] = n
        return st

    def notices(self) -> list[str]:
        out = list(self._notices)
        for src in list(self.sources):
            out.extend(_safe(src.notices, []))
        return out

    def source(self, name: str) -> Source | None:
        """A started source by name ("ebpf", "python", "nvml"): where its knobs are."""
        return next((s for s in self.sources if s.name == name), None)

    def _notice(self, text: str) -> None:
        self._notices.append(text)
        self._trim_notices()

    def _trim_notices(self) -> None:
        if self.max_notices is not None and len(self._notices) > self.max_notices:
            del self._notices[:-self.max_notices]

    def _stop_source(self, src: Source) -> None:
        try:
            src.stop()
        except Exception as e:
            self._notice(f"{src.name}: detach failed: {e}")


def _safe(fn, default):
    try:
        return fn()
    except Exception:
        return default


def _name(c) -> str:
    return getattr(c, "name", None) or type(c).__name__


_ts = operator.attrgetter("ts")
