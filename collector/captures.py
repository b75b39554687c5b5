"""Captures on request: one at a time, each a normal Session whose only source
is a tap on the always-on monitor (the probes are attached once, for good),
optionally preceded by the flight recorder's last seconds. Each capture is
<dir>/<id>.pftrace + <id>.summary.json, exactly what `gpuscope attach` writes."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from gpuscope.probes.events import Event, Loss
from gpuscope.probes.source import Source

from .metrics import Metrics
from .monitor import Monitor

MAX_DURATION_S = 3600.0
TAP_MAX_EVENTS = 2_000_000   # a capture that falls this far behind loses events, counted


class CaptureError(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class TapSource(Source):
    """The monitor's stream from now on (and its flight recorder before), as a Source."""

    name = "ebpf"

    def __init__(self, monitor: Monitor, with_flight: bool):
        self.monitor, self.with_flight = monitor, with_flight
        self._pending: deque[list[Event]] = deque()
        self._n = 0
        self._cv = threading.Condition()
        self.lost = 0
        self.replayed = 0
        self._base: dict[str, int] = {}
        self._end: dict[str, int] | None = None

    def start(self, pids) -> None:
        self._base = self.monitor.stats()
        first = self.monitor.add_tap(self._put, self.with_flight)
        self.replayed = sum(1 for ev in first if type(ev).__name__ != "ThreadName")
        if first:
            with self._cv:
                self._pending.appendleft(first)
                self._n += len(first)

    def _put(self, batch: list[Event]) -> None:
        with self._cv:
            if self._n + len(batch) > TAP_MAX_EVENTS:
                self.lost += len(batch)
                batch = [Loss("capture", batch[-1].ts, len(batch), "capture fell behind")]
            self._pending.append(batch)
            self._n += len(batch)
            self._cv.notify()

    def poll(self, timeout_s: float) -> list[Event]:
        with self._cv:
            if not self._pending:
                self._cv.wait(timeout_s)
            out: list[Event] = []
            while self._pending:
                out.extend(self._pending.popleft())
            self._n = 0
            return out

    def drain(self) -> list[Event]:
        return self.poll(0)

    def stop(self) -> None:
        if self._end is None:
            self.monitor.remove_tap(self._put)
            self._end = self.monitor.stats()

    def stats(self) -> dict[str, int]:
        end = self._end if self._end is not None else self.monitor.stats()
        out = {k: v - self._base.get(k, 0) for k, v in end.items()}
        if self.lost:
            out["capture.lost"] = self.lost
        if self.replayed:
            out["flightrec.events"] = self.replayed
        return out

    def notices(self) -> list[str]:
        out = self.monitor.notices()
        if self.with_flight:
            out.append(f"flight recorder: {self.replayed} events from before the request")
        return out


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
    session: object | None = None

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
        from .session import Session

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
            job.session = Session(pid, [TapSource(self.monitor, job.include_flight_recorder)],
                                  trace, duration=job.duration_s, subprocesses=True,
                                  analysis=self._analysis(pid))
            self.jobs[cid] = job
        self.metrics.set("gpuscope_capture_running", 1)
        threading.Thread(target=self._run, args=(job,), name=f"gpuscope-capture-{cid}",
                         daemon=True).start()
        return job

    def _analysis(self, pid: int):
        if self.analysis_rate_hz is None:
            return None
        try:
            from .stalls import StallAnalysis
        except ImportError:
            return None
        return StallAnalysis(pid, rate_hz=self.analysis_rate_hz)

    def _run(self, job: Job) -> None:
        try:
            cap = job.session.run()
            job.summary, job.reason, job.state = cap.summary, cap.reason, "done"
            self.metrics.update_from_summary(cap.summary)
        except Exception as e:  # a failed capture is reported, never takes the sidecar down
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            job.finished_unix_s = time.time()
            job.session = None
            self.metrics.set("gpuscope_capture_running", 0)
            self.metrics.inc("gpuscope_captures_total", (("state", job.state),))
            self._expire()

    def get(self, cid: str) -> Job | None:
        return self.jobs.get(cid)

    def stop_all(self, reason: str) -> None:
        for job in list(self.jobs.values()):
            s = job.session
            if s is not None:
                s.request_stop(reason)

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
