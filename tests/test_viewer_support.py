"""Helpers for the viewer tests and bench/bench_viewer.py (no tests here):
traces written by the real writer (collector.perfetto.TraceWriter through
collector.timeline.Timeline) from synthetic events, a summary.json in the
documented schema, a real Flask server on 127.0.0.1 and headless Chromium."""

from __future__ import annotations

import json
import os
import random
import threading
import time

from gpuscope.collector.liveindex import LiveIndex
from gpuscope.collector.perfetto import TraceWriter
from gpuscope.collector.timeline import Timeline
from gpuscope.probes.events import CounterSample, Frame, Instant, Span, StackSample, ThreadName

HOSTILE = "<img src=x onerror=alert(1)>"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
T0 = 10_000_000_000   # 10 s after boot, as CLOCK_MONOTONIC would be


class Synth:
    """Writes a plausible training-job trace: a main thread with Python frames
    and CUDA calls, worker processes reading files, GPU utilisation, stall
    slices on the verdict track. `events` counts what was written (a span is
    one event: one slice)."""

    def __init__(self, path: str, seed: int = 1, hostile: bool = False, flush_bytes: int = 1 << 20,
                 indexed: bool = False, offsets: bool = False):
        # indexed: written as a capture writes it, with the viewer's live index;
        # offsets: each read has its own file offset, so no two IO slices share arguments.
        self.w = TraceWriter(path, flush_bytes=flush_bytes)
        self.index = LiveIndex(path) if indexed else None
        self.offsets = offsets
        self.tl = Timeline(self.w)
        self.rng = random.Random(seed)
        self.events = 0
        self.t = T0
        self.hostile = hostile
        self.main, self.workers = 100, (101, 102)
        fn = HOSTILE if hostile else "train_step"
        self.frames = (Frame("main", "train.py", 40), Frame(fn, "train.py", 12))
        self.tl.add(ThreadName(self.main, self.main, T0, HOSTILE if hostile else "python",
                               is_process=True))
        for w in self.workers:
            self.tl.add(ThreadName(w, w, T0, "pt_data_worker", is_process=True))
            self.tl.add(Instant("proc", "fork", self.main, 0, T0, {"child": w}))
        self.verdict = self.tl.global_track("verdict")
        self.n_steps = 0

    def step(self, n_io: int = 20, gap: int = 50_000) -> None:
        """One training step: ~n_io IO reads per worker, CUDA calls, a stack
        sample, a GPU sample; every 5th step a stall slice."""
        t, rng, tl = self.t, self.rng, self.tl
        tl.add(StackSample(self.main, self.main, t, "running", True, self.frames))
        for i in range(n_io):
            for w in self.workers:
                s = t + i * gap + rng.randrange(gap // 2)
                d = rng.randrange(1_000, gap // 2)
                path = f"/data/{HOSTILE if self.hostile else 'shard'}-{i % 7}.bin"
                args = {"path": path, "fd": 7, "bytes": 4096}
                if self.offsets:
                    args["offset"] = s
                tl.add(Span("io", "read", w, w, s, s + d, args))
                self.events += 1
            s = t + i * gap + gap // 2
            tl.add(Span("cuda", "cudaLaunchKernel", self.main, self.main, s, s + 3_000,
                        {"kernel": "gemm", "ret": 0, "py": "train_step (train.py:12)"}))
            self.events += 1
        end = t + n_io * gap
        tl.add(CounterSample("GPU0 utilization", "%", t, rng.uniform(10, 95)))
        self.events += 1
        self.n_steps += 1
        if self.n_steps % 5 == 0:
            self.w.begin(self.verdict, t, "data stall", {"share": 0.4})
            self.w.end(self.verdict, t + (end - t) // 3)
            self.events += 1
        self.t = end + gap
        tl.add(StackSample(self.main, self.main, self.t - 1, "running", True, self.frames[:1]))

    def close(self) -> None:
        self.tl.close()
        self.w.close()
        if self.index is not None:
            self.index.close()


def write_trace(path: str, steps: int = 50, n_io: int = 20, **kw) -> Synth:
    s = Synth(path, **kw)
    for _ in range(steps):
        s.step(n_io)
    s.close()
    return s


def write_summary(trace_path: str, verdict: bool = True, hostile: bool = False) -> dict:
    base = trace_path[: -len(".pftrace")]
    evil = HOSTILE if hostile else ""
    doc = {"schema_version": 1, "gpuscope": "0.1.0",
           "target": {"pid": 100, "command": ["python3", f"train.py{evil}"]},
           "trace": os.path.basename(trace_path), "trace_bytes": os.path.getsize(trace_path),
           "started_unix_s": 1_795_000_000.0, "duration_s": 2.5, "attach_s": 1.0,
           "stop_reason": "duration", "processes": [100, 101, 102], "events": {"io": 10},
           "lost": {"io": 0}, "notices": []}
    if verdict:
        doc["verdict"] = {
            "input_bound": "high", "data_wait_share": 0.42, "confidence": "high",
            "headline": f"GPU waits for data 42% of each step{evil}",
            "findings": [{"kind": "storage_fetch_stall", "title": f"Workers wait on reads{evil}",
                          "severity": "high", "numbers": {"read_p99_ms": 35.5},
                          "evidence": [f"worker 101 spent 61% in read(){evil}"],
                          "fix": "Raise num_workers to 8"}]}
        doc["steps"] = [{"index": i, "start_ns": T0 + i * 10**8, "end_ns": T0 + (i + 1) * 10**8,
                         "data_wait_ns": 4e7, "compute_ns": 5e7, "sync_ns": 5e6, "comm_ns": 3e6,
                         "other_ns": 2e6} for i in range(20)]
        doc["stall_frames"] = [
            {"stack": ["main (train.py:40)", f"{HOSTILE if hostile else 'fetch'} (data.py:7)",
                       "read (io.py:3)"], "samples": 30},
            {"stack": ["main (train.py:40)", "collate (data.py:20)"], "samples": 10}]
        doc["top_files"] = [{"path": f"/data/shard-1.bin{evil}", "bytes": 2e9, "reads": 1000,
                             "latency_ms": 3.5}]
    with open(base + ".summary.json", "w") as f:
        json.dump(doc, f)
    return doc


class LiveWriter(threading.Thread):
    """Writes a trace step by step with flushes, as a running capture does."""

    def __init__(self, path: str, seconds: float, steps_per_s: float = 10.0):
        super().__init__(daemon=True)
        self.synth = Synth(path, flush_bytes=1 << 30)
        self.seconds, self.period = seconds, 1.0 / steps_per_s
        self.stop = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        while time.monotonic() < end and not self.stop.is_set():
            self.synth.step(n_io=10)
            self.synth.w.flush()
            time.sleep(self.period)
        self.synth.close()


class Server:
    """The viewer app on a real socket on 127.0.0.1 (werkzeug, threaded)."""

    def __init__(self, app):
        import logging

        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def canvas_ink(page, selector: str, x0: int = 0, y0: int = 0) -> float:
    """Share of canvas pixels (right of x0, below y0) that are not white/background."""
    return page.evaluate("""([sel, x0, y0]) => {
        const c = document.querySelector(sel), ctx = c.getContext('2d');
        const dpr = window.devicePixelRatio || 1;
        const X = Math.round(x0 * dpr), Y = Math.round(y0 * dpr);
        const w = c.width - X, h = c.height - Y;
        if (w <= 0 || h <= 0) return 0;
        const d = ctx.getImageData(X, Y, w, h).data;
        let ink = 0;
        for (let i = 0; i < d.length; i += 4) {
            const r = d[i], g = d[i + 1], b = d[i + 2];
            if (!(r > 225 && g > 225 && b > 225)) ink++;
        }
        return ink / (w * h);
    }""", [selector, x0, y0])
