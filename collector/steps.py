"""The step model: where each training step starts and ends, and what the
loop's thread did in it.

Exact when PyTorch's own markers are seen (probes/torchops: every optimizer
step, DataLoader batch and backward pass): steps run from one marker to the
next, and the DataLoader's __next__ regions are the data wait itself.
Otherwise sampled: a step starts each time the loop's samples enter the
data wait (or the optimizer step), which misses steps shorter than a few
sampling periods. Either way the rest of the step is split by what the main
thread was doing in each sample."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# What a main-thread sample was doing.
DATA, H2D, SYNC, COMM, COMPUTE = "data_wait", "h2d", "sync", "comm", "compute"
PHASES = (DATA, COMPUTE, SYNC, COMM, H2D)


@dataclass
class Step:
    index: int
    start_ns: int
    end_ns: int
    phases: dict[str, int] = field(default_factory=dict)  # phase -> ns
    detail: dict[str, int] = field(default_factory=dict)  # where data-wait time went -> ns
    samples: int = 0

    @property
    def wall_ns(self) -> int:
        return self.end_ns - self.start_ns

    def as_dict(self) -> dict:
        wall = self.wall_ns
        known = sum(self.phases.values())
        d = {"index": self.index, "start_ns": self.start_ns, "end_ns": self.end_ns,
             "wall_ns": wall, "samples": self.samples}
        for p in PHASES:
            d[f"{p}_ns"] = self.phases.get(p, 0)
        d["other_ns"] = max(0, wall - known)
        return d


def build_steps(samples: list[tuple[int, str, str]], period_ns: int,
                starts_at: str = DATA) -> list[Step]:
    """samples: (ts, phase, detail) of the main thread in time order. Each sample
    stands for the time until the next one (capped at 5 periods, so a gap in
    sampling is not claimed by one phase). A step starts where a run of
    `starts_at` samples does. Partial steps at the edges are dropped, and the
    first complete step too (warm-up)."""
    starts = [i for i in range(1, len(samples))
              if samples[i][1] == starts_at and samples[i - 1][1] != starts_at]
    steps = []
    for n, (a, b) in enumerate(zip(starts, starts[1:], strict=False)):
        s = Step(n, samples[a][0], samples[b][0])
        for i in range(a, b):
            ts, phase, detail = samples[i]
            dt = min(samples[i + 1][0] - ts, 5 * period_ns)
            s.phases[phase] = s.phases.get(phase, 0) + dt
            if detail:
                s.detail[detail] = s.detail.get(detail, 0) + dt
            s.samples += 1
        steps.append(s)
    steps = steps[1:]
    for i, s in enumerate(steps):
        s.index = i
    return steps


@dataclass
class Markers:
    """PyTorch's step markers seen on one thread (probes/torchops spans)."""

    optimizer: list[int] = field(default_factory=list)             # Optimizer.step starts
    batches: list[tuple[int, int]] = field(default_factory=list)   # DataLoader __next__ regions
    backward: list[int] = field(default_factory=list)              # backward pass starts

    def add(self, name: str, start: int, end: int) -> bool:
        """Records a marker; False when the span is not one."""
        if name.startswith("Optimizer.step#"):
            self.optimizer.append(start)
        elif name.startswith("enumerate(DataLoader)#"):
            self.batches.append((start, end))
        elif name == "backward":
            self.backward.append(start)
        else:
            return False
        return True

    def boundaries(self) -> tuple[list[int], str] | None:
        """Step starts and what they are. One step per update: between two
        optimizer steps (else backward passes), the step starts at the first
        DataLoader batch asked for after the previous update (a __next__ that
        only ends an epoch then starts the next epoch's first step, and
        accumulated micro-batches start none). Without a DataLoader: the
        updates themselves."""
        anchors, what, one = sorted(self.optimizer), "optimizer steps", "optimizer step"
        if len(anchors) < 3:
            anchors, what, one = sorted(self.backward), "backward passes", "backward pass"
        batches = sorted(a for a, _ in self.batches)
        if len(anchors) < 3:
            return (batches, "DataLoader batches") if len(batches) >= 3 else None
        if len(batches) < 3:
            return anchors, what
        out, j = [], 0
        for a in anchors:
            first = None
            while j < len(batches) and batches[j] < a:
                first = batches[j] if first is None else first
                j += 1
            if first is not None:
                out.append(first)
        return (out, f"DataLoader batches, one per {one}") if len(out) >= 3 else (anchors, what)


