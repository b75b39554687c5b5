"""CUDA runtime and driver probe: launches, copies, memsets, synchronisations,
allocations and graph launches of the tracked tree, one span per call on the
calling thread's CUDA track, with arguments and return code; kernel names;
and per-process rates derived from the calls (launches/s, H2D and D2H
bytes/s, share of time in synchronisation).

The spans are host-side: how long the call took on the CPU (a launch
enqueues, a synchronisation waits). Libraries are probed before the target
can call them where that can be known (libprobes: searched by path, on the
kernel's view of their open, from /proc/PID/maps as a fallback). Each uprobe
is attached once for all processes and filtered in the kernel on the
tracked map.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from .cudagraphs import BEGINS, ENDS, INSTANTIATES, Graphs
from .cudagraphs import LAUNCHES as GRAPH_LAUNCHES
from .cudamem import ALLOCS, FREES, DeviceMemory
from .demangle import demangle
from .events import CUDA, CounterSample, Event, Span
from .gpubusy import DEVICE_SYNCS, STREAM_SYNCS, WORK, BusyEstimate
from .gpulibs import CUDART, DRIVER, Symbolizer
from .kernel import Probe
from .libprobes import LibraryAttacher, LibraryProbe

HERE = Path(__file__).resolve().parent


def function_ids(header: str, prefix: str) -> dict[int, str]:
    """id -> function name from the '#define <prefix><name> <id>' lines of a header."""
    rx = re.compile(rf"^#define {prefix}(\w+) (\d+)$", re.M)
    return {int(i): name for name, i in rx.findall((HERE / header).read_text())}


FUNCTIONS = function_ids("cuda.h", "FN_")
_IDS = {name: i for i, name in FUNCTIONS.items()}

# Exported symbol -> the function (program) it is probed as. Per-thread
# default-stream variants (_ptsz / _ptds) count as the same function; an alias
# at the same address as one already probed is skipped.
RUNTIME_SYMBOLS = {n: n for n in FUNCTIONS.values() if n.startswith("cuda")}
for _n in list(RUNTIME_SYMBOLS):
    RUNTIME_SYMBOLS[_n + ("_ptds" if _n in ("cudaMemcpy", "cudaMemset", "cudaMemset2D")
                          else "_ptsz")] = _n
DRIVER_SYMBOLS = {
    "cuLaunchKernel": "cuLaunchKernel", "cuLaunchKernel_ptsz": "cuLaunchKernel",
    "cuLaunchKernelEx": "cuLaunchKernelEx", "cuLaunchKernelEx_ptsz": "cuLaunchKernelEx",
    "cuMemcpyHtoD_v2": "cuMemcpyHtoD", "cuMemcpyHtoD_v2_ptds": "cuMemcpyHtoD",
    "cuMemcpyDtoH_v2": "cuMemcpyDtoH", "cuMemcpyDtoH_v2_ptds": "cuMemcpyDtoH",
    "cuMemcpyDtoD_v2": "cuMemcpyDtoD", "cuMemcpyDtoD_v2_ptds": "cuMemcpyDtoD",
    "cuMemcpyHtoDAsync_v2": "cuMemcpyHtoDAsync", "cuMemcpyHtoDAsync_v2_ptsz": "cuMemcpyHtoDAsync",
    "cuMemcpyDtoHAsync_v2": "cuMemcpyDtoHAsync", "cuMemcpyDtoHAsync_v2_ptsz": "cuMemcpyDtoHAsync",
    "cuMemcpyDtoDAsync_v2": "cuMemcpyDtoDAsync", "cuMemcpyDtoDAsync_v2_ptsz": "cuMemcpyDtoDAsync",
    "cuMemcpy": "cuMemcpy", "cuMemcpy_ptds": "cuMemcpy",
    "cuMemcpyAsync": "cuMemcpyAsync", "cuMemcpyAsync_ptsz": "cuMemcpyAsync",
    "cuStreamSynchronize": "cuStreamSynchronize", "cuStreamSynchronize_ptsz": "cuStreamSynchronize",
    "cuCtxSynchronize": "cuCtxSynchronize",
    "cuMemAlloc_v2": "cuMemAlloc", "cuMemFree_v2": "cuMemFree",
    "cuMemAllocAsync": "cuMemAllocAsync", "cuMemAllocAsync_ptsz": "cuMemAllocAsync",
    "cuMemFreeAsync": "cuMemFreeAsync", "cuMemFreeAsync_ptsz": "cuMemFreeAsync",
    "cuGraphLaunch": "cuGraphLaunch", "cuGraphLaunch_ptsz": "cuGraphLaunch",
    "cuModuleGetFunction": "cuModuleGetFunction", "cuLibraryGetKernel": "cuLibraryGetKernel",
    "cuStreamBeginCapture_v2": "cuStreamBeginCapture",
    "cuStreamBeginCapture_v2_ptsz": "cuStreamBeginCapture",
    "cuStreamBeginCapture": "cuStreamBeginCapture", "cuStreamBeginCapture_ptsz": "cuStreamBeginCapture",
    "cuStreamEndCapture": "cuStreamEndCapture", "cuStreamEndCapture_ptsz": "cuStreamEndCapture",
    "cuGraphInstantiateWithFlags": "cuGraphInstantiate", "cuGraphInstantiate_v2": "cuGraphInstantiate",
    "cuGraphInstantiate": "cuGraphInstantiate",
}
# Worth a notice when a library lacks them (older drivers lack the newest ones).
REQUIRED = {
    CUDART: {"cudaLaunchKernel", "cudaMemcpy", "cudaMemcpyAsync", "cudaStreamSynchronize",
             "cudaDeviceSynchronize", "cudaMalloc", "cudaFree"},
    DRIVER: {"cuLaunchKernel", "cuMemcpyHtoD_v2", "cuMemcpyDtoH_v2", "cuStreamSynchronize",
             "cuCtxSynchronize", "cuMemAlloc_v2", "cuMemFree_v2", "cuModuleGetFunction"},
}

MEMCPY_KINDS = {0: "HtoH", 1: "HtoD", 2: "DtoH", 3: "DtoD", 4: "Default"}
LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"}
SYNCS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
         "cuStreamSynchronize", "cuCtxSynchronize"}
GRAPH_CALLS = BEGINS | ENDS | INSTANTIATES
MEMORY_FNS = ALLOCS | FREES
BUSY_FNS = WORK | STREAM_SYNCS | DEVICE_SYNCS
_DRIVER_H2D = {"cuMemcpyHtoD", "cuMemcpyHtoDAsync"}
_DRIVER_D2H = {"cuMemcpyDtoH", "cuMemcpyDtoHAsync"}

# Return codes most seen in practice; others are named through the target's own
# libcudart (cudaGetErrorName) or shown as numbers.
CUDA_ERRORS = {
    1: "cudaErrorInvalidValue", 2: "cudaErrorMemoryAllocation", 3: "cudaErrorInitializationError",
    4: "cudaErrorCudartUnloading", 34: "cudaErrorStubLibrary", 35: "cudaErrorInsufficientDriver",
    46: "cudaErrorDevicesUnavailable", 98: "cudaErrorInvalidDeviceFunction",
    100: "cudaErrorNoDevice", 101: "cudaErrorInvalidDevice", 209: "cudaErrorNoKernelImageForDevice",
    400: "cudaErrorInvalidResourceHandle", 500: "cudaErrorSymbolNotFound",
    600: "cudaErrorNotReady", 700: "cudaErrorIllegalAddress", 719: "cudaErrorLaunchFailure",
    999: "cudaErrorUnknown",
}
CU_ERRORS = {
    1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY", 3: "CUDA_ERROR_NOT_INITIALIZED",
    4: "CUDA_ERROR_DEINITIALIZED", 34: "CUDA_ERROR_STUB_LIBRARY", 100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE", 200: "CUDA_ERROR_INVALID_IMAGE",
    201: "CUDA_ERROR_INVALID_CONTEXT", 209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
    400: "CUDA_ERROR_INVALID_HANDLE", 500: "CUDA_ERROR_NOT_FOUND", 600: "CUDA_ERROR_NOT_READY",
    700: "CUDA_ERROR_ILLEGAL_ADDRESS", 719: "CUDA_ERROR_LAUNCH_FAILED", 999: "CUDA_ERROR_UNKNOWN",
}


def _hex(v: int) -> str:
    return f"0x{v:x}"


def _dims(x: int, y: int, z: int) -> str:
    return f"{x}x{y}x{z}"


_M32 = 0xFFFFFFFF


class CudaProbe(LibraryProbe, Probe):
    name = "cuda"
    bpf_file = "cuda.bpf.c"
    ring = "cuda_events"
    drop_slot = 3  # DROP_CUDA

    def __init__(self, driver: bool = True, runtime: bool = True, launch: Iterable[str] = ()):
        kinds = {}
        if runtime:
            kinds[CUDART] = RUNTIME_SYMBOLS
        if driver:
            kinds[DRIVER] = DRIVER_SYMBOLS
        self.libs = LibraryAttacher(kinds, REQUIRED, launch)
        self.symbolizer = Symbolizer()
        self.table: Any = None   # BCC's ring buffer table once attached (untyped)
        self.handles: dict[tuple[int, int], str] = {}  # (pid, CUfunction) -> kernel name
        self.rates = Rates()
        self.memory = DeviceMemory()
        self.graphs = Graphs()
        self.busy = BusyEstimate()
        self._pending: list[Event] = []   # made outside decode/tick (process exits)
        self._names: dict[str, str] = {}
        # cudaGetErrorName from a libcudart the target uses (None: not looked up yet)
        self._geterror: Callable[[int], bytes | None] | Literal[False] | None = None

    def tick(self, bpf, out: list[Event]) -> None:
        self.libs.scan(bpf, self.tracked())
        out += self.libs.take_events()
        out += self._pending
        self._pending = []
        self.rates.emit(time.monotonic_ns(), out)

    def on_exit(self, pid: int) -> None:
        self.memory.on_exit(pid, time.monotonic_ns(), self._pending)
        self.graphs.on_exit(pid)
        self.busy.on_exit(pid)
        self.symbolizer.forget(pid)
        self.handles = {k: v for k, v in self.handles.items() if k[0] != pid}

    def notices(self) -> list[str]:
        out = self.libs.notices() + self.memory.notices()
        if not self.libs.mapped:
            out.append("cuda: no CUDA runtime or driver library is mapped by the target; "
                       "CUDA calls not traced")
        return out

    # -- naming ------------------------------------------------------------
    def _intern(self, s: str) -> str:
        return self._names.setdefault(s, sys.intern(s))

    def kernel_name(self, pid: int, func: int) -> str:
        name = self.symbolizer.name(pid, func)
        return self._intern(name) if name else f"kernel {_hex(func)}"

    def handle_name(self, pid: int, handle: int) -> str:
        return self.handles.get((pid, handle)) or f"kernel {_hex(handle)}"

    def error_name(self, fn: str, ret: int) -> str:
        if fn.startswith("cu") and not fn.startswith("cuda"):
            return CU_ERRORS.get(ret, f"CUresult {ret}")
        name = CUDA_ERRORS.get(ret)
        if name is None:
            name = self._cudart_error_name(ret) or f"cudaError {ret}"
            CUDA_ERRORS[ret] = name
        return name

    def _cudart_error_name(self, ret: int) -> str | None:
        if self._geterror is None:
            self._geterror = False
            # one the target mapped first (a searched one may be another version)
            for path in sorted(self.libs.attached, key=lambda p: p not in self.libs.mapped):
                if os.path.basename(path).startswith("libcudart.so"):
                    try:
                        f = ctypes.CDLL(path).cudaGetErrorName
                        f.restype, f.argtypes = ctypes.c_char_p, [ctypes.c_int]
                        self._geterror = f
                    except (OSError, AttributeError):
                        pass
                    break
        if not self._geterror:
            return None
        s = self._geterror(ret)
        return s.decode() if s and s != b"unrecognized error code" else None

    # -- decode ------------------------------------------------------------
    def decode(self, raw, size: int, out: list[Event]) -> None:
        e = self.table.event(raw)
        fn = FUNCTIONS.get(e.fn, f"cuda{e.fn}")
        a, x, pid = e.a, e.x, e.pid
        args: dict = {}
        if fn == "cudaLaunchKernel":
            args = {"kernel": self.kernel_name(pid, a[0]),
                    "grid": _dims(a[1] & _M32, a[1] >> 32, a[2] & _M32),
                    "block": _dims(a[3] & _M32, a[3] >> 32, a[4] & _M32),
                    "shared_mem": x[0], "stream": _hex(x[1])}
        elif fn == "cudaLaunchKernelExC":
            args = {"kernel": self.kernel_name(pid, a[1]),
                    "grid": _dims(x[0] & _M32, x[0] >> 32, x[1] & _M32),
                    "block": _dims(x[1] >> 32, x[2] & _M32, x[2] >> 32),
                    "shared_mem": x[3], "stream": _hex(x[4])}
        elif fn == "cuLaunchKernel":
            args = {"kernel": self.handle_name(pid, a[0]),
                    "grid": _dims(a[1] & _M32, a[2] & _M32, a[3] & _M32),
                    "block": _dims(a[4] & _M32, a[5] & _M32, x[0] & _M32),
                    "shared_mem": x[1] & _M32, "stream": _hex(x[2])}
        elif fn == "cuLaunchKernelEx":
            args = {"kernel": self.handle_name(pid, a[1]),
                    "grid": _dims(x[0] & _M32, x[0] >> 32, x[1] & _M32),
                    "block": _dims(x[1] >> 32, x[2] & _M32, x[2] >> 32),
                    "shared_mem": x[3] & _M32, "stream": _hex(x[4])}
        elif fn in ("cudaMemcpy", "cudaMemcpyAsync"):
            args = {"kind": MEMCPY_KINDS.get(a[3], str(a[3])), "bytes": a[2],
                    "dst": _hex(a[0]), "src": _hex(a[1])}
            if fn == "cudaMemcpyAsync":
                args["stream"] = _hex(a[4])
        elif fn.startswith("cuMemcpy"):
            kind = ("HtoD" if "HtoD" in fn else "DtoH" if "DtoH" in fn
                    else "DtoD" if "DtoD" in fn else "Default")
            args = {"kind": kind, "bytes": a[2], "dst": _hex(a[0]), "src": _hex(a[1])}
            if fn.endswith("Async"):
                args["stream"] = _hex(a[3])
        elif fn in ("cudaMemset", "cudaMemsetAsync"):
            args = {"ptr": _hex(a[0]), "value": a[1] & 0xFF, "bytes": a[2]}
            if fn == "cudaMemsetAsync":
                args["stream"] = _hex(a[3])
        elif fn in ("cudaMemset2D", "cudaMemset2DAsync"):
            args = {"ptr": _hex(a[0]), "pitch": a[1], "value": a[2] & 0xFF,
                    "width": a[3], "height": a[4], "bytes": a[3] * a[4]}
            if fn == "cudaMemset2DAsync":
                args["stream"] = _hex(a[5])
        elif fn in ("cudaStreamSynchronize", "cuStreamSynchronize"):
            args = {"stream": _hex(a[0])}
        elif fn == "cudaEventSynchronize":
            args = {"event": _hex(a[0])}
        elif fn == "cudaStreamWaitEvent":
            args = {"stream": _hex(a[0]), "event": _hex(a[1]), "flags": a[2] & _M32}
        elif fn in ("cudaMalloc", "cudaMallocAsync", "cuMemAlloc", "cuMemAllocAsync"):
            args = {"bytes": a[1]}
            if e.ret == 0:
                args["ptr"] = _hex(x[0])
            if fn.endswith("Async"):
                args["stream"] = _hex(a[2])
        elif fn in ("cudaFree", "cuMemFree"):
            args = {"ptr": _hex(a[0])}
        elif fn in ("cudaFreeAsync", "cuMemFreeAsync"):
            args = {"ptr": _hex(a[0]), "stream": _hex(a[1])}
        elif fn in GRAPH_LAUNCHES:
            args = {"graph": _hex(a[0]), "stream": _hex(a[1])}
            self.graphs.add(fn, pid, a, x, e.ret, args)
        elif fn in GRAPH_CALLS:
            self.graphs.add(fn, pid, a, x, e.ret, args)
        elif fn in ("cuModuleGetFunction", "cuLibraryGetKernel"):
            name = bytes(e.name).split(b"\0", 1)[0].decode("utf-8", "replace")
            name = self._intern(demangle(name))
            args = {"name": name, "module" if fn == "cuModuleGetFunction" else "library": _hex(a[1])}
            if e.ret == 0:
                args["function"] = _hex(x[0])
                self.handles[(pid, x[0])] = name
        ret = e.ret
        args["ret"] = ret
        if ret:
            args["error"] = self.error_name(fn, ret)
        if fn in MEMORY_FNS:
            self.memory.add(fn, pid, e.end, ret, args, out)
        if self.graphs.captures and fn in LAUNCHES:
            self.graphs.on_launch(fn, pid, e.tid, e.start, e.end, args)
        if fn in BUSY_FNS:
            self.busy.add(fn, pid, e.start, e.end, args, out)
        out.append(Span(CUDA, fn, pid, e.tid, e.start, e.end, args))
        self.rates.add(fn, pid, e.tid, e.start, e.end, args)


class Rates:
    """Per-process rates over the last tick window, from the calls themselves.

    A driver call made inside a runtime call on the same thread (cudart
    launches through libcuda) is not counted twice: driver calls are held
    back briefly and dropped when a runtime call on their thread contains them.
    "sync share" is thread-time spent in explicit synchronisation calls per
    wall time of the window, in percent (can pass 100 with several threads).
    """

    HOLD_NS = 50_000_000

    def __init__(self):
        self.window_start = time.monotonic_ns()
        self.pids: set[int] = set()
        self.cur: dict[int, list[float]] = {}   # pid -> [launches, h2d, d2h, sync ns]
        self.runtime: dict[int, list[tuple[int, int]]] = {}   # tid -> recent runtime spans
        self.held: list[tuple[int, int, int, int, int, int]] = []  # pid, tid, start, end, slot, amount

    def add(self, fn: str, pid: int, tid: int, start: int, end: int, args: dict) -> None:
        self.pids.add(pid)
        driver = fn.startswith("cu") and not fn.startswith("cuda")
        if not driver:
            self.runtime.setdefault(tid, []).append((start, end))
        slot, amount = -1, 0
        if fn in LAUNCHES:
            slot, amount = 0, 1
        elif fn in SYNCS:
            slot, amount = 3, end - start
        elif (fn in ("cudaMemcpy", "cudaMemcpyAsync") and args.get("kind") == "HtoD") \
                or fn in _DRIVER_H2D:
            slot, amount = 1, args.get("bytes", 0)
        elif (fn in ("cudaMemcpy", "cudaMemcpyAsync") and args.get("kind") == "DtoH") \
                or fn in _DRIVER_D2H:
            slot, amount = 2, args.get("bytes", 0)
        if slot < 0:
            return
        if driver:
            self.held.append((pid, tid, start, end, slot, amount))
        else:
            self._count(pid, slot, amount)

    def _count(self, pid: int, slot: int, amount: float) -> None:
        # Counted in the window the call is decoded in (not clipped to it: a
        # call decoded after its window closed would otherwise count as 0).
        self.cur.setdefault(pid, [0.0, 0.0, 0.0, 0.0])[slot] += amount

    def emit(self, now: int, out: list[Event]) -> None:
        keep = []
        for h in self.held:
            pid, tid, start, end, slot, amount = h
            if any(s <= start and end <= e for s, e in self.runtime.get(tid, ())):
                continue
            if end > now - self.HOLD_NS:
                keep.append(h)  # its runtime caller may not have returned yet
                continue
            self._count(pid, slot, amount)
        self.held = keep
        horizon = now - 2 * self.HOLD_NS
        self.runtime = {t: [se for se in v if se[1] >= horizon] for t, v in self.runtime.items()}
        self.runtime = {t: v for t, v in self.runtime.items() if v}
        span = max(1, now - self.window_start)
        for pid in sorted(self.pids):
            launches, h2d, d2h, sync = self.cur.get(pid, (0.0, 0.0, 0.0, 0.0))
            sec = span / 1e9
            out.append(CounterSample("CUDA kernel launches/s", "/s", now, launches / sec, pid))
            out.append(CounterSample("CUDA H2D bytes/s", "B/s", now, h2d / sec, pid))
            out.append(CounterSample("CUDA D2H bytes/s", "B/s", now, d2h / sec, pid))
            out.append(CounterSample("CUDA sync share", "%", now, 100.0 * sync / span, pid))
        self.cur = {}
        self.window_start = now
