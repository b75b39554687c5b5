"""Captures on request, one at a time: each is a Recording (trace, stall
analysis, summary) added as a consumer to the monitor's running pipeline (the
probes are attached once, for good), optionally preceded by the flight
recorder's last seconds. Each capture is <dir>/<id>.pftrace +
<id>.summary.json, exactly what `gpuscope attach` writes."""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field

from gpuscope.collector.recording import Recording

from .metrics import Metrics
from .monitor import Monitor

MAX_DURATION_S = 3600.0


class CaptureError(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    id: str
    duration_s: float
    include_flight_recorder: bool
    target_pid: int
    trace: str
    summary_path: str
    created_unix_s: float = field(default_factory=time.time)
    state: str = "running"
    reason: str | None = None
    error: str | None = None
    summary: dict | None = None
    finished_unix_s: float | None = None
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    stop_reason: str | None = None

    def describe(self) -> dict:
        doc = {"id": self.id, "state": self.state, "target_pid": self.target_pid,
               "duration_s": self.duration_s,
               "include_flight_recorder": self.include_flight_recorder,
               "created_unix_s": round(self.created_unix_s, 3),
               "finished_unix_s": self.finished_unix_s and round(self.finished_unix_s, 3),
               "stop_reason": self.reason, "error": self.error,
               "trace": f"/v1/captures/{self.id}/trace",
               "summary": f"/v1/captures/{self.id}/summary"}
        if self.summary is not None:
            doc["verdict"] = self.summary.get("verdict")
            doc["processes"] = self.summary.get("processes")
            doc["lost"] = self.summary.get("lost")
        else:
            doc["verdict"] = None
        return doc


class Captures:
    def __init__(self, monitor: Monitor, directory: str, metrics: Metrics, keep: int = 20,
                 max_duration_s: float = MAX_DURATION_S, analysis_rate_hz: float | None = None):
        self.monitor, self.dir, self.metrics = monitor, directory, metrics
        self.analysis_rate_hz = analysis_rate_hz   # None: no Python samples, no verdict
        self.keep, self.max_duration_s = keep, max_duration_s
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        os.makedirs(directory, exist_ok=True)

    def start(self, duration_s, include_flight: bool = False) -> Job:
        if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)):
            raise CaptureError("duration_s must be a number of seconds", 400)
        if not 0 < duration_s <= self.max_duration_s:
            raise CaptureError(f"duration_s must be > 0 and <= {self.max_duration_s:g}", 400)
        if include_flight and not self.monitor.flight.enabled:
            raise CaptureError("the flight recorder is off (--flight-seconds 0)", 400)
        with self._lock:
            running = [j for j in self.jobs.values() if j.state == "running"]
            if running:
                raise CaptureError(f"capture {running[0].id} is still running; one capture "
                                   "at a time", 409)
            pid = self.monitor.target
            if pid is None or not self.monitor.attached.is_set():
                raise CaptureError("no training process attached yet"
                                   + (f": {self.monitor.error}" if self.monitor.error else ""),
                                   503)
            cid = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
            trace = os.path.join(self.dir, f"{cid}.pftrace")
            job = Job(cid, float(duration_s), bool(include_flight), pid, trace,
                      os.path.splitext(trace)[0] + ".summary.json")
            try:
                rec = Recording(trace, pid, list(self.monitor.command), self._analysis(pid))
            except OSError as e:
                raise CaptureError(f"cannot write {trace}: {e.strerror}", 500) from None
            base = self.monitor.stats()
            t0 = time.monotonic()
            start = self.monitor.add_capture(rec, job.include_flight_recorder)
            self.jobs[cid] = job
        self.metrics.set("gpuscope_capture_running", 1)
        threading.Thread(target=self._run, args=(job, rec, base, start, t0),
                         name=f"gpuscope-capture-{cid}", daemon=True).start()
        return job

    def _analysis(self, pid: int):
        if self.analysis_rate_hz is None:
            return None
        try:
            from gpuscope.collector.stalls import StallAnalysis
        except ImportError:
            return None
        return StallAnalysis(pid, rate_hz=self.analysis_rate_hz)

    def _run(self, job: Job, rec: Recording, base, start: dict, t0: float) -> None:
        pipeline = self.monitor.pipeline
        try:
            reason = self._wait(job, start["generation"], t0)
            pipeline.remove_consumer(rec, flush=True)
            stats = self.monitor.stats() - base
            if start["replayed"]:
                stats.events["flightrec"] = start["replayed"]
            processes = set(start["processes"])
            if pipeline.generation == start["generation"]:
                processes |= pipeline.processes - start["seen"]   # forked during the capture
            notices = self.monitor.notices()
            if job.include_flight_recorder:
                dropped = self.monitor.flight.dropped
                notices.append(f"flight recorder: {start['replayed']} events from before "
                               "the request" + (f" ({dropped} dropped by its bounds, "
                                                "--flight-max-events/--flight-max-mb, before "
                                                "they left the window)" if dropped else ""))
            cap = rec.finish(reason, time.monotonic() - t0, stats, processes, notices)
            failed = pipeline.failed.pop(id(rec), None)
            if failed is not None:
                raise failed
            job.summary, job.reason, job.state = cap.summary, cap.reason, "done"
            self.metrics.update_from_summary(cap.summary)
        except Exception as e:  # a failed capture is reported, never takes the sidecar down
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            pipeline.remove_consumer(rec, flush=False)
            try:
                rec.close()
            except Exception:
                pass
            job.finished_unix_s = time.time()
            self.metrics.set("gpuscope_capture_running", 0)
            self.metrics.inc("gpuscope_captures_total", (("state", job.state),))
            self._expire()

    def _wait(self, job: Job, generation: int, t0: float) -> str:
        """Why the capture ends: its duration, a stop request, or the target exiting."""
        pipeline = self.monitor.pipeline
        while True:
            left = job.duration_s - (time.monotonic() - t0)
            if left <= 0:
                return "duration"
            if job.stop.wait(min(0.1, left)):
                return job.stop_reason or "stopped"
            if pipeline.generation != generation or pipeline.target is None:
                return "target exited"

    def get(self, cid: str) -> Job | None:
        return self.jobs.get(cid)

    def stop_all(self, reason: str) -> None:
        for job in list(self.jobs.values()):
            if job.state == "running" and job.stop_reason is None:
                job.stop_reason = reason
                job.stop.set()

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(j.state == "running"
                                                  for j in self.jobs.values()):
            time.sleep(0.05)

    def _expire(self) -> None:
        """Keeps the newest `keep` finished captures on disk."""
        with self._lock:
            done = sorted((j for j in self.jobs.values() if j.state != "running"),
                          key=lambda j: j.created_unix_s)
            for job in done[:max(0, len(done) - self.keep)]:
                for path in (job.trace, job.summary_path):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                del self.jobs[job.id]
