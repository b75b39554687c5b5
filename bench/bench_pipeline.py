"""What the pipeline costs per event on its own thread (merge, attribution,
consumers), for a synthetic stream replayed at a fixed rate: IO spans on four
threads and their Python samples. Prints figures side by side; asserts nothing.

- merge only (a no-op consumer), with and without Python samples (attribution);
- the sidecar's consumers (metrics, flight recorder, names) through the
  pipeline, and fed directly without a merge (how the monitor did it before);
- the trace recording (Timeline + TraceWriter to a temporary file).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

from gpuscope.collector.pipeline import Pipeline, Tap
from gpuscope.collector.recording import Recording
from gpuscope.probes.events import Frame, Span, StackSample
from gpuscope.probes.source import Source
from gpuscope.sidecar.flightrec import FlightRecorder
from gpuscope.sidecar.metrics import Metrics
from gpuscope.sidecar.monitor import Names

PID = os.getpid()
FRAMES = tuple(Frame(f"f{i}", "/app/train.py", 10 + i) for i in range(12))


def stream(n: int, rate: float, samples: bool, t0: int) -> list[list]:
    """Batches of ~500 events, timestamps from t0 at `rate` events/s."""
    step = int(1e9 / rate)
    events: list = []
    for i in range(n):
        ts = t0 + i * step
        tid = PID + i % 4
        if samples and i % 10 == 0:
            events.append(StackSample(PID, tid, ts, "running", True, FRAMES))
        else:
            events.append(Span("io", "read", PID, tid, ts, ts + 20_000,
                               {"fd": 3, "bytes": 4096, "path": "/data/shard-0001"}))
    return [events[i:i + 500] for i in range(0, n, 500)]


class Replay(Source):
    """Hands out each batch once its last event is in the past, as a probe would."""

    name = "replay"

    def __init__(self, batches):
        self.batches = batches
        self.done = threading.Event()

    def poll(self, timeout_s: float):
        if not self.batches:
            self.done.set()
            time.sleep(timeout_s)
            return []
        wait = (self.batches[0][-1].ts - time.monotonic_ns()) / 1e9
        if wait > 0:
            time.sleep(min(wait, timeout_s))
            if wait > timeout_s:
                return []
        return self.batches.pop(0)


def through_pipeline(batches, consumers) -> float:
    """CPU µs per event spent on the pipeline's thread."""
    n = sum(map(len, batches))
    p = Pipeline(follow_children=False)
    for c in consumers:
        p.add_consumer(c)
    src = Replay(batches)
    p.attach(PID, [src])
    stop = threading.Event()
    p.on_tick(lambda _p: src.done.is_set() and stop.set(), every_s=0.1)
    c0 = time.thread_time()
    p.run(stop)
    p.close()
    return (time.thread_time() - c0) / n * 1e6


def direct(batches, metrics, flight, names) -> float:
    n = sum(map(len, batches))
    c0 = time.thread_time()
    for b in batches:
        metrics.observe(b)
        flight.add(b, time.monotonic_ns())
        names.feed(b)
    return (time.thread_time() - c0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=100_000, help="events per second")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    def fresh(samples=True):
        return stream(a.events, a.rate, samples, time.monotonic_ns() + 200_000_000)

    def sidecar():
        return [Tap(Metrics().observe, "metrics"), FlightRecorder(), Names()]

    for r in range(a.rounds):
        rows = {
            "merge only, no samples": through_pipeline(fresh(False), [Tap(lambda b: None)]),
            "merge only, 10% samples (attribution)": through_pipeline(fresh(), [Tap(lambda b: None)]),
            "sidecar consumers, via pipeline": through_pipeline(fresh(), sidecar()),
            "sidecar consumers, fed directly": direct(fresh(), Metrics(), FlightRecorder(), Names()),
        }
        with tempfile.TemporaryDirectory() as d:
            rec = Recording(os.path.join(d, "b.pftrace"), PID, ["bench"])
            rows["trace recording, via pipeline"] = through_pipeline(fresh(), [rec])
        print(f"round {r + 1}: {a.events} events at {a.rate:g}/s, CPU µs per event on the "
              "pipeline's thread")
        for k, v in rows.items():
            print(f"  {k:<40} {v:6.2f}")
        base = rows["sidecar consumers, fed directly"]
        print(f"  pipeline / direct (sidecar consumers)    "
              f"{rows['sidecar consumers, via pipeline'] / base:6.2f}x")


if __name__ == "__main__":
    main()