def build_marked_steps(bounds: list[int], samples: list[tuple[int, str, str]], period_ns: int,
                       regions: list[tuple[int, int]], work: list[int] | None = None,
                       comm: list[tuple[int, int]] | None = None) -> list[Step]:
    """Steps between exact boundaries. Data wait: the DataLoader __next__
    regions (exact); an epoch's turn, from the __next__ that ends it to the
    next epoch's first one with no training work between (work: optimizer
    step and backward starts) and no sample there outside DataLoader code
    (iter() starting the next epoch: forking workers, when the sampler is
    blind to the loop); plus sampled data wait elsewhere (a loop's own batch
    producer). Communication: the loop thread's waits that a collective's
    thread ended (comm, exact), plus sampled. Copies, syncs: sampled, each sample's time
    spread over the steps it spans (a 10 ms sample over five 2 ms steps).
    Compute: the rest. The first complete step is dropped (warm-up)."""
    steps = [Step(n, a, b) for n, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))]
    if not steps:
        return []
    starts = [s.start_ns for s in steps]
    regions = sorted(regions)
    rstarts = [a for a, _ in regions]

    def spread(a: int, b: int, phase: str | None, detail: str) -> None:
        i = max(0, bisect.bisect_right(starts, a) - 1)
        while i < len(steps) and steps[i].start_ns < b:
            s = steps[i]
            ov = min(b, s.end_ns) - max(a, s.start_ns)
            if ov > 0:
                if phase:
                    s.phases[phase] = s.phases.get(phase, 0) + ov
                if detail:
                    s.detail[detail] = s.detail.get(detail, 0) + ov
            i += 1

    for a, b in regions:
        spread(a, b, DATA, "")
    comm = sorted(comm or [])
    for a, b in comm:
        spread(a, b, COMM, "")
    cstarts = [a for a, _ in comm]
    work = sorted(work or [])
    sts = [t for t, _, _ in samples]
    turns: list[tuple[int, int]] = []
    for (_, b), (a, _) in zip(regions, regions[1:], strict=False):
        if a <= b or bisect.bisect_left(work, b) != bisect.bisect_left(work, a):
            continue
        i, j = bisect.bisect_left(sts, b), bisect.bisect_left(sts, a)
        if all(samples[k][1] == DATA for k in range(i, j)):
            spread(b, a, DATA, "epoch_start")
            turns.append((b, a))
    tstarts = [a for a, _ in turns]
    for i, (ts, phase, detail) in enumerate(samples):
        end = min(samples[i + 1][0] if i + 1 < len(samples) else ts + period_ns, ts + 5 * period_ns)
        j = bisect.bisect_right(starts, ts) - 1
        if 0 <= j and ts < steps[j].end_ns:
            steps[j].samples += 1
        k = bisect.bisect_right(rstarts, ts) - 1
        in_region = k >= 0 and ts <= regions[k][1]
        k = bisect.bisect_right(tstarts, ts) - 1
        in_region = in_region or (k >= 0 and ts < turns[k][1])
        k = bisect.bisect_right(cstarts, ts) - 1
        in_comm = k >= 0 and ts <= comm[k][1]
        counted = phase == COMPUTE or (phase == DATA and in_region) or (phase == COMM and in_comm)
        spread(ts, end, None if counted else phase, detail)
    for s in steps:
        wall = s.wall_ns
        other = sum(v for ph, v in s.phases.items() if ph != COMPUTE)
        if other > wall:  # sampled time spread past what the step holds
            for ph in list(s.phases):
                s.phases[ph] = s.phases[ph] * wall // other
            other = sum(s.phases.values())
        s.phases[COMPUTE] = wall - other
    steps = steps[1:]
    for i, s in enumerate(steps):
        s.index = i
    return steps


def confidence(steps: list[Step], period_ns: int, exact: bool = False, data_exact: bool = False,
               main_samples: int = 0) -> tuple[str, str]:
    """How far the step model can be trusted, and what it rests on."""
    n = len(steps)
    if exact:
        basis = "exact step boundaries (PyTorch markers)"
        basis += ", exact data wait (DataLoader __next__)" if data_exact else \
            f", data wait from {main_samples} samples"
        ok = data_exact or main_samples >= 100   # a sampled share within about 5 points
        return ("high" if n >= 5 and ok else "medium" if n >= 3 else "low"), basis
    med = sorted(s.samples for s in steps)[n // 2] if steps else 0
    med_data = sorted(s.phases.get(DATA, 0) for s in steps)[n // 2] if steps else 0
    basis = (f"step boundaries from sampled stacks ({med} samples per step): steps shorter "
             "than a few sampling periods are merged")
    # Trusted only when a typical step is seen by enough samples, and its data
    # wait by several in a row: steps a few periods long alternate phases from
    # one sample to the next, and sampled boundaries then merge them.
    if n >= 5 and med >= 6 and med_data >= 3 * period_ns:
        return "high", basis
    return ("medium" if n >= 3 else "low"), basis
