"""A target whose device memory is known: allocations through the driver
stand-in (libcuda.so.1 from LD_LIBRARY_PATH, a bump allocator that keeps its
own count) and one through the real libcudart (which fails without a GPU and
must not count). Two allocations are never freed, each made on its own line.

    memory_calls.py CUDART

Prints one JSON line: pid, the stand-in's own peak and allocated bytes, and
the pointers left allocated with the function that made each.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import sys

MiB = 1 << 20
cu = ct.CDLL("libcuda.so.1")
STREAM = ct.c_void_p(0x5151)


def alloc(n: int) -> int:
    p = ct.c_uint64()
    assert cu.cuMemAlloc_v2(ct.byref(p), ct.c_size_t(n)) == 0
    return p.value


def alloc_async(n: int) -> int:
    p = ct.c_uint64()
    assert cu.cuMemAllocAsync(ct.byref(p), ct.c_size_t(n), STREAM) == 0
    return p.value


def keep_weights() -> int:
    p = ct.c_uint64()
    assert cu.cuMemAlloc_v2(ct.byref(p), ct.c_size_t(1 * MiB)) == 0   # never freed
    return p.value


def leak_workspace() -> int:
    p = ct.c_uint64()
    assert cu.cuMemAllocAsync(ct.byref(p), ct.c_size_t(3 * MiB), STREAM) == 0   # never freed
    return p.value


def main() -> None:
    rt = ct.CDLL(sys.argv[1])
    failed = ct.c_void_p()
    rt_ret = rt.cudaMalloc(ct.byref(failed), ct.c_size_t(64 * MiB))   # no device: an error
    weights = keep_weights()
    scratch = alloc(4 * MiB)
    assert cu.cuMemFree_v2(ct.c_uint64(scratch)) == 0
    staging = alloc_async(2 * MiB)
    assert cu.cuMemFreeAsync(ct.c_uint64(staging), STREAM) == 0
    bad = cu.cuMemFree_v2(ct.c_uint64(0xbad000))   # not allocated: an error, not a free
    workspace = leak_workspace()
    cu.standin_allocated.restype = cu.standin_peak.restype = ct.c_size_t
    print(json.dumps({"pid": os.getpid(), "cudaMalloc": rt_ret, "bad_free": bad,
                      "peak": cu.standin_peak(), "allocated": cu.standin_allocated(),
                      "left": {hex(weights): "keep_weights", hex(workspace): "leak_workspace"}}),
          flush=True)


if __name__ == "__main__":
    main()
