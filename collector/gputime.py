"""How busy the GPU was over a window, from the best figure the capture has:
NVML's per-process SM utilisation (nvmlDeviceGetProcessUtilization, where
the driver has it), else the busy-time estimate from launches and syncs
(probes/gpubusy.py) when NVML is absent or too coarse for the steps (its
utilisation is an average over about 1/6 s), else NVML's device
utilisation. Fed CounterSamples; the stall analysis and the summary ask."""

from __future__ import annotations

import re

from gpuscope.probes.events import CounterSample
from gpuscope.probes.gpubusy import TRACK as BUSY_TRACK

NVML_PERIOD_MS = 1000 / 6
_DEVICE = re.compile(r"^GPU\d+ utilization$")
_PROCESS = re.compile(r"^GPU\d+ SM utilization by process$")
ESTIMATE_LABEL = "estimate: from each launch to the sync that waited for it (upper bound)"


def merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def covered(intervals: list[tuple[int, int]], lo: int, hi: int) -> int:
    return sum(max(0, min(e, hi) - max(s, lo)) for s, e in intervals)


class GpuTime:
    def __init__(self):
        self.process: list[tuple[int, float]] = []   # (ts, SM %) of the tree's processes
        self.device: list[tuple[int, float]] = []
        self.open: dict[tuple[int, str], int] = {}   # (pid, track) -> busy since
        self.busy: dict[int, dict[str, list[tuple[int, int]]]] = {}  # pid -> stream -> intervals

    def add(self, c: CounterSample) -> None:
        t = c.track
        if t.startswith(BUSY_TRACK):
            key = (c.pid, t)
            if c.value:
                self.open.setdefault(key, c.ts)
            elif key in self.open:
                stream = t[len(BUSY_TRACK):].strip()
                self.busy.setdefault(c.pid, {}).setdefault(stream, []).append(
                    (self.open.pop(key), c.ts))
        elif c.pid and _PROCESS.match(t):
            self.process.append((c.ts, c.value))
        elif not c.pid and _DEVICE.match(t):
            self.device.append((c.ts, c.value))

    def estimate(self, pid: int | None = None) -> list[tuple[int, int]]:
        """Busy intervals, merged across streams (and processes, if pid is None)."""
        return merged([iv for p, streams in self.busy.items() if pid is None or p == pid
                       for ivs in streams.values() for iv in ivs])

    def share(self, lo: int, hi: int, step_ms: float | None = None) -> dict | None:
        """The GPU's busy share over [lo, hi] and where the figure comes from."""
        if hi <= lo:
            return None
        inside = [v for ts, v in self.process if lo <= ts <= hi]
        if inside:
            return {"share": round(sum(inside) / len(inside) / 100, 4),
                    "source": "nvml per-process SM utilization"}
        est = self.estimate()
        coarse = step_ms is not None and step_ms < NVML_PERIOD_MS
        dev = [v for ts, v in self.device if lo <= ts <= hi]
        if est and (not dev or coarse):
            return {"share": round(covered(est, lo, hi) / (hi - lo), 4), "source": ESTIMATE_LABEL}
        if dev:
            return {"share": round(sum(dev) / len(dev) / 100, 4), "source": "nvml device utilization"}
        return None

    def for_verdict(self, lo: int, hi: int, step_ms: float, findings: list[dict]) -> dict | None:
        """The share over the analysed steps, quoted in the primary finding's evidence."""
        gpu = self.share(lo, hi, step_ms)
        if gpu is not None and findings:
            findings[0]["evidence"].append(
                f"GPU busy {gpu['share']:.0%} of the analysed steps ({gpu['source']})")
        return gpu
