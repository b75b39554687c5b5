"""The sidecar's always-on loop: finds the training process, keeps the probes
attached to it and its descendants, and hands every batch of events to the
metrics, the flight recorder and the taps of running captures. Nothing is
written to disk here; a capture writes its own trace (captures.py).

When the target exits the sources are stopped and discovery starts again,
so a restarted job (a new PID, after a crash or an operator's restart) is
followed with freshly attached probes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from gpuscope.probes import procfs
from gpuscope.probes.events import Event, Instant, Loss, ThreadName
from gpuscope.probes.source import Source, SourceError

from .flightrec import FlightRecorder
from .metrics import Metrics

CHECK_EVERY_S = 0.5
RETRY_ATTACH_S = 5.0


class Monitor:
    def __init__(self, make_sources: Callable[[], list[Source]],
                 find_target: Callable[[], int | None], metrics: Metrics,
                 flight: FlightRecorder, log: Callable[[str], None] = lambda m: None,
                 rediscover_s: float = 1.0):
        self.make_sources = make_sources
        self.find_target = find_target
        self.metrics = metrics
        self.flight = flight
        self.log = log
        self.rediscover_s = rediscover_s
        self.target: int | None = None
        self.command: list[str] = []
        self.processes: set[int] = set()
        self.attached_at: float | None = None
        self.restarts = 0
        self.error: str | None = None
        self.names: dict[tuple[int, int, bool], ThreadName] = {}
        self._sources: list[Source] = []
        self._pumps: list[threading.Thread] = []
        self._gen_stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()         # dispatch vs. taps
        self._taps: list[Callable[[list[Event]], None]] = []
        self._base: dict[str, int] = {}       # stats of earlier source generations
        self._notices: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.attached = threading.Event()

    # -- control -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpuscope-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        next_try = 0.0
        try:
            while not self._stop.is_set():
                if self.target is None:
                    now = time.monotonic()
                    if now < next_try:
                        self._stop.wait(min(self.rediscover_s, next_try - now))
                        continue
                    pid = self.find_target()
                    if pid is None:
                        self._stop.wait(self.rediscover_s)
                        continue
                    try:
                        ok = self._attach(pid)
                    except Exception as e:  # keep serving; report and retry
                        self.error = f"attaching to PID {pid} failed: {type(e).__name__}: {e}"
                        self.log(self.error)
                        ok = False
                    if not ok:
                        next_try = time.monotonic() + RETRY_ATTACH_S
                    continue
                self._follow()
        finally:
            self._detach("gpuscope stopping")

    def _follow(self) -> None:
        last_check = time.monotonic()
        while not self._stop.is_set():
            self._take(0.1)
            if time.monotonic() - last_check >= CHECK_EVERY_S:
                last_check = time.monotonic()
                if not procfs.alive(self.target):
                    self._detach(f"target {self.target} exited")
                    self.restarts += 1
                    self.metrics.inc("gpuscope_target_restarts_total")
                    return
                self._publish()

    # -- attach / detach -----------------------------------------------------
    def _attach(self, pid: int) -> bool:
        pids = procfs.descendants(pid)
        sources = self.make_sources()
        started: list[Source] = []
        t0 = time.monotonic()
        for i, src in enumerate(sources):
            try:
                src.start(pids)
            except SourceError as e:
                if i == 0:
                    self.error = f"cannot attach to PID {pid}: {e}"
                    self.log(self.error)
                    for s in started:
                        s.stop()
                    return False
                self._notices.append(f"{src.name}: {e}")
                continue
            started.append(src)
        self.target, self.command = pid, procfs.cmdline(pid)
        self.processes = set(pids)
        self._sources, self.error = started, None
        self._gen_stop = threading.Event()
        self._pumps = []
        for src in started:
            t = threading.Thread(target=self._pump, args=(src, self._gen_stop),
                                 name=f"gpuscope-{src.name}", daemon=True)
            t.start()
            self._pumps.append(t)
        for p in procfs.descendants(pid):  # forked while attaching
            if p not in self.processes:
                self._add_process(p)
        self.attached_at = time.time()
        self.log(f"attached to PID {pid} ({' '.join(self.command)[:120]}), "
                 f"{len(pids)} process(es), in {time.monotonic() - t0:.1f}s")
        self._publish()
        self.attached.set()
        return True

    def _detach(self, reason: str) -> None:
        if self.target is None:
            return
        self.attached.clear()
        self._gen_stop.set()
        for t in self._pumps:
            t.join(timeout=5)
        for src in self._sources:
            drain = getattr(src, "drain", None)
            if drain is not None:
                try:
                    self._queue.put(drain())
                except Exception:
                    pass
            try:
                src.stop()
            except Exception as e:
                self._notices.append(f"{src.name}: detach failed: {e}")
        self._take(0)
        for k, v in self._current_stats().items():
            self._base[k] = self._base.get(k, 0) + v
        for src in self._sources:
            self._notices.extend(src.notices())
        self._notices = self._notices[-50:]
        self._sources, self._pumps = [], []
        self.log(f"detached from PID {self.target}: {reason}")
        self.target, self.processes, self.attached_at = None, set(), None
        self.names.clear()
        self._publish()

    def _pump(self, src: Source, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batch = src.poll(0.1)
            except Exception as e:
                self._queue.put([Loss(src.name, time.monotonic_ns(), 1, f"source failed: {e}")])
                self._notices.append(f"{src.name} stopped: {e}")
                return
            if batch:
                self._queue.put(batch)

    def _add_process(self, pid: int) -> None:
        self.processes.add(pid)
        for src in self._sources:
            src.add_process(pid)

    # -- the stream ----------------------------------------------------------
    def _take(self, timeout: float) -> None:
        try:
            batch = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            self._dispatch(batch)
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                return

    def _dispatch(self, batch: list[Event]) -> None:
        for ev in batch:
            t = type(ev)
            if t is ThreadName:
                self.names[(ev.pid, ev.tid, ev.is_process)] = ev
            elif t is Instant and ev.cat == "proc":
                if ev.name == "fork":
                    self._add_process(ev.args["child"])
                elif ev.name == "exit":
                    self.names.pop((ev.pid, ev.tid, False), None)
                    if ev.args.get("process"):
                        self.processes.discard(ev.pid)
                        self.names.pop((ev.pid, ev.pid, True), None)
                        for src in self._sources:
                            src.remove_process(ev.pid)
        self.metrics.observe(batch)
        with self._lock:
            self.flight.add(batch, time.monotonic_ns())
            for tap in self._taps:
                tap(batch)

    def add_tap(self, tap: Callable[[list[Event]], None], with_flight: bool) -> list[Event]:
        """Registers `tap` for every batch from now on and returns, atomically,
        what a capture starting now must write first: the current thread and
        process names, then (if asked) the flight recorder's window."""
        with self._lock:
            now = time.monotonic_ns()
            history = self.flight.snapshot(now) if with_flight else []
            first = history[0].ts if history else now
            names = [ThreadName(n.pid, n.tid, first - 1, n.name, n.is_process)
                     for n in sorted(self.names.values(), key=lambda n: (not n.is_process, n.tid))]
            self._taps.append(tap)
        return names + history

    def remove_tap(self, tap) -> None:
        with self._lock:
            if tap in self._taps:
                self._taps.remove(tap)

    # -- state ---------------------------------------------------------------
    def _current_stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for src in self._sources:
            try:
                st = src.stats()
            except Exception:
                continue
            keyed = any(k.endswith((".events", ".lost")) for k in st)
            for k, v in st.items():
                if keyed and k in ("events", "lost"):
                    continue
                name = k if keyed else f"{src.name}.{k}"
                out[name] = out.get(name, 0) + int(v)
        return out

    def stats(self) -> dict[str, int]:
        """Per-probe '<probe>.events' / '<probe>.lost', over every attach so far."""
        out = dict(self._base)
        for k, v in self._current_stats().items():
            out[k] = out.get(k, 0) + v
        return out

    def notices(self) -> list[str]:
        out = list(self._notices)
        for src in self._sources:
            try:
                out.extend(src.notices())
            except Exception:
                pass
        return out

    def _publish(self) -> None:
        m = self.metrics
        m.set("gpuscope_up", 1.0 if self.target is not None else 0.0)
        m.clear("gpuscope_target_info")
        if self.target is not None:
            m.set("gpuscope_target_info", 1.0, (("pid", str(self.target)),
                                                 ("comm", procfs.comm(self.target))))
        m.set("gpuscope_target_processes", len(self.processes))
        for k, v in self.stats().items():
            probe, _, kind = k.rpartition(".")
            if kind == "events":
                m.set("gpuscope_probe_events_total", v, (("probe", probe),))
            elif kind == "lost":
                m.set("gpuscope_probe_events_lost_total", v, (("probe", probe),))
        m.set("gpuscope_events_total", m.events)
        f = self.flight
        m.set("gpuscope_flight_recorder_events", f.events)
        m.set("gpuscope_flight_recorder_bytes", f.bytes)
        oldest = f.oldest_ns()
        m.set("gpuscope_flight_recorder_window_seconds",
              0.0 if oldest is None else max(0.0, (time.monotonic_ns() - oldest) / 1e9))
