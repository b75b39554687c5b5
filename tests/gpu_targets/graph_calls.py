"""A target that captures a CUDA graph through the driver stand-in and
launches it, after trying the same through the real libcudart (which fails
without a GPU: spans with errors, no ids).

    graph_calls.py CUDART

On stream 0x5151: capture 2 x vector_add (cuLaunchKernel) + 1 x foo
(cuLaunchKernelEx), with a launch on another stream in between that is not
captured; instantiate; launch the graph 3 times. Prints one JSON line: pid,
the graph and exec ids and the stand-in's own node and launch counts.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import sys

from cuda_calls import CuLaunchConfig

cu = ct.CDLL("libcuda.so.1")
S, OTHER = ct.c_void_p(0x5151), ct.c_void_p(0x6262)


def main() -> None:
    rt = ct.CDLL(sys.argv[1])
    g, e = ct.c_void_p(), ct.c_void_p()
    rt_rets = [rt.cudaStreamBeginCapture(S, 0), rt.cudaStreamEndCapture(S, ct.byref(g)),
               rt.cudaGraphInstantiate(ct.byref(e), g, ct.c_ulonglong(0))]
    f, k = ct.c_void_p(), ct.c_void_p()
    assert cu.cuModuleGetFunction(ct.byref(f), ct.c_void_p(0xabc), b"_Z10vector_addPfS_S_i") == 0
    assert cu.cuLibraryGetKernel(ct.byref(k), ct.c_void_p(0xdef), b"_Z3foov") == 0
    assert cu.cuStreamBeginCapture_v2(S, 0) == 0
    for _ in range(2):
        assert cu.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, S, None, None) == 0
    cu.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, OTHER, None, None)   # not captured
    cfg = CuLaunchConfig(5, 1, 1, 256, 1, 1, 0, 0x5151, None, 0)
    assert cu.cuLaunchKernelEx(ct.byref(cfg), k, None, None) == 0
    assert cu.cuStreamEndCapture(S, ct.byref(g)) == 0
    assert cu.cuGraphInstantiateWithFlags(ct.byref(e), g, ct.c_ulonglong(0)) == 0
    for _ in range(3):
        assert cu.cuGraphLaunch(e, S) == 0
    cu.standin_graph_nodes.restype = cu.standin_graph_launches.restype = ct.c_uint
    print(json.dumps({"pid": os.getpid(), "runtime": rt_rets, "graph": hex(g.value),
                      "exec": hex(e.value), "nodes": cu.standin_graph_nodes(g),
                      "launches": cu.standin_graph_launches(e)}), flush=True)


if __name__ == "__main__":
    main()
