"""The step model: training steps found from the main loop's sampled stacks,
without instrumentation. A step starts each time the loop enters the
DataLoader's __next__; the time until the next entry is split by what the
main thread was doing in each sample."""

from __future__ import annotations

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


def build_steps(samples: list[tuple[int, str, str]], period_ns: int) -> list[Step]:
    """samples: (ts, phase, detail) of the main thread in time order. Each sample
    stands for the time until the next one (capped at 5 periods, so a gap in
    sampling is not claimed by one phase). Partial steps at the edges are
    dropped, and the first complete step too (warm-up)."""
    starts = [i for i in range(1, len(samples))
              if samples[i][1] == DATA and samples[i - 1][1] != DATA]
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


def confidence(steps: list[Step]) -> str:
    """How far the step model can be trusted: enough steps, each seen by
    enough samples to place its boundaries."""
    if len(steps) >= 5 and sorted(s.samples for s in steps)[len(steps) // 2] >= 4:
        return "high"
    if len(steps) >= 3:
        return "medium"
    return "low"
