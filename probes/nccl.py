"""NCCL probe: collectives and point-to-point calls of the tracked tree, one
span per call on the calling thread's NCCL track: operation, element count x
datatype -> bytes, reduction, root or peer, communicator, stream, return code.

The span is the host-side enqueue time (the call returns once the work is
queued on the stream), not the collective's run on the GPU; inside
ncclGroupStart/End the real launch happens at ncclGroupEnd.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .cuda import function_ids
from .events import NCCL, Event, Span
from .gpulibs import NCCL as NCCL_LIB
from .kernel import Probe
from .libprobes import LibraryAttacher, LibraryProbe

FUNCTIONS = function_ids("nccl.h", "NC_")
SYMBOLS = {name: name for name in FUNCTIONS.values()}
REQUIRED = {NCCL_LIB: set(SYMBOLS)}

# ncclDataType_t -> (name, bytes per element)
DATATYPES = {0: ("int8", 1), 1: ("uint8", 1), 2: ("int32", 4), 3: ("uint32", 4),
             4: ("int64", 8), 5: ("uint64", 8), 6: ("float16", 2), 7: ("float32", 4),
             8: ("float64", 8), 9: ("bfloat16", 2), 10: ("float8e4m3", 1), 11: ("float8e5m2", 1)}
REDOPS = {0: "sum", 1: "prod", 2: "max", 3: "min", 4: "avg"}
RESULTS = {1: "ncclUnhandledCudaError", 2: "ncclSystemError", 3: "ncclInternalError",
           4: "ncclInvalidArgument", 5: "ncclInvalidUsage", 6: "ncclRemoteError",
           7: "ncclInProgress"}

# Where each argument is: register index 0-5, or 6/7 for the 1st/2nd stack slot.
LAYOUT = {
    "ncclAllReduce": {"count": 2, "datatype": 3, "op": 4, "comm": 5, "stream": 6},
    "ncclBroadcast": {"count": 2, "datatype": 3, "root": 4, "comm": 5, "stream": 6},
    "ncclReduce": {"count": 2, "datatype": 3, "op": 4, "root": 5, "comm": 6, "stream": 7},
    "ncclAllGather": {"count": 2, "datatype": 3, "comm": 4, "stream": 5},
    "ncclReduceScatter": {"count": 2, "datatype": 3, "op": 4, "comm": 5, "stream": 6},
    "ncclSend": {"count": 1, "datatype": 2, "peer": 3, "comm": 4, "stream": 5},
    "ncclRecv": {"count": 1, "datatype": 2, "peer": 3, "comm": 4, "stream": 5},
}


class NcclProbe(LibraryProbe, Probe):
    name = "nccl"
    bpf_file = "nccl.bpf.c"
    ring = "nccl_events"
    drop_slot = 4  # DROP_NCCL

    def __init__(self, launch: Iterable[str] = ()):
        self.libs = LibraryAttacher({NCCL_LIB: SYMBOLS}, REQUIRED, launch)
        self.table: Any = None   # BCC's ring buffer table once attached (untyped)

    def tick(self, bpf, out: list[Event]) -> None:
        self.libs.scan(bpf, self.tracked())
        out += self.libs.take_events()

    def notices(self) -> list[str]:
        return self.libs.notices()

    def decode(self, raw, size: int, out: list[Event]) -> None:
        e = self.table.event(raw)
        fn = FUNCTIONS.get(e.fn, f"nccl{e.fn}")
        regs = list(e.a) + list(e.x)
        args: dict = {}
        layout = LAYOUT.get(fn)
        if layout is not None:
            v = {k: regs[i] for k, i in layout.items()}
            dt = v["datatype"] & 0xFFFFFFFF
            tname, size_ = DATATYPES.get(dt, (str(dt), 0))
            args["op"] = fn[4:]
            args["count"] = v["count"]
            args["datatype"] = tname
            if size_:
                args["bytes"] = v["count"] * size_
            if "op" in v:
                op = v["op"] & 0xFFFFFFFF
                args["reduce"] = REDOPS.get(op, str(op))
            if "root" in v:
                args["root"] = _s32(v["root"])
            if "peer" in v:
                args["peer"] = _s32(v["peer"])
            args["comm"] = f"0x{v['comm']:x}"
            args["stream"] = f"0x{v['stream']:x}"
        args["ret"] = e.ret
        if e.ret:
            args["error"] = RESULTS.get(e.ret, f"ncclResult {e.ret}")
        out.append(Span(NCCL, fn, e.pid, e.tid, e.start, e.end, args))


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v
