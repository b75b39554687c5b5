"""When each stream's GPU was busy, estimated from the calls alone (no
CUPTI): work enqueued on a stream (kernel and graph launches, async copies
and memsets) keeps it busy from the first such call after its last sync
until the synchronisation that waited for it returns
(cudaStreamSynchronize / cuStreamSynchronize on that stream,
cudaDeviceSynchronize / cuCtxSynchronize on all of the process's streams).

An ESTIMATE, and an upper bound: the GPU may have finished before the host
asked, and idle gaps between launches on the host side are counted as busy.
cudaEventSynchronize does not say which stream it waits for (cudaEventRecord
is not probed), so work it waits for closes at a later sync. Launches made
during a stream capture do not run and are left out. Each interval becomes
1 then 0 on the process's `GPU busy (estimate) <stream>` counter track.
"""

from __future__ import annotations

from .events import CounterSample, Event

TRACK = "GPU busy (estimate)"
WORK = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
        "cudaMemcpyAsync", "cudaMemsetAsync", "cudaMemset2DAsync", "cuMemcpyHtoDAsync",
        "cuMemcpyDtoHAsync", "cuMemcpyDtoDAsync", "cuMemcpyAsync", "cudaGraphLaunch",
        "cuGraphLaunch"}
STREAM_SYNCS = {"cudaStreamSynchronize", "cuStreamSynchronize"}
DEVICE_SYNCS = {"cudaDeviceSynchronize", "cuCtxSynchronize"}


class BusyEstimate:
    def __init__(self):
        self.pending: dict[int, dict[str, int]] = {}   # pid -> stream -> first unsynced work's start
        self.last_end: dict[tuple[int, str], int] = {}

    def add(self, fn: str, pid: int, start: int, end: int, args: dict, out: list[Event]) -> None:
        if fn in WORK:
            if args["ret"] == 0 and "captured" not in args:
                self.pending.setdefault(pid, {}).setdefault(args["stream"], start)
        elif fn in STREAM_SYNCS:
            first = self.pending.get(pid, {}).pop(args["stream"], None)
            if first is not None:
                self._interval(pid, args["stream"], first, end, out)
        elif fn in DEVICE_SYNCS:
            for stream, first in sorted(self.pending.pop(pid, {}).items()):
                self._interval(pid, stream, first, end, out)

    def _interval(self, pid: int, stream: str, start: int, end: int, out: list[Event]) -> None:
        # A launch from another thread may have started before the last sync returned.
        start = max(start, self.last_end.get((pid, stream), 0))
        self.last_end[(pid, stream)] = end
        track = f"{TRACK} {stream}"
        out.append(CounterSample(track, "busy", start, 1.0, pid))
        out.append(CounterSample(track, "busy", end, 0.0, pid))

    def on_exit(self, pid: int) -> None:
        self.pending.pop(pid, None)
        for k in [k for k in self.last_end if k[0] == pid]:
            del self.last_end[k]
