"""Always-on aggregates of the event stream, exposed through prometheus_client.

Named in the Prometheus / dcgm-exporter style: a `gpuscope_` prefix, base
units in the name (`_bytes`, `_seconds`, `_ratio`), `_total` for counters.
Rates (IO bytes/s, launches/s) are `rate()` of the counters, as Prometheus
intends; the verdict's figures (data-wait share, median step time, phase
shares, stall cause) come from the always-on stall analysis (analysis.py:
fed as events pass, published every --analyze-every s) or from the last
capture (the verdict in its summary.json), with its timestamp.

The values live in one dict (cheap to update per batch); a Collector on a
registry of our own (not prometheus_client's global one, which would add
the sidecar's own process metrics) turns them into families at scrape time,
and prometheus_client writes the text or OpenMetrics exposition.

Cost: one pass over each batch with a type test per event, sums kept in
locals for the commonest events and added once per batch; no per-event allocation. Labels are low-cardinality (probe, call,
direction, state, gpu, phase, cause): no per-PID series except the target's info line.
"""

from __future__ import annotations

import re
import threading
import time

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder, generate_latest

from gpuscope.probes.events import CounterSample, Event, Span
from gpuscope.probes.io import IO_KINDS
from gpuscope.probes.summed import IO_SUMMED, IPC, OFFCPU_SUMMED

READS = {"read", "pread64", "readv", "preadv", "preadv2"}   # probes/io.py IO_KINDS
WRITES = {"write", "pwrite64", "writev"}
SYSCALLS = frozenset(IO_KINDS.values())
SUMMED_IO, SUMMED_SCHED = (IPC, IO_SUMMED), OFFCPU_SUMMED
LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"}
MEMCPY = re.compile(r"^(cudaMemcpy|cuMemcpy)")
SYNC = re.compile(r"(Synchronize|cuStreamWaitEvent|cudaStreamWaitEvent)")
# The finding kinds of the stall analysis (docs/summary.md, verdict.findings[].kind):
# each gets a gpuscope_stall_cause series, so a dashboard sees 0 rather than no data.
# ("straggler" comes from collector/ranks.py, which the sidecar does not run yet: 0.)
STALL_CAUSES = ("not_input_bound", "storage_fetch_stall", "cpu_preprocessing_stall",
                "too_few_workers", "too_many_workers", "ipc_collate_pin_bound",
                "h2d_copy_bound", "epoch_start_stall", "loop_producer_stall", "straggler")
GPU_COUNTER = re.compile(r"^GPU(\d+) (.+)$")
# NVML counter track name suffix -> (metric, scale to base unit)
GPU_METRICS = {"utilization": ("gpuscope_gpu_utilization_ratio", 0.01),
               "memory utilization": ("gpuscope_gpu_memory_utilization_ratio", 0.01),
               "memory used": ("gpuscope_gpu_memory_used_bytes", 1.0),
               "power": ("gpuscope_gpu_power_watts", 1.0),
               "SM clock": ("gpuscope_gpu_sm_clock_hertz", 1e6),
               "temperature": ("gpuscope_gpu_temperature_celsius", 1.0)}

