"""The data-loading verdict: is the GPU starved by the input pipeline, how
much, why, and what to try — with the numbers that show it.

Fed the merged, time-ordered event stream (a session tap, or a replayed
trace), it classifies every sample of the training loop's thread (waiting
for data, computing, copying, syncing) and of each DataLoader worker
(reading storage, transforming, waiting for work, sending), then applies
rules whose thresholds follow ../shared/STALLS.md (TF input-pipeline
analyzer: >= 20% high, >= 5% moderate; H2D > 10%; Lightning / SageMaker on
worker counts)."""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict

from gpuscope.probes.events import CounterSample, Instant, Span, StackSample, ThreadName
from gpuscope.probes.sampler import RATE_TRACK

from . import mainphase
from .findings import HIGH, MODERATE, median_ms
from .findings import findings as find
from .findings import headline as headline_of
from .gputime import GpuTime
from .mainphase import BACKWARD_WAIT
from .mainphase import in_frames as _in
from .mainphase import label as _label
from .sizing import sizing
from .steps import (
    COMM,
    COMPUTE,
    DATA,
    Markers,
    build_marked_steps,
    build_steps,
    confidence,
)

_NON_FILES = ("pipe:", "socket:", "anon_inode:", "/dev/", "/proc/", "/sys/", "eventfd", "pipe",
              "socket", "memfd", "/memfd:")
_DATA_IO = {"read", "pread64", "readv", "preadv", "preadv2", "openat", "openat2", "statx",
            "newfstatat", "getdents64", "mmap"}
# A thread of torch.distributed's backends (gloo's pt_gloo_runloop, ...): a wait it
# ends is a wait for a collective (the exact interval, from the sched probe).
_COMM_WAKER = re.compile(r"gloo|nccl|c10d", re.IGNORECASE)
_SYNC_FNS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
             "cuStreamSynchronize", "cuCtxSynchronize"}


def _is_data_file(path: str | None) -> bool:
    return bool(path and not path.startswith(_NON_FILES))


