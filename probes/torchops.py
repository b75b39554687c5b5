"""PyTorch's own step markers, exact and whatever the training loop: one
span per torch.autograd.profiler.record_function region (every torch.optim
optimizer opens "Optimizer.step#<class>.step" in its step, every DataLoader
iterator "enumerate(DataLoader)#<iterator>.__next__" in __next__, profiler on
or off) and one per backward pass (autograd's Engine::execute).

Sampled stacks cannot place steps shorter than a few sampling periods; these
see every one. libtorch_cpu is found in /proc/PID/maps like the GPU
libraries (at start and every tick) and probed once for all processes, the
BPF side filtering on the tracked map; its three functions are found by
name prefix without loading its 600k symbols (elfsyms.find_functions).
Cost: three uprobe hits per region, two per backward pass; a loop of bare
record_function regions took 54.5 -> 82.4 µs per region attached, on 2 cores
at load 33 (the collector's own CPU included); a DataLoader step has three
regions and a backward.
"""

from __future__ import annotations

import os
from typing import Any

from . import uprobes
from .elfsyms import find_functions
from .events import Event, Span
from .gpulibs import host_path, mapped_files
from .kernel import Probe

TORCH = "torch"   # the events' category: a "PyTorch" track under each thread
BACKWARD = "backward"

# Name prefixes (the argument types' mangling differs between torch versions).
ENTER_PREFIX = "_ZN5torch8autograd8profiler25record_function_enter_newE"
# File-static in libtorch_cpu (in .symtab only).
EXIT_PREFIX = "_ZN5torch8autograd8profilerL24record_function_exit_new"
ENGINE_PREFIX = "_ZN5torch8autograd6Engine7executeE"


class TorchProbe(Probe):
    name = "torch"
    bpf_file = "torchops.bpf.c"
    ring = "torch_events"
    drop_slot = 5  # DROP_TORCH

    def __init__(self):
        self.table: Any = None
        self.attached: set[str] = set()   # open paths of libraries probed
        self._seen: set[str] = set()      # mapped paths looked at
        self._notices: list[str] = []
        self._names: dict[bytes, str] = {}

    def attach(self, bpf) -> None:
        self.table = bpf[self.ring]
        self.scan(bpf)

    def tick(self, bpf, out: list[Event]) -> None:
        self.scan(bpf)

    def scan(self, bpf) -> None:
        for pid in self.tracked():
            try:
                files = mapped_files(pid)
            except OSError:
                continue
            for path, inode in files.items():
                if path in self._seen:
                    continue
                self._seen.add(path)
                if os.path.basename(path).startswith("libtorch_cpu.so"):
                    self._attach(bpf, host_path(pid, path, inode), path)

    def _attach(self, bpf, open_path: str, path: str) -> None:
        if open_path in self.attached:
            return
        self.attached.add(open_path)
        found = find_functions(open_path, [ENTER_PREFIX, EXIT_PREFIX, ENGINE_PREFIX])
        targets: list[tuple[str, str, int, bool]] = []  # what, program, address, return probe too
        if ENTER_PREFIX in found and EXIT_PREFIX in found:
            targets += [("record_function_enter_new", "region", found[ENTER_PREFIX], True),
                        ("record_function_exit_new", "region_exit", found[EXIT_PREFIX], False)]
        else:
            self._notices.append(f"torch: record_function enter/exit not in {path}'s symbols "
                                 "(stripped?): steps from DataLoader and optimizer regions not seen")
        if ENGINE_PREFIX in found:
            targets.append(("Engine::execute", "backward", found[ENGINE_PREFIX], True))
        for what, prog, off, ret in targets:
            try:  # addr: relative to the load address, as ELF addresses of a shared object are
                uprobes.attach(bpf, open_path, off, f"enter_{prog}")
                if ret:
                    uprobes.attach(bpf, open_path, off, f"leave_{prog}", ret=True)
            except Exception as e:  # BCC raises bare Exception
                self._notices.append(f"torch: attach uprobe {what} in {path}: {e}")

    def notices(self) -> list[str]:
        return list(self._notices)

    def decode(self, raw, size: int, out: list[Event]) -> None:
        e = self.table.event(raw)
        if e.kind == 2:
            name = BACKWARD
        else:
            b = bytes(e.name).split(b"\0", 1)[0]
            name = self._names.get(b) or self._names.setdefault(b, b.decode("utf-8", "replace"))
        out.append(Span(TORCH, name, e.pid, e.tid, e.start, e.end, {}))
