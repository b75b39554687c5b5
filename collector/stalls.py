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
from collections import Counter, defaultdict

from gpuscope.probes.events import CounterSample, Instant, Span, StackSample, ThreadName
from gpuscope.probes.sampler import RATE_TRACK

from .gputime import GpuTime
from .steps import COMM, COMPUTE, DATA, H2D, SYNC, build_steps, confidence

HIGH, MODERATE = 0.20, 0.05
_NON_FILES = ("pipe:", "socket:", "anon_inode:", "/dev/", "/proc/", "/sys/", "eventfd", "pipe",
              "socket", "memfd", "/memfd:")
_DATA_IO = {"read", "pread64", "readv", "preadv", "preadv2", "openat", "openat2", "statx",
            "newfstatat", "getdents64", "mmap"}
_SYNC_FNS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
             "cuStreamSynchronize", "cuCtxSynchronize"}


def _is_data_file(path: str | None) -> bool:
    return bool(path and not path.startswith(_NON_FILES))


def _in(frames, file_suffix: str, func: str | None = None) -> bool:
    return any(f.file.endswith(file_suffix) and (func is None or f.function.rsplit(".", 1)[-1] == func)
               for f in frames)


def _label(f) -> str:
    return f"{f.function} ({os.path.basename(f.file)}:{f.line})"


