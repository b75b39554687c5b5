"""NVML poller: how busy each GPU really is, on the same clock as the probes.

Per GPU, every interval (default 10 Hz): utilisation (SM and memory), memory
used, power, SM clock, temperature; every second: PCIe rx/tx (NVML samples
those over ~20 ms per call, too dear for 10 Hz), the processes on each GPU
(which GPUs the target uses) and, where the driver offers it, per-process
utilisation of the target's processes. Machine-wide counters are
CounterSample(pid=0, "GPU<i> <metric>"); per-process ones carry the pid.

A metric the driver does not support on a GPU is dropped for that GPU after
its first NOT_SUPPORTED and listed in the notices. No NVML (no driver, no
pynvml) -> start() raises SourceError; the session turns it into one notice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .events import GPU, CounterSample, Event, Instant
from .source import Source, SourceError, SourceStats

SLOW_EVERY_S = 1.0


def _pynvml():
    try:
        import pynvml
    except ImportError as e:
        raise SourceError("NVML not available: pynvml is missing (pip install nvidia-ml-py); "
                          "GPU counters skipped") from e
    return pynvml


class NvmlSource(Source):
    name = "nvml"

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.nv: Any = None   # the pynvml module once started (it has no type hints)
        self.gpus: list[tuple[int, object, str]] = []   # (index, handle, name)
        self.pids: set[int] = set()
        self.used: dict[int, set[int]] = {}             # gpu index -> target pids seen on it
        self.unsupported: set[tuple[int, str]] = set()
        self.samples = 0
        self.errors = 0
        self._next = 0.0
        self._next_slow = 0.0
        self._last_proc_ts: dict[int, int] = {}         # gpu -> NVML µs timestamp

    # -- lifecycle ---------------------------------------------------------
    def start(self, pids: Iterable[int]) -> None:
        nv = _pynvml()
        try:
            nv.nvmlInit()
        except nv.NVMLError as e:
            raise SourceError(f"NVML not available: {e}; GPU counters skipped") from None
        self.nv = nv
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                name = self._try(i, "name", nv.nvmlDeviceGetName, h) or f"GPU{i}"
                self.gpus.append((i, h, name.decode() if isinstance(name, bytes) else name))
        except nv.NVMLError as e:
            self.stop()
            raise SourceError(f"NVML not available: {e}; GPU counters skipped") from None
        self.pids = set(pids)

    def add_process(self, pid: int) -> None:
        self.pids.add(pid)

    def remove_process(self, pid: int) -> None:
        self.pids.discard(pid)

    def stop(self) -> None:
        if self.nv is not None:
            nv, self.nv = self.nv, None
            try:
                nv.nvmlShutdown()
            except nv.NVMLError:
                pass

    def stats(self) -> SourceStats:
        return SourceStats(events={self.name: self.samples}, lost={self.name: self.errors})

    def notices(self) -> list[str]:
        out = []
        names = {i: n for i, _h, n in self.gpus}
        for gpu in sorted(self.used):
            pids = ", ".join(str(p) for p in sorted(self.used[gpu]))
            out.append(f"nvml: the target uses GPU{gpu} ({names.get(gpu, '?')}): pid {pids}")
        if self.nv is not None or self.gpus:
            if not self.used:
                out.append(f"nvml: {len(self.gpus)} GPU(s) polled; none lists a target process")
        missing: dict[str, list[int]] = {}
        for gpu, metric in sorted(self.unsupported):
            missing.setdefault(metric, []).append(gpu)
        for metric, gpus in missing.items():
            out.append(f"nvml: {metric} not supported on GPU " + ", ".join(map(str, gpus)))
        return out

    # -- polling -----------------------------------------------------------
    def poll(self, timeout_s: float) -> list[Event]:
        now = time.monotonic()
        if now < self._next:
            time.sleep(min(timeout_s, self._next - now))
            if time.monotonic() < self._next:
                return []
        self._next = max(self._next + self.interval_s, time.monotonic())
        out: list[Event] = []
        slow = time.monotonic() >= self._next_slow
        if slow:
            self._next_slow = time.monotonic() + SLOW_EVERY_S
        for i, h, _name in self.gpus:
            self._sample(i, h, slow, out)
        self.samples += len(out)
        return out

    def _try(self, gpu: int, metric: str, fn, *args):
        if (gpu, metric) in self.unsupported:
            return None
        nv = self.nv or _pynvml()
        try:
            return fn(*args)
        except nv.NVMLError as e:
            if isinstance(e, (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound,
                              nv.NVMLError_NoPermission)):
                self.unsupported.add((gpu, metric))
            else:
                self.errors += 1
            return None

    def _sample(self, i: int, h, slow: bool, out: list[Event]) -> None:
        nv, t = self.nv, self._try
        ts = time.monotonic_ns()

        def add(metric: str, unit: str, value, pid: int = 0) -> None:
            if value is not None:
                out.append(CounterSample(f"GPU{i} {metric}", unit, ts, float(value), pid))

        u = t(i, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
        if u is not None:
            add("utilization", "%", u.gpu)
            add("memory utilization", "%", u.memory)
        m = t(i, "memory", nv.nvmlDeviceGetMemoryInfo, h)
        if m is not None:
            add("memory used", "B", m.used)
        p = t(i, "power", nv.nvmlDeviceGetPowerUsage, h)
        add("power", "W", None if p is None else p / 1000.0)
        add("SM clock", "MHz", t(i, "SM clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM))
        add("temperature", "°C", t(i, "temperature", nv.nvmlDeviceGetTemperature, h,
                                   nv.NVML_TEMPERATURE_GPU))
        if not slow:
            return
        for metric, counter in (("PCIe rx", nv.NVML_PCIE_UTIL_RX_BYTES),
                                ("PCIe tx", nv.NVML_PCIE_UTIL_TX_BYTES)):
            kb = t(i, metric, nv.nvmlDeviceGetPcieThroughput, h, counter)
            add(metric, "B/s", None if kb is None else kb * 1024)
        procs = t(i, "process list", nv.nvmlDeviceGetComputeRunningProcesses, h) or []
        for proc in procs:
            if proc.pid in self.pids:
                if proc.pid not in self.used.setdefault(i, set()):
                    self.used[i].add(proc.pid)
                    out.append(Instant(GPU, "uses GPU", proc.pid, 0, ts, {"gpu": i}))
                if proc.usedGpuMemory is not None:
                    add("memory used by process", "B", proc.usedGpuMemory, proc.pid)
        since = self._last_proc_ts.get(i, 0)
        samples = t(i, "process utilization", nv.nvmlDeviceGetProcessUtilization, h, since) or []
        latest: dict[int, Any] = {}   # pid -> NVML's ctypes process sample
        for s in samples:
            self._last_proc_ts[i] = max(self._last_proc_ts.get(i, 0), s.timeStamp)
            if s.pid in self.pids and (s.pid not in latest or s.timeStamp > latest[s.pid].timeStamp):
                latest[s.pid] = s
        for pid, s in latest.items():
            add("SM utilization by process", "%", s.smUtil, pid)
            add("memory utilization by process", "%", s.memUtil, pid)
