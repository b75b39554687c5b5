"""A target whose GPU time is known: the driver stand-in with
$STUB_KERNEL_US set keeps a stream busy that long per kernel, and says how
long each stream was busy and how late the syncs that waited for it came.

    busy_calls.py

Stream A: 3 kernels, cuStreamSynchronize(A); 30 ms on the host; then
2 kernels on A and 4 on B, cuCtxSynchronize. Prints one JSON line: pid and,
per stream, the stand-in's busy and late ns.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import time

cu = ct.CDLL("libcuda.so.1")
A, B = ct.c_void_p(0xa1), ct.c_void_p(0xb2)


def launch(stream, n: int) -> None:
    for _ in range(n):
        assert cu.cuLaunchKernel(ct.c_void_p(0xf00d), 1, 1, 1, 32, 1, 1, 0, stream, None, None) == 0


def main() -> None:
    launch(A, 3)
    assert cu.cuStreamSynchronize(A) == 0
    time.sleep(0.03)
    launch(A, 2)
    launch(B, 4)
    assert cu.cuCtxSynchronize() == 0
    cu.standin_stream_busy_ns.restype = cu.standin_stream_late_ns.restype = ct.c_uint64
    print(json.dumps({"pid": os.getpid(), "streams": {
        hex(s.value): {"busy_ns": cu.standin_stream_busy_ns(s), "late_ns": cu.standin_stream_late_ns(s)}
        for s in (A, B)}}), flush=True)


if __name__ == "__main__":
    main()