HELP = {
    "gpuscope_up": ("gauge", "1 while gpuscope is attached to a training process"),
    "gpuscope_target_info": ("info", "The process gpuscope follows (PID in the pod's namespace)"),
    "gpuscope_target_processes": ("gauge", "Processes of the target tree (main, workers, ranks)"),
    "gpuscope_target_restarts_total": ("counter", "Times the target exited and a new one was found"),
    "gpuscope_io_read_bytes_total": ("counter", "Bytes read by the target's read syscalls"),
    "gpuscope_io_write_bytes_total": ("counter", "Bytes written by the target's write syscalls"),
    "gpuscope_io_calls_total": ("counter", "IO syscalls of the target, by call"),
    "gpuscope_io_seconds_total": ("counter", "Time spent in IO syscalls by the target's threads"),
    "gpuscope_offcpu_seconds_total": ("counter", "Off-CPU time of the target's threads, by state"),
    "gpuscope_cuda_kernel_launches_total": ("counter", "CUDA kernel launches"),
    "gpuscope_cuda_calls_total": ("counter", "CUDA runtime/driver calls traced"),
    "gpuscope_cuda_memcpy_bytes_total": ("counter", "Bytes copied by cudaMemcpy*, by direction"),
    "gpuscope_cuda_sync_seconds_total": ("counter", "Time the host waited in CUDA synchronisation"),
    "gpuscope_nccl_calls_total": ("counter", "NCCL collective calls"),
    "gpuscope_gpu_utilization_ratio": ("gauge", "NVML GPU utilisation (0-1), last sample"),
    "gpuscope_gpu_memory_utilization_ratio": ("gauge", "NVML memory utilisation (0-1)"),
    "gpuscope_gpu_memory_used_bytes": ("gauge", "NVML memory used"),
    "gpuscope_gpu_power_watts": ("gauge", "NVML power draw"),
    "gpuscope_gpu_sm_clock_hertz": ("gauge", "NVML SM clock"),
    "gpuscope_gpu_temperature_celsius": ("gauge", "NVML GPU temperature"),
    "gpuscope_probe_events_total": ("counter", "Events delivered by each probe"),
    "gpuscope_probe_events_lost_total": ("counter", "Events each probe could not deliver"),
    "gpuscope_events_total": ("counter", "Events seen by the always-on monitor"),
    "gpuscope_flight_recorder_events": ("gauge", "Events kept by the flight recorder"),
    "gpuscope_flight_recorder_bytes": ("gauge", "Memory held by the flight recorder (encoded "
                                       "batches)"),
    "gpuscope_flight_recorder_dropped_total": ("counter", "Events the flight recorder dropped "
                                               "before they left its window (--flight-max-events"
                                               ", --flight-max-mb)"),
    "gpuscope_flight_recorder_window_seconds": ("gauge", "Time span the flight recorder holds"),
    "gpuscope_captures_total": ("counter", "Captures finished, by state"),
    "gpuscope_capture_running": ("gauge", "1 while a capture is being written"),
    "gpuscope_data_wait_ratio": ("gauge", "Share of step time the main thread waited for data "
                                 "(last stall analysis: flight recorder window or capture)"),
    "gpuscope_step_seconds": ("gauge", "Median training step time (last stall analysis)"),
    "gpuscope_step_phase_ratio": ("gauge", "Share of sampled step time per phase "
                                  "(last stall analysis)"),
    "gpuscope_stall_cause": ("gauge", "1 for the finding that explains the most stall time "
                             "(last stall analysis), 0 for the other causes"),
    "gpuscope_last_verdict_timestamp_seconds": ("gauge", "When the verdict above was computed"),
    "gpuscope_analysis_seconds": ("gauge", "CPU time of the last always-on stall analysis"),
    "gpuscope_overhead_ratio": ("gauge", "gpuscope's own CPU (its threads and BPF programs) as a "
                                "share of the machine, over the budget's last window"),
    "gpuscope_overhead_limit_ratio": ("gauge", "The share of the machine gpuscope may take "
                                      "(--max-overhead) before it lowers its detail"),
    "gpuscope_detail_level": ("gauge", "0: full detail; higher: sampling rate or event detail "
                              "lowered to stay within the overhead limit"),
}


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.values: dict[tuple[str, tuple], float] = {}
        self.events = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- updates -------------------------------------------------------------
    def _inc(self, name: str, labels: tuple = (), by: float = 1.0) -> None:
        k = (name, labels)
        self.values[k] = self.values.get(k, 0.0) + by

    def set(self, name: str, value: float, labels: tuple = ()) -> None:
        with self._lock:
            self.values[(name, labels)] = float(value)

    def clear(self, name: str) -> None:
        with self._lock:
            for k in [k for k in self.values if k[0] == name]:
                del self.values[k]

    def inc(self, name: str, labels: tuple = (), by: float = 1.0) -> None:
        with self._lock:
            self._inc(name, labels, by)

    def observe(self, batch: list[Event]) -> None:
        """Folds one batch of events into the aggregates. The commonest events (IO
        and off-CPU slices) are summed in locals and added once per batch."""
        inc = self._inc
        calls: dict[str, float] = {}       # IO calls by syscall
        offcpu: dict[str, float] = {}      # off-CPU ns by state
        io_ns = read = written = 0
        with self._lock:
            self.events += len(batch)
            for ev in batch:
                if type(ev) is Span:
                    cat = ev.cat
                    if cat == "io":
                        name = ev.name
                        calls[name] = calls.get(name, 0) + 1
                        io_ns += ev.end - ev.start
                        ret = ev.args.get("bytes", 0)
                        if type(ret) is int and ret > 0:
                            if name in READS:
                                read += ret
                            elif name in WRITES:
                                written += ret
                    elif cat == "sched":
                        offcpu[ev.name] = offcpu.get(ev.name, 0) + ev.end - ev.start
                    elif cat in SUMMED_IO:   # calls summed per thread in the kernel
                        a = ev.args
                        for name in SYSCALLS.intersection(a):
                            calls[name] = calls.get(name, 0) + a[name]
                            n = a.get(f"{name}_bytes", 0)
                            if n and name in READS:
                                read += n
                            elif n and name in WRITES:
                                written += n
                        io_ns += a.get("syscall_ns", 0)
                    elif cat == SUMMED_SCHED:
                        a = ev.args
                        for state in ("blocked", "preempted"):
                            offcpu[state] = offcpu.get(state, 0) + a.get(f"{state}_ns", 0)
                    elif cat == "cuda":
                        self._cuda(ev)
                    elif cat == "nccl":
                        inc("gpuscope_nccl_calls_total")
                elif type(ev) is CounterSample and ev.pid == 0:
                    m = GPU_COUNTER.match(ev.track)
                    if m and m.group(2) in GPU_METRICS:
                        metric, scale = GPU_METRICS[m.group(2)]
                        self.values[(metric, (("gpu", m.group(1)),))] = ev.value * scale
            for name, n in calls.items():
                inc("gpuscope_io_calls_total", (("call", name),), n)
            for state, ns in offcpu.items():
                inc("gpuscope_offcpu_seconds_total", (("state", state),), ns / 1e9)
            if calls or io_ns:
                inc("gpuscope_io_seconds_total", (), io_ns / 1e9)
            if read:
                inc("gpuscope_io_read_bytes_total", (), read)
            if written:
                inc("gpuscope_io_write_bytes_total", (), written)

    def _cuda(self, ev: Span) -> None:
        inc, name = self._inc, ev.name
        inc("gpuscope_cuda_calls_total")
        if name in LAUNCHES:
            inc("gpuscope_cuda_kernel_launches_total")
        elif MEMCPY.match(name):
            n = ev.args.get("bytes", 0)
            if type(n) is int and n > 0:
                kind = str(ev.args.get("kind", "unknown")).lower()
                inc("gpuscope_cuda_memcpy_bytes_total", (("direction", kind),), n)
        if SYNC.search(name):
            inc("gpuscope_cuda_sync_seconds_total", (), (ev.end - ev.start) / 1e9)

    def update_from_summary(self, summary: dict) -> None:
        """The verdict's figures: step time, data-wait share, phase shares and
        stall cause. A verdict without steps leaves the last ones in place,
        and their timestamp says how old they are."""
        verdict = summary.get("verdict")
        if not isinstance(verdict, dict):
            return
        wait = find_number(verdict, ("data_wait_share", "data_wait_ratio"))
        step = find_number(verdict, ("step_time_s", "step_s", "median_step_s"))
        if step is None:
            ms = find_number(verdict, ("step_ms_median", "step_ms"))
            step = None if ms is None else ms / 1000.0
        if wait is not None:
            self.set("gpuscope_data_wait_ratio", wait / 100.0 if wait > 1.0 else wait)
        if step is not None:
            self.set("gpuscope_step_seconds", step)
        if wait is None and step is None:
            return
        breakdown = verdict.get("breakdown")
        if isinstance(breakdown, dict):
            self.clear("gpuscope_step_phase_ratio")
            for phase, share in breakdown.items():
                if isinstance(share, (int, float)):
                    self.set("gpuscope_step_phase_ratio", share, (("phase", str(phase)),))
        if "primary" in verdict:
            primary = verdict["primary"]
            self.clear("gpuscope_stall_cause")
            for cause in dict.fromkeys((*STALL_CAUSES, primary)):
                if cause is not None:
                    self.set("gpuscope_stall_cause", float(cause == primary),
                             (("cause", str(cause)),))
        self.set("gpuscope_last_verdict_timestamp_seconds", time.time())

    # -- exposition ------------------------------------------------------------
    def collect(self):
        """prometheus_client's Collector interface: one family per metric name."""
        with self._lock:
            items = sorted(self.values.items())
        by_name: dict[str, list] = {}
        for (name, labels), v in items:
            by_name.setdefault(name, []).append((labels, v))
        for name, samples in by_name.items():
            kind, help_ = HELP.get(name, ("gauge", name))
            if kind == "info":
                fam = InfoMetricFamily(name.removesuffix("_info"), help_)
                for labels, _v in samples:
                    fam.add_metric([], {k: str(val) for k, val in labels})
                yield fam
                continue
            keys = [k for k, _ in samples[0][0]]
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = cls(name, help_, labels=keys)
            for labels, v in samples:
                got = dict(labels)
                fam.add_metric([str(got.get(k, "")) for k in keys], v)
            yield fam

    def render(self) -> str:
        """The Prometheus text format (0.0.4)."""
        return generate_latest(self.registry).decode()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Body and content type for a scrape, in the format its Accept asks for
        (Prometheus asks for OpenMetrics; no Accept gets the text format)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def find_number(doc, keys: tuple[str, ...], depth: int = 0) -> float | None:
    """The first numeric value under one of `keys`, searched breadth-first."""
    if depth > 3 or not isinstance(doc, dict):
        return None
    for k in keys:
        v = doc.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    for v in doc.values():
        if isinstance(v, dict):
            r = find_number(v, keys, depth + 1)
            if r is not None:
                return r
    return None