class StallAnalysis:
    def __init__(self, root_pid: int, cores: int | None = None, rate_hz: float = 100):
        self.root = root_pid
        self.cores = cores or len(os.sched_getaffinity(0)) or 1
        self.period = int(1e9 / rate_hz)  # refined from the samples themselves in result()
        self.requested_period = self.period
        self.slowest_period = 0           # at the lowest rate the budget set, if it lowered it
        self.main_pid = root_pid    # the process of the training loop: the target, or a rank below it
        self.main_tid: int | None = None
        self.loops: set[int] = set()  # processes running a training loop (DDP ranks)
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
                # The overhead budget lowered (or restored) the sampling rate: a sample
                # may stand for a longer time from now on.
                self.slowest_period = max(self.slowest_period, int(1e9 / ev.value))
            elif t is CounterSample:
                self.gpu.add(ev)

    def _span(self, s: Span) -> None:
        if s.cat == "io" and s.name in _DATA_IO and _is_data_file(s.args.get("path")):
            self.io_last[s.tid] = (s.start, s.end)
            if s.pid != self.main_pid or s.tid == self.main_tid:
                f = self.files[s.args["path"]]
                if "bytes" in s.args:
                    f[0] += s.args["bytes"]
                    f[1] += 1
                    self.read_lat.append(s.end - s.start)
                f[2] += s.end - s.start
        elif s.cat == "sched" and s.name == "preempted":
            self.runq_ns[s.pid] += s.end - s.start
        elif s.cat == "sched.summed":  # short waits, summed in the kernel
            self.runq_ns[s.pid] += s.args.get("preempted_ns", 0)
        elif s.cat in ("cuda", "nccl"):
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
        if not in_worker and _in(frames, "torch/utils/data/dataloader.py", "__next__"):
            # A training loop: the target's own, or (under a launcher) the first rank's.
            self.loops.add(s.pid)
            if self.main_tid is None or (s.pid == self.root and self.main_pid != self.root):
                self.main_pid, self.main_tid = s.pid, s.tid
                self.main.clear()
        if s.tid == self.main_tid:
            self._main_sample(s)
        elif in_worker and s.tid == s.pid and self.parent.get(s.pid, self.main_pid) == self.main_pid:
            self._worker_sample(s)

    def _main_sample(self, s: StackSample) -> None:
        frames = s.frames
        cuda = self._covers(self.cuda_last, s.tid, s.ts)
        if cuda and cuda[2] == "h2d":
            phase = H2D
        elif cuda and cuda[2] == "comm" or _in(frames, "torch/distributed/distributed_c10d.py"):
            phase = COMM
        elif cuda and cuda[2] == "sync":
            phase = SYNC
        elif _in(frames, "torch/utils/data/dataloader.py", "__next__"):
            phase = DATA
        else:
            phase = COMPUTE
        detail = self._data_detail(s) if phase == DATA else ""
        if phase == DATA:
            self.main_frames[tuple(_label(f) for f in frames[-6:])] += 1
        self.main.append((s.ts, phase, detail))
        self.main_last_phase, self.main_last_ts = phase, s.ts

    def _data_detail(self, s: StackSample) -> str:
        """Where the main thread's data wait goes."""
        f = s.frames
        if self._covers(self.io_last, s.tid, s.ts):
            return "main_fetch"
        if _in(f, "torch/utils/data/_utils/pin_memory.py") or _in(f, "torch/utils/data/dataloader.py", "_pin_memory_loop"):
            return "pin"
        if _in(f, "torch/utils/data/_utils/collate.py"):
            return "collate"
        if _in(f, "torch/utils/data/_utils/fetch.py") or not _in(f, "multiprocessing/") and s.state == "running" \
                and not _in(f, "threading.py") and not _in(f, "queue.py"):
            return "main_transform" if not self.workers else "main_other"
        if s.state == "running" and (_in(f, "multiprocessing/queues.py") or _in(f, "multiprocessing/connection.py")):
            return "ipc"  # unpickling a batch sent by a worker
        return "waiting_for_workers"

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
        if self.main_last_phase == DATA and s.ts - self.main_last_ts <= 3 * self.period:
            self.worker_cat[cat] += 1
            if cat in ("fetch", "transform"):
                user = [g for g in f if "torch/utils/data" not in g.file and "multiprocessing" not in g.file]
                key = tuple(_label(g) for g in (user or f)[-8:])
                self.stall_frames[key] += 1

    # -- verdict ---------------------------------------------------------------
    def stall_intervals(self) -> list[tuple[int, int]]:
        """Runs of main-thread samples waiting for data: the Verdict track."""
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

    def result(self) -> dict:
        gaps = sorted(b[0] - a[0] for a, b in zip(self.main, self.main[1:], strict=False))
        if gaps:
            self.period = max(1, gaps[len(gaps) // 2], self.slowest_period)
        steps = build_steps(self.main, self.period)
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
        findings = self._findings(steps, sampled, share, phase_ns)
        findings.sort(key=lambda f: -f["stall_ms"])
        primary = findings[0]["kind"] if findings else None
        conf = confidence(steps)
        if self.slowest_period > self.requested_period and conf == "high":
            conf = "medium"   # the budget lowered the sampling rate: fewer samples per step
        headline = self._headline(level, share, findings, steps)
        gpu = self.gpu.for_verdict(steps[0].start_ns, steps[-1].end_ns, self._median_ms(steps), findings)
        return {
            "verdict": {"input_bound": level, "data_wait_share": round(share, 4),
                        "confidence": conf, "primary": primary, "headline": headline,
                        "findings": findings,
                        "window_ns": [steps[0].start_ns, steps[-1].end_ns],
                        "step_ms_median": round(sorted(s.wall_ns for s in steps)[len(steps) // 2] / 1e6, 2),
                        "breakdown": {k: round(v / sampled, 4) for k, v in sorted(phase_ns.items())},
                        "workers": len(self.workers), "cores": self.cores,
                        "training_loop": {"pid": self.main_pid, "tid": self.main_tid},
                        "training_loops_seen": len(self.loops), "gpu_busy": gpu},
            "steps": [s.as_dict() for s in steps],
            "stall_frames": [{"stack": list(k), "samples": n} for k, n in self.stall_frames.most_common(15)],
            "main_wait_frames": [{"stack": list(k), "samples": n} for k, n in self.main_frames.most_common(5)],
            "top_files": self._top_files(),
        }

    def _no_steps_reason(self) -> str:
        if not self.first_ts:
            return "no Python samples of the training loop: is the target a PyTorch job (CPython 3.10-3.13)?"
        return ("no training steps found: the main thread never entered a DataLoader's __next__ "
                "during the capture (not a DataLoader loop, or capture too short)")

    def _top_files(self) -> list[dict]:
        top = sorted(self.files.items(), key=lambda kv: -kv[1][2])[:10]
        return [{"path": p, "bytes": b, "reads": r, "latency_ms": round(ns / 1e6, 2)} for p, (b, r, ns) in top]

    def _findings(self, steps, wall, share, phase_ns) -> list[dict]:
        out = []
        stall_ns = phase_ns[DATA]
        stall_ms = stall_ns / 1e6
        n_workers = self._concurrent_workers()
        detail: Counter[str] = Counter()  # where the analysed steps' data wait went
        for st in steps:
            detail.update(st.detail)
        dtotal = sum(detail.values()) or 1
        wcat = self.worker_cat
        wtotal = sum(wcat.values()) or 1
        frac = {k: wcat[k] / wtotal for k in ("fetch", "transform", "wait_index", "send", "other", "startup")}
        waiting = detail["waiting_for_workers"] / dtotal

        def add(kind, title, severity, weight_ms, numbers, evidence, fix):
            out.append({"kind": kind, "title": title, "severity": severity, "stall_ms": round(weight_ms, 1),
                        "numbers": numbers, "evidence": evidence, "fix": fix})

        if share < MODERATE:
            add("not_input_bound", f"Not input-bound: {share:.1%} of step time waits for data",
                "info", 0, {"data_wait_share": round(share, 4)},
                [f"{len(steps)} steps, median {self._median_ms(steps):.1f} ms, data wait {stall_ms / len(steps):.1f} ms/step"],
                "Look at compute: the input pipeline keeps up.")
        sev = "high" if share >= HIGH else "medium"
        lat = sorted(self.read_lat)
        io_numbers = {"files": len(self.files), "bytes": sum(f[0] for f in self.files.values()),
                      "reads": sum(f[1] for f in self.files.values()),
                      "read_latency_ms_mean": round(sum(lat) / len(lat) / 1e6, 2) if lat else 0,
                      "read_latency_ms_p95": round(lat[int(0.95 * (len(lat) - 1))] / 1e6, 2) if lat else 0}
        top_frames = [" <- ".join(reversed(k[-3:])) for k, _ in self.stall_frames.most_common(3)]
        if share >= MODERATE and n_workers == 0:
            main_fetch = detail["main_fetch"] / dtotal
            add("too_few_workers", "num_workers=0: the training loop loads every batch itself", sev,
                stall_ms, {"num_workers": 0, "cores": self.cores, "loading_share": round(share, 4),
                           "storage_share_of_loading": round(main_fetch, 3)},
                [f"main thread in dataset code for {stall_ms / len(steps):.1f} ms/step",
                 f"{main_fetch:.0%} of that blocked in file reads"],
                f"Set DataLoader(num_workers={max(2, min(8, self.cores))}) so loading overlaps compute.")
        if share >= MODERATE and n_workers > 0:
            ws = stall_ms * waiting
            if frac["fetch"] >= 0.35 and frac["fetch"] >= frac["transform"]:
                add("storage_fetch_stall", "Storage fetch stall: workers are blocked reading files", sev,
                    ws * max(frac["fetch"], 0.5), {**io_numbers, "worker_time_reading": round(frac["fetch"], 3)},
                    [f"workers spent {frac['fetch']:.0%} of stall time in read/open syscalls",
                     f"{io_numbers['reads']} reads, mean {io_numbers['read_latency_ms_mean']} ms, "
                     f"p95 {io_numbers['read_latency_ms_p95']} ms"],
                    "Faster or local storage (cache the dataset on local NVMe/RAM), larger sequential "
                    "files (shards), or more workers to overlap the latency.")
            if frac["transform"] >= 0.35 and frac["transform"] > frac["fetch"]:
                add("cpu_preprocessing_stall", "CPU preprocessing stall: workers are busy transforming", sev,
                    ws * max(frac["transform"], 0.5), {"worker_time_transforming": round(frac["transform"], 3),
                                                        "num_workers": n_workers, "cores": self.cores},
                    [f"workers on CPU in transforms {frac['transform']:.0%} of stall time"] + top_frames,
                    "Make the transform cheaper (decode at lower resolution, move augmentation to the GPU), "
                    "cache preprocessed samples, or add CPU cores/workers.")
            busy = frac["fetch"] + frac["transform"] + frac["send"]
            runq = sum(self.runq_ns[p] for p in self.workers) / max(1, self.last_ts - self.first_ts) / max(1, n_workers)
            if n_workers > 2 * self.cores or (runq >= 0.25 and n_workers > self.cores):
                add("too_many_workers", f"Too many workers: {n_workers} on {self.cores} cores", "medium",
                    ws * 0.5, {"num_workers": n_workers, "cores": self.cores, "worker_runqueue_share": round(runq, 3)},
                    [f"{n_workers} workers for {self.cores} cores; each waits {runq:.0%} of the time for a CPU"],
                    f"Use about {max(1, self.cores)} workers (one per core left for loading).")
            elif busy >= 0.8 and waiting >= 0.5:
                more = n_workers * 2 if frac["fetch"] >= frac["transform"] else min(2 * n_workers, max(n_workers + 1, self.cores))
                add("too_few_workers", f"Too few workers: all {n_workers} busy while the loop waits", sev,
                    ws * 0.4, {"num_workers": n_workers, "cores": self.cores, "workers_busy": round(busy, 3)},
                    [f"workers busy {busy:.0%} of stall time"], f"Try num_workers={more}.")
            ipc = (detail["ipc"] + detail["collate"] + detail["pin"]) / dtotal
            if ipc >= 0.3 or (frac["wait_index"] >= 0.5 and waiting < 0.5):
                add("ipc_collate_pin_bound", "IPC / collate / pin-memory bound: the loop is busy receiving batches",
                    sev, stall_ms * max(ipc, 0.5), {"ipc_share_of_wait": round(detail["ipc"] / dtotal, 3),
                                                    "collate_share_of_wait": round(detail["collate"] / dtotal, 3),
                                                    "pin_share_of_wait": round(detail["pin"] / dtotal, 3),
                                                    "workers_idle": round(frac["wait_index"], 3)},
                    [f"main thread unpickling/collating/pinning {ipc:.0%} of its data wait",
                     f"workers idle waiting for work {frac['wait_index']:.0%} of stall time"],
                    "Send tensors, not Python objects (torch shares tensor storage instead of pickling), "
                    "collate in the workers, keep batches compact.")
            respawn = self._respawn_stall(steps)
            if respawn is not None and respawn[0] >= 0.4:
                add("epoch_start_stall", "Epoch-start stall: workers are restarted every epoch", sev,
                    stall_ms * max(respawn[0], frac["startup"]), {"worker_starts": respawn[1], "stall_share_after_restart": round(respawn[0], 3)},
                    [f"{respawn[1]} worker processes started during the capture",
                     f"{respawn[0]:.0%} of the data wait falls in the first step after a restart",
                     f"workers spent {frac['startup']:.0%} of stall time starting up"],
                    "DataLoader(persistent_workers=True) keeps workers (and their state) across epochs.")
        h2d_share = phase_ns[H2D] / wall
        if h2d_share >= 0.10:
            add("h2d_copy_bound", f"Host-to-device copies take {h2d_share:.0%} of step time", "medium",
                phase_ns[H2D] / 1e6, {"h2d_share": round(h2d_share, 4), "h2d_bytes": self.h2d_bytes},
                ["synchronous cudaMemcpy/cuMemcpyHtoD on the training loop's thread"],
                "pin_memory=True and .to(device, non_blocking=True) so copies overlap compute.")
        return out

    def _respawn_stall(self, steps):
        starts = sorted(ts for ts in self.worker_first.values())
        if len(starts) < 2 or len(self.workers) <= self._concurrent_workers():
            return None
        # New workers after the first set: the steps they were started in.
        first = starts[0]
        late = [ts for ts in starts if ts - first > 1e9]
        if not late:
            return None
        total = sum(s.phases.get(DATA, 0) for s in steps) or 1
        hit = 0
        for s in steps:
            if any(s.start_ns - 2e9 <= ts <= s.end_ns for ts in late):
                hit += s.phases.get(DATA, 0)
        return hit / total, len(self.workers)

    def _concurrent_workers(self) -> int:
        """num_workers as observed: the most worker processes alive at once."""
        edges = []
        for pid, ts in self.worker_first.items():
            edges += [(ts, 1), (self.exited.get(pid, self.last_ts + 1), -1)]
        best = cur = 0
        for _, d in sorted(edges):
            cur += d
            best = max(best, cur)
        return best

    @staticmethod
    def _median_ms(steps) -> float:
        return sorted(s.wall_ns for s in steps)[len(steps) // 2] / 1e6

    def _headline(self, level, share, findings, steps) -> str:
        if level == "no":
            text = f"Not input-bound: {share:.1%} of step time waits for data ({len(steps)} steps)"
            if findings and findings[0]["kind"] != "not_input_bound":
                text += " — but " + findings[0]["title"][0].lower() + findings[0]["title"][1:]
            return text
        cause = findings[0]["title"] if findings else "cause not identified"
        return f"Input-bound ({level}): {share:.0%} of step time waits for data — {cause}"
