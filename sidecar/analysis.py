"""The always-on stall analysis: data-wait share, step time and stall cause as
Prometheus metrics, without a capture.

A pipeline consumer: a StallAnalysis is fed the events as they pass, and every
`every_s` seconds (stream time) one that has seen the last `span_s` seconds is
finished on a thread of its own and its verdict published. Each event is
analysed once (twice only when `every_s` is shorter than MIN_SPAN_S), as it
passes. The former way, re-reading the flight recorder's 60 s window every 30 s,
analysed every event twice and decoded it again each time: about 2% of one core
at 5k events/s by itself (bench/bench_sidecar.py), the whole sidecar's target.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from gpuscope.probes.events import Event

MIN_SPAN_S = 10.0   # a verdict over less would rest on a handful of steps


class LiveAnalysis:
    name = "analysis"

    def __init__(self, target: Callable[[], int | None], metrics, rate_hz: float,
                 every_s: float, log: Callable[[str], None] = lambda m: None):
        from gpuscope.collector.stalls import StallAnalysis

        self._make = lambda pid: StallAnalysis(pid, rate_hz=rate_hz)
        self.target, self.metrics, self.log = target, metrics, log
        self.every_ns = int(every_s * 1e9)
        self.span_ns = int(max(every_s, MIN_SPAN_S) * 1e9)
        self.running: list[list] = []      # [first ts, pid, analysis, CPU seconds so far]
        self.skipped = 0                   # finished while the previous result was still running
        self._done: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._results, name="gpuscope-analysis",
                                        daemon=True)
        self._thread.start()

    def feed(self, batch: list[Event]) -> None:
        pid = self.target()
        if not batch or pid is None:
            return
        now = batch[-1].ts
        running = self.running = [r for r in self.running if r[1] == pid]  # a restart: anew
        while running and now - running[0][0] >= self.span_ns:   # done before this batch
            r = running.pop(0)
            try:
                self._done.put_nowait(r)
            except queue.Full:
                self.skipped += 1
        if not running or now - running[-1][0] >= self.every_ns:
            running.append([batch[0].ts, pid, self._make(pid), 0.0])
        for r in list(running):
            t0 = time.thread_time()
            try:
                r[2].feed(batch)
            except Exception as e:  # never let the analysis take the sidecar down
                self.log(f"stall analysis failed: {type(e).__name__}: {e}")
                running.remove(r)
                continue
            r[3] += time.thread_time() - t0

    def _results(self) -> None:
        while True:
            r = self._done.get()
            if r is None:
                return
            try:
                t0 = time.thread_time()
                result = r[2].result()
                self.metrics.update_from_summary(result)
                self.metrics.set("gpuscope_analysis_seconds", r[3] + time.thread_time() - t0)
            except Exception as e:
                self.log(f"stall analysis failed: {type(e).__name__}: {e}")

    def close(self) -> None:
        self.running = []
        try:
            self._done.put(None, timeout=5)
        except queue.Full:
            pass
