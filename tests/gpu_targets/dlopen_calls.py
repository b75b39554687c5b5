"""A target that dlopens the real libcudart.so.12 and calls it at once:
20 cudaStreamSynchronize and 10 cudaMalloc right after the dlopen returns
(the window in which a job creates its handles and first allocations).

    dlopen_calls.py CUDART [--wait]

--wait: print {"ready": pid} and wait for a line on stdin first (`attach`).
Prints one JSON line: pid, tid, and the CLOCK_MONOTONIC ns each call started.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import sys
import threading
import time


def main() -> None:
    path, wait = sys.argv[1], "--wait" in sys.argv[2:]
    if wait:
        print(json.dumps({"ready": os.getpid()}), flush=True)
        sys.stdin.readline()
    rt = ct.CDLL(path)
    starts: dict[str, list[int]] = {"cudaStreamSynchronize": [], "cudaMalloc": []}
    ptr = ct.c_void_p()
    for i in range(20):
        starts["cudaStreamSynchronize"].append(time.monotonic_ns())
        rt.cudaStreamSynchronize(ct.c_void_p(0x100 + i))
    for i in range(10):
        starts["cudaMalloc"].append(time.monotonic_ns())
        rt.cudaMalloc(ct.byref(ptr), ct.c_size_t(4096 * (i + 1)))
    print(json.dumps({"pid": os.getpid(), "tid": threading.get_native_id(), "starts": starts}),
          flush=True)


if __name__ == "__main__":
    main()
