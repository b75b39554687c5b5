"""Device memory per process, from the allocation calls themselves:
cudaMalloc/cudaFree, cudaMallocAsync/cudaFreeAsync, cuMemAlloc/cuMemFree,
cuMemAllocAsync/cuMemFreeAsync (PyTorch's caching allocator makes these when
it grows or releases a segment, so this is the memory it holds, not what
tensors use inside it).

Each successful allocation's span gets `allocated` (the process's total
after it), each free of a known pointer `freed` (its bytes) and
`allocated`; a counter track follows the total. A runtime call that the
driver call inside it already counted (same pointer: cudaMalloc ->
cuMemAlloc on a real driver) is not counted twice. Frees of pointers not
seen allocated (made before the capture) are counted apart.
"""

from __future__ import annotations

from .events import CounterSample, Event

ALLOCS = {"cudaMalloc", "cudaMallocAsync", "cuMemAlloc", "cuMemAllocAsync"}
FREES = {"cudaFree", "cudaFreeAsync", "cuMemFree", "cuMemFreeAsync"}
TRACK = "CUDA device memory"
MAX_LIVE = 1 << 20   # live allocations kept per process (bounded memory); beyond, not tracked


class DeviceMemory:
    def __init__(self):
        self.live: dict[int, dict[int, int]] = {}   # pid -> ptr -> bytes
        self.total: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.unknown_frees = 0     # frees of pointers allocated before the capture
        self.untracked = 0         # allocations past MAX_LIVE

    def add(self, fn: str, pid: int, ts: int, ret: int, args: dict, out: list[Event]) -> None:
        if ret != 0:
            return
        if fn in ALLOCS:
            ptr = int(args["ptr"], 16) if "ptr" in args else 0
            live = self.live.setdefault(pid, {})
            if not ptr or ptr in live:
                return   # the driver call inside this runtime call counted it
            if len(live) >= MAX_LIVE:
                self.untracked += 1
                return
            live[ptr] = args["bytes"]
            total = self.total[pid] = self.total.get(pid, 0) + args["bytes"]
            self.peak[pid] = max(self.peak.get(pid, 0), total)
        elif fn in FREES:
            ptr = int(args["ptr"], 16)
            n = self.live.get(pid, {}).pop(ptr, None)
            if n is None:
                if ptr:
                    self.unknown_frees += 1
                return
            total = self.total[pid] = self.total[pid] - n
            args["freed"] = n
        else:
            return
        args["allocated"] = total
        out.append(CounterSample(TRACK, "B", ts, float(total), pid))

    def on_exit(self, pid: int, ts: int, out: list[Event]) -> None:
        """The driver releases an exited process's memory."""
        if self.live.pop(pid, None) is not None:
            self.total.pop(pid, None)
            out.append(CounterSample(TRACK, "B", ts, 0.0, pid))

    def notices(self) -> list[str]:
        out = []
        if self.unknown_frees:
            out.append(f"cuda: {self.unknown_frees} frees of device memory allocated before the "
                       "capture (not in the allocated-bytes counter)")
        if self.untracked:
            out.append(f"cuda: {self.untracked} allocations past {MAX_LIVE} live ones per process "
                       "not tracked")
        return out
