"""What a capture runs and for how long: one typed object, built from the
command line (`attach`/`run`) or from the sidecar's always-on defaults; the
command-line flags that set it (their defaults come from the object); and the
sources it selects."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import NoReturn

from gpuscope.probes.io import IO_ONEBY_PER_S
from gpuscope.probes.source import Source


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (a CliError, exit 2) that says
    where the help is, not the usage block."""

    def error(self, message: str) -> NoReturn:
        from .errors import EXIT_USAGE, CliError

        raise CliError(f"{message} (see `{self.prog} --help`)", EXIT_USAGE)


@dataclass(frozen=True)
class CaptureOptions:
    sched: bool = True              # off-CPU waits
    min_offcpu_us: int = 50         # shortest off-CPU wait recorded
    io_oneby_per_s: int = IO_ONEBY_PER_S   # data-file reads/writes traced one by one per s; beyond: summed
    python: bool = True             # Python stack sampler (needed for the verdict)
    rate: float = 100               # Python samples per second
    cuda: bool = True
    nccl: bool = True
    # PyTorch's step markers (optimizer steps, DataLoader batches): opt-in. Their uprobes
    # cost the job far more than they cost us (bench_overhead job a: +25 points at
    # ~3k markers/s), so defaults find steps from the samples.
    torch: bool = False
    nvml: bool = True
    nvml_hz: float = 10.0
    max_overhead: float = 2.0       # % of the machine gpuscope may take before it lowers detail
    subprocesses: bool = True       # follow DataLoader workers, ranks
    duration: float | None = None   # seconds; None: until stopped or the target exits
    output: str | None = None       # trace path; None: gpuscope-PID-TIME.pftrace
    quiet: bool = False             # no status line
    ebpf: bool = False              # print the eBPF program instead of loading it
    # `run`'s command: the GPU libraries its interpreter can load are probed
    # before it is released (gpufind); empty for `attach`.
    launch: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: CaptureOptions | None = None
                  ) -> CaptureOptions:
        """The options the parsed flags set; the others from `base` (default: ours)."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                 if hasattr(args, f.name)}
        return dataclasses.replace(base or cls(), **given)


def add_probe_flags(p: argparse.ArgumentParser, d: CaptureOptions = CaptureOptions(),
                    cheaper: str = "") -> None:
    """Which sources run, for `attach`/`run` and (with cheaper always-on
    defaults `d`) the sidecar."""
    why = f": {cheaper}" if cheaper else ""
    p.add_argument("--sched", action=argparse.BooleanOptionalAction, default=d.sched,
                   help="trace off-CPU waits (default on)")
    p.add_argument("--min-offcpu-us", type=non_negative_int, default=d.min_offcpu_us,
                   help=f"shortest off-CPU wait to record, µs (default {d.min_offcpu_us}{why})")
    p.add_argument("--io-oneby-per-s", type=non_negative_int, default=d.io_oneby_per_s,
                   metavar="N", help="data-file reads/writes traced one by one per second, "
                   "machine-wide; a flood beyond is summed in the kernel, not lost (default "
                   f"{d.io_oneby_per_s}; 0: no limit)")
    p.add_argument("--python", action=argparse.BooleanOptionalAction, default=d.python,
                   help="sample every thread's Python stack (default on; needed for the verdict)")
    p.add_argument("-r", "--rate", type=positive, default=d.rate,
                   help=f"Python stack samples per second (default {d.rate:g}{why})")
    p.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=d.cuda,
                   help="trace CUDA runtime and driver calls (default on)")
    p.add_argument("--nccl", action=argparse.BooleanOptionalAction, default=d.nccl,
                   help="trace NCCL collectives (default on)")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=d.torch,
                   help="uprobe PyTorch's optimizer steps, DataLoader batches and backward "
                   "passes: exact step boundaries, at a cost to the job of about 75 µs per marker "
                   "(bench_overhead); default off")
    p.add_argument("--nvml", action=argparse.BooleanOptionalAction, default=d.nvml,
                   help="poll NVML GPU counters (default on)")
    p.add_argument("--nvml-hz", type=positive, default=d.nvml_hz,
                   help=f"NVML polling rate, per second (default {d.nvml_hz:g}{why})")
    p.add_argument("--max-overhead", type=_percent, default=d.max_overhead, metavar="PCT",
                   help="CPU gpuscope may take, %% of the whole machine (its own threads and "
                   "its BPF programs); above it gpuscope lowers its sampling rate and event "
                   f"detail, and restores them when it can (default {d.max_overhead:g}; "
                   "100: never lower)")


def seconds(text: str) -> float:
    """A duration: finite and > 0 (`nan` would never end, 0 and below never start)."""
    return positive(text, "a duration in seconds, > 0")


def positive(text: str, what: str = "a number > 0") -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v < float("inf"):   # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return v


def non_negative(text: str) -> float:
    """0 allowed (turns a feature off), nan and inf not."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return v


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return v


def port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 picks "
                                         "a free one)")
    return v


def _percent(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v <= 100:   # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage in (0, 100]")
    return v


def add_capture_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="trace file (.pftrace); default gpuscope-PID-TIME.pftrace")
    p.add_argument("-d", "--duration", type=seconds, help="seconds to capture (default: until "
                   "Ctrl-C or the target exits)")
    p.add_argument("--subprocesses", action=argparse.BooleanOptionalAction, default=True,
                   help="follow child processes: DataLoader workers, ranks (default on)")
    add_probe_flags(p)
    p.add_argument("--ebpf", action="store_true", help="print the eBPF program and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no live status line")


def build_sources(opts: CaptureOptions) -> list[Source]:
    """The eBPF source first: the pipeline treats it as required (without it
    there is nothing to trace); the others are optional."""
    from gpuscope.probes.io import IoProbe
    from gpuscope.probes.kernel import KernelProbes
    from gpuscope.probes.proc import ProcProbe
    from gpuscope.probes.sched import SchedProbe

    proc, io = ProcProbe(), IoProbe(oneby_per_s=opts.io_oneby_per_s)
    proc.listeners.append(io)
    probes = [proc, io]
    if opts.sched:
        probes.append(SchedProbe(min_offcpu_us=opts.min_offcpu_us))
    if opts.cuda:
        from gpuscope.probes.cuda import CudaProbe

        cuda = CudaProbe(launch=opts.launch)
        proc.listeners.append(cuda)
        io.listeners.append(cuda)
        probes.append(cuda)
    if opts.nccl:
        from gpuscope.probes.nccl import NcclProbe

        nccl = NcclProbe(launch=opts.launch)
        io.listeners.append(nccl)
        probes.append(nccl)
    if opts.torch:
        from gpuscope.probes.torchops import TorchProbe

        probes.append(TorchProbe())
    sources: list[Source] = [KernelProbes(probes)]
    if opts.python:
        from gpuscope.probes.sampler import PythonSampler

        sources.append(PythonSampler(rate_hz=opts.rate))
    if opts.nvml:
        from gpuscope.probes.nvml import NvmlSource

        sources.append(NvmlSource(interval_s=1.0 / opts.nvml_hz))
    return sources