class StallAnalysis:
    def __init__(self, root_pid: int, cores: int | None = None, rate_hz: float | None = None):
        """rate_hz: the sampler's requested rate; None (a saved trace) takes it
        from the sampler's first rate sample, written at its start (else 100)."""
        self.root = root_pid
        self.cores = cores or len(os.sched_getaffinity(0)) or 1
        self.period = int(1e9 / (rate_hz or 100))  # refined from the samples themselves in result()
        self.requested_period = self.period
        self.slowest_period = 0           # at the lowest rate the budget set, if it lowered it
        self.rate_seen = rate_hz is not None  # else the first rate sample is the requested rate
        self.main_pid = root_pid    # the process of the training loop: the target, or a rank below it
        self.main_tid: int | None = None
        self.loops: set[int] = set()  # processes running a training loop (DDP ranks)
        self.ddp = False   # the loop is a DDP rank's (its stacks, or ranks.py from its environ)
        self.parent: dict[int, int] = {}
        self.main: list[tuple[int, str, str]] = []     # (ts, phase, data-wait detail)
        self.main_last_phase = COMPUTE
        self.main_last_ts = 0
        self.workers: set[int] = set()
        self.worker_first: dict[int, int] = {}          # pid -> first sample ts
        self.worker_ready: set[int] = set()
        self.worker_cat: Counter = Counter()            # during stalls: category -> samples
        self.stall_frames: Counter = Counter()          # worker stacks during stalls
        self.main_frames: Counter = Counter()           # main stacks while waiting for data
        self.io_last: dict[int, tuple[int, int]] = {}   # tid -> last data-IO (start, end)
        self.cuda_last: dict[int, tuple[int, int, str]] = {}
        self.files: dict[str, list] = defaultdict(lambda: [0, 0, 0])  # path -> bytes, reads, ns
        self.read_lat: list[int] = []
        self.runq_ns: Counter = Counter()               # pid -> preempted ns
        self.exited: dict[int, int] = {}                # pid -> exit ts
        self.names: dict[int, str] = {}
        self.h2d_bytes = 0
        self.first_ts = self.last_ts = 0
        self.markers: dict[int, Markers] = defaultdict(Markers)  # tid -> PyTorch's step markers
        self.loop_frames: Counter = Counter()            # (file, function) calling into torch
        self.loop_frame: tuple[str, str] | None = None
        self.producers: Counter = Counter()             # the loop's own batch producer -> samples
        self.worker_all: Counter = Counter()            # every worker sample: category -> samples
        self.worker_last: dict[int, int] = {}           # pid -> last sample ts
        self.cuda_calls = 0
        self.comm_waits: dict[int, list[tuple[int, int]]] = defaultdict(list)  # tid -> waits a collective ended
        self.dataloader_seen = False                    # the loop takes batches from a DataLoader
        self.main_io = [0, 0, 0, 0]                     # the loop thread's data-file bytes, calls, ns, mmaps
        self.gpu = GpuTime()   # how busy the GPU was: NVML, or the launch-to-sync estimate

    # -- feeding -------------------------------------------------------------
    def feed(self, batch) -> None:
        for ev in batch:
            t = type(ev)
            if t is StackSample:
                self._sample(ev)
            elif t is Span:
                self._span(ev)
            elif t is Instant and ev.name == "exit" and ev.args.get("process"):
                self.exited[ev.pid] = ev.ts
            elif t is Instant and ev.name == "fork":
                self.parent[ev.args["child"]] = ev.pid
            elif t is ThreadName:
                self.names[ev.tid] = ev.name
            elif t is CounterSample and ev.track == RATE_TRACK and ev.value > 0:
                if not self.rate_seen:   # the sampler's start: the requested rate
                    self.rate_seen = True
                    self.period = self.requested_period = int(1e9 / ev.value)
                # The sampler's start, or the overhead budget lowering (or restoring)
                # the rate: a sample may stand for this long from now on. Taken the same
                # way whether the rate was given (live) or not (a saved trace), so that
                # `gpuscope report` finds the live period.
                self.slowest_period = max(self.slowest_period, int(1e9 / ev.value))
            elif t is CounterSample:
                self.gpu.add(ev)

    def _span(self, s: Span) -> None:
        if s.cat == "torch":
            if self.markers[s.tid].add(s.name, s.start, s.end) and s.name != "backward":
                self._loop_seen(s.pid, s.tid)
        elif s.cat == "io" and s.name in _DATA_IO and _is_data_file(s.args.get("path")):
            self.io_last[s.tid] = (s.start, s.end)
            if s.tid == self.main_tid:
                self.main_io[0] += s.args.get("bytes", 0)
                self.main_io[1] += 1
                self.main_io[2] += s.end - s.start
                self.main_io[3] += s.name == "mmap"
            if s.pid != self.main_pid or s.tid == self.main_tid:
                f = self.files[s.args["path"]]
                if "bytes" in s.args:
                    f[0] += s.args["bytes"]
                    f[1] += 1
                    self.read_lat.append(s.end - s.start)
                f[2] += s.end - s.start
        elif s.cat == "sched" and s.name == "preempted":
            self.runq_ns[s.pid] += s.end - s.start
        elif s.cat == "sched" and s.name == "blocked" and _COMM_WAKER.search(s.args.get("waker", "")):
            self.comm_waits[s.tid].append((s.start, s.end))
        elif s.cat == "sched.summed":  # short waits, summed in the kernel
            self.runq_ns[s.pid] += s.args.get("preempted_ns", 0)
        elif s.cat in ("cuda", "nccl"):
            self.cuda_calls += 1
            kind = ("comm" if s.cat == "nccl" else "sync" if s.name in _SYNC_FNS
                    else "h2d" if s.args.get("kind") == "HtoD" or "HtoD" in s.name else "")
            if kind:
                self.cuda_last[s.tid] = (s.start, s.end, kind)
                if kind == "h2d":
                    self.h2d_bytes += s.args.get("bytes", 0)

    def _covers(self, table: dict, tid: int, ts: int):
        v = table.get(tid)
        return v if v and v[0] <= ts <= v[1] else None

    def _sample(self, s: StackSample) -> None:
        frames = s.frames
        if not self.first_ts:
            self.first_ts = s.ts
        self.last_ts = s.ts
        in_worker = _in(frames, "torch/utils/data/_utils/worker.py", "_worker_loop")
        if not in_worker and mainphase.loop_evidence(frames):
            self._loop_seen(s.pid, s.tid)
            if s.tid == self.main_tid and not mainphase.in_dataloader_next(frames):
                key = mainphase.loop_frame(frames)
                if key:
                    self.loop_frames[key] += 1
                    if self.loop_frames[key] >= 3:
                        self.loop_frame = self.loop_frames.most_common(1)[0][0]
        if s.tid == self.main_tid:
            self._main_sample(s)
        elif in_worker and s.tid == s.pid and self.parent.get(s.pid, self.main_pid) == self.main_pid:
            self._worker_sample(s)

    def _loop_seen(self, pid: int, tid: int) -> None:
        """A training loop: the target's own, or (under a launcher) the first rank's."""
        self.loops.add(pid)
        if self.main_tid is None or (pid == self.root and self.main_pid != self.root):
            self.main_pid, self.main_tid = pid, tid
            self.main.clear()
            self.ddp = False
            self.loop_frames.clear()
            self.loop_frame = None

    def _main_sample(self, s: StackSample) -> None:
        frames = s.frames
        cuda = self._covers(self.cuda_last, s.tid, s.ts)
        io = bool(self._covers(self.io_last, s.tid, s.ts))
        phase, detail, producer = mainphase.classify(frames, s.state, cuda, io, bool(self.workers),
                                                     self.loop_frame)
        if not self.ddp and phase in (COMPUTE, COMM) and mainphase.in_ddp(frames):
            self.ddp = True
        if phase == DATA:
            self.main_frames[tuple(_label(f) for f in frames[-6:])] += 1
            if producer:
                self.producers[producer] += 1
            else:
                self.dataloader_seen = True
        self.main.append((s.ts, phase, detail))
        self.main_last_phase, self.main_last_ts = phase, s.ts

    def _worker_sample(self, s: StackSample) -> None:
        self.workers.add(s.pid)
        self.worker_first.setdefault(s.pid, s.ts)
        f = s.frames
        if s.pid not in self.worker_ready and (_in(f, "multiprocessing/queues.py", "get")
                                              or _in(f, "torch/utils/data/_utils/fetch.py")):
            self.worker_ready.add(s.pid)  # past its start-up (worker_init_fn, imports)
        if s.pid not in self.worker_ready:
            cat = "startup"
        elif self._covers(self.io_last, s.tid, s.ts):
            cat = "fetch"
        elif _in(f, "multiprocessing/queues.py", "get") or (s.state == "idle" and len(f) <= 4):
            cat = "wait_index"
        elif _in(f, "multiprocessing/queues.py", "put") or _in(f, "multiprocessing/reduction.py"):
            cat = "send"
        elif s.state == "running":
            cat = "transform"
        else:
            cat = "other"
        self.worker_all[cat] += 1
        self.worker_last[s.pid] = s.ts
        if self.main_last_phase == DATA and s.ts - self.main_last_ts <= 3 * self.period:
            self.worker_cat[cat] += 1
            if cat in ("fetch", "transform"):
                user = [g for g in f if "torch/utils/data" not in g.file and "multiprocessing" not in g.file]
                key = tuple(_label(g) for g in (user or f)[-8:])
                self.stall_frames[key] += 1

    # -- verdict ---------------------------------------------------------------
    def stall_intervals(self) -> list[tuple[int, int]]:
        """The Verdict track: the loop's DataLoader __next__ regions where they
        were seen (exact), else runs of main-thread samples waiting for data."""
        m = self.markers.get(self.main_tid) if self.main_tid is not None else None
        if m and m.batches:
            return sorted(m.batches)
        out: list[tuple[int, int]] = []
        start: int | None = None
        for (ts, phase, _), nxt in zip(self.main, self.main[1:] + [(self.last_ts, "", "")], strict=False):
            if phase == DATA:
                if start is None:
                    start = ts
                if nxt[1] != DATA:
                    out.append((start, min(nxt[0], ts + 3 * self.period)))
                    start = None
        return out

    def _phases(self) -> list[tuple[int, str, str]]:
        """The main thread's samples with the autograd engine's waits resolved:
        in a CPU DDP rank the all-reduce (COMM), else the device's backward
        thread (COMPUTE, as gpuscope always counted them). With CUDA calls
        seen, the wait is the GPU's backward: NCCL's own spans give COMM there."""
        wait = COMM if self.ddp and not self.cuda_calls else COMPUTE
        return [(ts, wait, d) if ph == BACKWARD_WAIT else (ts, ph, d) for ts, ph, d in self.main]

    def result(self) -> dict:
        main = self._phases()
        gaps = sorted(b[0] - a[0] for a, b in zip(main, main[1:], strict=False))
        if gaps:
            self.period = max(1, gaps[len(gaps) // 2], self.slowest_period)
        m = self.markers.get(self.main_tid) if self.main_tid is not None else None
        marked = m.boundaries() if m else None
        regions = m.batches if m else []
        if marked:
            steps = build_marked_steps(marked[0], main, self.period, regions,
                                       m.optimizer + m.backward if m else [],
                                       self.comm_waits.get(self.main_tid) if self.main_tid is not None else None)
        else:
            steps = build_steps(main, self.period)
            if len(steps) < 3:  # a loop without a DataLoader whose producer was not seen
                steps = build_steps(main, self.period, COMPUTE) if not steps else steps
        wall = sum(s.wall_ns for s in steps)
        phase_ns: Counter[str] = Counter()
        for s in steps:
            phase_ns.update(s.phases)
        if not steps or not wall:
            return {"verdict": {"input_bound": "unknown", "data_wait_share": None,
                                "confidence": "low", "primary": None,
                                "headline": self._no_steps_reason(), "findings": []},
                    "steps": [], "stall_frames": [], "top_files": self._top_files()}
        # Shares of the sampled time: a gap in sampling (a starved sampler,
        # a torn stack) is left out rather than given to either side.
        sampled = sum(phase_ns.values()) or 1
        share = phase_ns[DATA] / sampled
        level = "high" if share >= HIGH else "moderate" if share >= MODERATE else "no"
        findings = find(self, steps, sampled, share, phase_ns)
        findings.sort(key=lambda f: -f["stall_ms"])
        primary = findings[0]["kind"] if findings else None
        data_exact = bool(marked and regions) and not self.producers
        conf, basis = confidence(steps, self.period, exact=bool(marked), data_exact=data_exact,
                                 main_samples=sum(st.samples for st in steps))
        if self.slowest_period > self.requested_period and conf == "high" and not data_exact:
            conf = "medium"   # the budget lowered the sampling rate: fewer samples per step
            basis += f"; sampling rate lowered to {1e9 / self.slowest_period:.0f} Hz by the budget"
        headline = headline_of(level, share, findings, steps)
        gpu = self.gpu.for_verdict(steps[0].start_ns, steps[-1].end_ns, median_ms(steps), findings)
        return {
            "verdict": {"input_bound": level, "data_wait_share": round(share, 4),
                        "confidence": conf, "confidence_basis": basis,
                        "steps_from": marked[1] if marked else "sampled stacks",
                        "primary": primary, "headline": headline,
                        "findings": findings,
                        "window_ns": [steps[0].start_ns, steps[-1].end_ns],
                        "step_ms_median": round(sorted(s.wall_ns for s in steps)[len(steps) // 2] / 1e6, 2),
                        "breakdown": {k: round(v / sampled, 4) for k, v in sorted(phase_ns.items())},
                        "workers": len(self.workers), "cores": self.cores,
                        "training_loop": {"pid": self.main_pid, "tid": self.main_tid},
                        "training_loops_seen": len(self.loops),
                        "data_producers": mainphase.by_function(self.producers),
                        "sizing": sizing(self, steps, share), "gpu_busy": gpu},
            "steps": [s.as_dict() for s in steps],
            "stall_frames": [{"stack": list(k), "samples": n} for k, n in self.stall_frames.most_common(15)],
            "main_wait_frames": [{"stack": list(k), "samples": n} for k, n in self.main_frames.most_common(5)],
            "top_files": self._top_files(),
        }

    def _no_steps_reason(self) -> str:
        if not self.first_ts:
            return "no Python samples of the training loop: is the target a PyTorch job (CPython 3.10-3.13)?"
        return ("no training steps found: no optimizer step, backward pass or DataLoader batch "
                "was seen on any thread during the capture (not a training loop, or capture too short)")

    def _top_files(self) -> list[dict]:
        top = sorted(self.files.items(), key=lambda kv: -kv[1][2])[:10]
        return [{"path": p, "bytes": b, "reads": r, "latency_ms": round(ns / 1e6, 2)} for p, (b, r, ns) in top]
