"""CUDA graphs, from the calls: stream capture begin/end, instantiation and
launch, with the ids that tie them together, and the kernels a graph holds
where the capture showed them.

While a stream is being captured its launches do not run: they become nodes
of the graph that cudaStreamEndCapture returns. So launches on a capturing
stream are marked `captured` (capture number) and named into the capture;
the graph id comes from EndCapture's out-parameter, the executable graph's
from Instantiate's, and a launch of that executable graph carries the graph
id, the kernel count and the kernels by name. A runtime call and the driver
call it makes (cudaLaunchKernel -> cuLaunchKernel on a real driver) are one
kernel: a driver launch inside a runtime launch on the same thread is not
counted again. Graphs built node by node (cudaGraphAddKernelNode) are not
followed: their kernels are not named.
"""

from __future__ import annotations

from collections import Counter

BEGINS = {"cudaStreamBeginCapture", "cuStreamBeginCapture"}
ENDS = {"cudaStreamEndCapture", "cuStreamEndCapture"}
INSTANTIATES = {"cudaGraphInstantiate", "cudaGraphInstantiateWithFlags", "cuGraphInstantiate"}
LAUNCHES = {"cudaGraphLaunch", "cuGraphLaunch"}
MAX_GRAPHS = 4096   # graphs remembered per process (bounded memory)


def _driver(fn: str) -> bool:
    return fn.startswith("cu") and not fn.startswith("cuda")


class Capture:
    __slots__ = ("n", "launches")

    def __init__(self, n: int):
        self.n = n
        self.launches: list[tuple[int, int, int, bool, str]] = []  # tid, start, end, driver, kernel

    def kernels(self) -> list[str]:
        runtime = [(t, s, e) for t, s, e, d, _ in self.launches if not d]
        return [k for t, s, e, d, k in self.launches
                if not d or not any(rt == t and rs <= s and e <= re for rt, rs, re in runtime)]


def describe(kernels: list[str]) -> str:
    """'a x2, b': the kernels of a graph, by name, in first-launch order."""
    c = Counter(kernels)
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in c.items())


class Graphs:
    def __init__(self):
        self.captures: dict[tuple[int, int], Capture] = {}    # (pid, stream) -> open capture
        self.graph_kernels: dict[tuple[int, int], list[str]] = {}   # (pid, graph) -> kernels
        self.exec_graph: dict[tuple[int, int], int] = {}      # (pid, exec) -> graph
        self._n = 0

    def on_launch(self, fn: str, pid: int, tid: int, start: int, end: int, args: dict) -> None:
        """A kernel launch: into the capture of its stream, if one is open."""
        c = self.captures.get((pid, int(args["stream"], 16)))
        if c is not None:
            args["captured"] = c.n
            c.launches.append((tid, start, end, _driver(fn), args["kernel"]))

    def add(self, fn: str, pid: int, a: list[int], x: list[int], ret: int, args: dict) -> None:
        """Names the arguments of a graph call (a, x: the raw registers / out-value)."""
        if fn in BEGINS:
            key = (pid, a[0])
            args.update({"stream": f"0x{a[0]:x}", "mode": a[1] & 0xFFFFFFFF})
            if ret == 0:
                c = self.captures.get(key)
                if c is None:   # the runtime's begin and the driver's inside it are one capture
                    self._n += 1
                    c = self.captures[key] = Capture(self._n)
                args["capture"] = c.n
        elif fn in ENDS:
            args["stream"] = f"0x{a[0]:x}"
            c = self.captures.pop((pid, a[0]), None)
            if c is not None:
                args["capture"] = c.n
            if ret == 0 and x[0]:
                graph = (pid, x[0])
                if c is not None:
                    self._remember(self.graph_kernels, graph, c.kernels())
                args["graph"] = f"0x{x[0]:x}"
                self._kernels(self.graph_kernels.get(graph), args)
        elif fn in INSTANTIATES:
            args["graph"] = f"0x{a[1]:x}"
            if ret == 0 and x[0]:
                args["graph_exec"] = f"0x{x[0]:x}"
                self._remember(self.exec_graph, (pid, x[0]), a[1])
                self._kernels(self.graph_kernels.get((pid, a[1])), args)
        elif fn in LAUNCHES:   # args["graph"] is the executable graph launched
            source = self.exec_graph.get((pid, a[0]))
            if source is not None:
                args["graph_id"] = f"0x{source:x}"
                self._kernels(self.graph_kernels.get((pid, source)), args)

    @staticmethod
    def _kernels(kernels: list[str] | None, args: dict) -> None:
        if kernels is not None:
            args["kernel_count"] = len(kernels)
            args["kernels"] = describe(kernels)

    @staticmethod
    def _remember(table: dict, key, value) -> None:
        if len(table) >= MAX_GRAPHS * 4:
            table.pop(next(iter(table)))
        table[key] = value

    def on_exit(self, pid: int) -> None:
        for table in (self.captures, self.graph_kernels, self.exec_graph):
            for k in [k for k in table if k[0] == pid]:
                del table[k]
