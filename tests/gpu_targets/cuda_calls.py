"""A target that calls the real libcudart.so.12 and libnccl.so.2 through ctypes
with known arguments (without a GPU they return errors; the calls still run).

    cuda_calls.py --cudart PATH [--nccl PATH] [--kernels PATH] [--late-driver PATH]
                  [--only-runtime]

Prints {"ready": pid} once the libraries are loaded, waits for a line on stdin,
waits until the functions it will call carry a uprobe breakpoint (int3, 0xCC,
in its own text: the kernel writes it into the process's copy of the page),
then makes the calls on a worker thread and prints one JSON line: the worker's
TID, the return codes, and what was probed. --late-driver dlopens that library
only after the runtime calls (a library mapped after attach).
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import sys
import threading
import time

c_p = ct.c_void_p


class Dim3(ct.Structure):
    _fields_ = [("x", ct.c_uint), ("y", ct.c_uint), ("z", ct.c_uint)]


class LaunchConfig(ct.Structure):  # cudaLaunchConfig_t
    _fields_ = [("grid", Dim3), ("block", Dim3), ("smem", ct.c_size_t), ("stream", c_p),
                ("attrs", c_p), ("nattrs", ct.c_uint)]


class CuLaunchConfig(ct.Structure):  # CUlaunchConfig
    _fields_ = [("gx", ct.c_uint), ("gy", ct.c_uint), ("gz", ct.c_uint), ("bx", ct.c_uint),
                ("by", ct.c_uint), ("bz", ct.c_uint), ("smem", ct.c_uint), ("stream", c_p),
                ("attrs", c_p), ("nattrs", ct.c_uint)]


def probed(fn) -> bool:
    return ct.c_ubyte.from_address(ct.cast(fn, c_p).value).value == 0xCC


def wait_probed(fns, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(probed(f) for f in fns):
            return True
        time.sleep(0.02)
    return False


BUF = (ct.c_char * 65536)()
BUF2 = (ct.c_char * 65536)()
STREAM = 0x5151


def runtime_calls(rt, kernels) -> dict:
    out = {}
    ptr = c_p()
    out["cudaMalloc"] = rt.cudaMalloc(ct.byref(ptr), ct.c_size_t(1 << 20))
    out["cudaMemcpy"] = rt.cudaMemcpy(BUF, BUF2, ct.c_size_t(4096), 1)
    out["cudaMemcpyAsync"] = rt.cudaMemcpyAsync(BUF, BUF2, ct.c_size_t(8192), 2, c_p(STREAM))
    out["cudaMemset"] = rt.cudaMemset(BUF, 7, ct.c_size_t(512))
    out["cudaMemsetAsync"] = rt.cudaMemsetAsync(BUF, 3, ct.c_size_t(256), c_p(STREAM))
    out["cudaMemset2D"] = rt.cudaMemset2D(BUF, ct.c_size_t(64), 1, ct.c_size_t(32), ct.c_size_t(4))
    out["cudaMemset2DAsync"] = rt.cudaMemset2DAsync(BUF, ct.c_size_t(64), 2, ct.c_size_t(16),
                                                    ct.c_size_t(8), c_p(STREAM))
    out["cudaStreamSynchronize"] = rt.cudaStreamSynchronize(c_p(STREAM))
    out["cudaDeviceSynchronize"] = rt.cudaDeviceSynchronize()
    out["cudaEventSynchronize"] = rt.cudaEventSynchronize(c_p(0x6161))
    out["cudaStreamWaitEvent"] = rt.cudaStreamWaitEvent(c_p(STREAM), c_p(0x6161), 0)
    out["cudaFree"] = rt.cudaFree(c_p(0))
    out["cudaMallocAsync"] = rt.cudaMallocAsync(ct.byref(ptr), ct.c_size_t(2048), c_p(STREAM))
    out["cudaFreeAsync"] = rt.cudaFreeAsync(c_p(0), c_p(STREAM))
    out["cudaGraphLaunch"] = rt.cudaGraphLaunch(c_p(0x7171), c_p(STREAM))
    func = c_p(kernels.scale_kernel_address()) if kernels else c_p(0x1234)
    out["cudaLaunchKernel"] = rt.cudaLaunchKernel(func, Dim3(4, 2, 1), Dim3(128, 1, 1), None,
                                                  ct.c_size_t(256), c_p(STREAM))
    cfg = LaunchConfig(Dim3(8, 1, 1), Dim3(64, 2, 1), 1024, STREAM, None, 0)
    out["cudaLaunchKernelExC"] = rt.cudaLaunchKernelExC(ct.byref(cfg), func, None)
    out["func"] = func.value
    return out


def nccl_calls(nc) -> dict:
    out = {"ncclGroupStart": nc.ncclGroupStart()}
    s = c_p(STREAM)
    out["ncclAllReduce"] = nc.ncclAllReduce(BUF, BUF2, ct.c_size_t(1024), 7, 0, None, s)
    out["ncclBroadcast"] = nc.ncclBroadcast(BUF, BUF2, ct.c_size_t(100), 2, 1, None, s)
    out["ncclReduce"] = nc.ncclReduce(BUF, BUF2, ct.c_size_t(10), 8, 2, 0, None, s)
    out["ncclAllGather"] = nc.ncclAllGather(BUF, BUF2, ct.c_size_t(64), 6, None, s)
    out["ncclReduceScatter"] = nc.ncclReduceScatter(BUF, BUF2, ct.c_size_t(32), 9, 4, None, s)
    out["ncclSend"] = nc.ncclSend(BUF, ct.c_size_t(256), 0, 3, None, s)
    out["ncclRecv"] = nc.ncclRecv(BUF2, ct.c_size_t(512), 4, 2, None, s)
    out["ncclGroupEnd"] = nc.ncclGroupEnd()
    return out


def driver_calls(cu) -> dict:
    out = {}
    f, k, p = c_p(), c_p(), ct.c_uint64()
    s = c_p(STREAM)
    out["cuModuleGetFunction"] = cu.cuModuleGetFunction(ct.byref(f), c_p(0xabc),
                                                        b"_Z10vector_addPfS_S_i")
    out["cuLibraryGetKernel"] = cu.cuLibraryGetKernel(ct.byref(k), c_p(0xdef), b"_Z3foov")
    out["cuLaunchKernel"] = cu.cuLaunchKernel(f, 2, 3, 4, 32, 8, 1, 128, s, None, None)
    cfg = CuLaunchConfig(5, 1, 1, 256, 1, 1, 64, STREAM, None, 0)
    out["cuLaunchKernelEx"] = cu.cuLaunchKernelEx(ct.byref(cfg), k, None, None)
    out["cuMemcpyHtoD"] = cu.cuMemcpyHtoD_v2(ct.c_uint64(0xd000), BUF, ct.c_size_t(1000))
    out["cuMemcpyDtoH"] = cu.cuMemcpyDtoH_v2(BUF, ct.c_uint64(0xd000), ct.c_size_t(2000))
    out["cuMemcpyDtoD"] = cu.cuMemcpyDtoD_v2(ct.c_uint64(0xd000), ct.c_uint64(0xd100),
                                             ct.c_size_t(500))
    out["cuMemcpyHtoDAsync"] = cu.cuMemcpyHtoDAsync_v2(ct.c_uint64(0xd000), BUF,
                                                       ct.c_size_t(3000), s)
    out["cuMemcpyDtoHAsync"] = cu.cuMemcpyDtoHAsync_v2(BUF, ct.c_uint64(0xd000),
                                                       ct.c_size_t(4000), s)
    out["cuMemcpyDtoDAsync"] = cu.cuMemcpyDtoDAsync_v2(ct.c_uint64(0xd000), ct.c_uint64(0xd100),
                                                       ct.c_size_t(600), s)
    out["cuMemcpy"] = cu.cuMemcpy(ct.c_uint64(0xd000), ct.c_uint64(0xd100), ct.c_size_t(700))
    out["cuMemcpyAsync"] = cu.cuMemcpyAsync(ct.c_uint64(0xd000), ct.c_uint64(0xd100),
                                            ct.c_size_t(800), s)
    out["cuStreamSynchronize"] = cu.cuStreamSynchronize(s)
    out["cuCtxSynchronize"] = cu.cuCtxSynchronize()
    out["cuMemAlloc"] = cu.cuMemAlloc_v2(ct.byref(p), ct.c_size_t(4096))
    out["cuMemFree"] = cu.cuMemFree_v2(p)
    out["cuMemAllocAsync"] = cu.cuMemAllocAsync(ct.byref(p), ct.c_size_t(8192), s)
    out["cuMemFreeAsync"] = cu.cuMemFreeAsync(p, s)
    out["cuGraphLaunch"] = cu.cuGraphLaunch(c_p(0x7171), s)
    return out


RUNTIME_FNS = ["cudaLaunchKernel", "cudaMemcpy", "cudaStreamSynchronize", "cudaMalloc"]
NCCL_FNS = ["ncclAllReduce", "ncclSend", "ncclGroupStart"]
DRIVER_FNS = ["cuLaunchKernel", "cuMemcpyHtoD_v2", "cuModuleGetFunction", "cuCtxSynchronize"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cudart", required=True)
    ap.add_argument("--nccl")
    ap.add_argument("--kernels")
    ap.add_argument("--late-driver")
    ap.add_argument("--only-runtime", action="store_true")
    a = ap.parse_args()
    rt = ct.CDLL(a.cudart)
    nc = ct.CDLL(a.nccl) if a.nccl else None
    kernels = ct.CDLL(a.kernels) if a.kernels else None
    if kernels:
        kernels.scale_kernel_address.restype = c_p
    print(json.dumps({"ready": os.getpid()}), flush=True)
    sys.stdin.readline()
    result = {"pid": os.getpid(), "probed": {}}
    fns = [getattr(rt, n) for n in RUNTIME_FNS] + [getattr(nc, n) for n in NCCL_FNS if nc]
    result["probed"]["runtime"] = wait_probed(fns)

    def work():
        result["tid"] = threading.get_native_id()
        result["runtime"] = runtime_calls(rt, kernels)
        if nc is not None and not a.only_runtime:
            result["nccl"] = nccl_calls(nc)
        if a.late_driver:
            cu = ct.CDLL(a.late_driver)
            result["probed"]["driver"] = wait_probed([getattr(cu, n) for n in DRIVER_FNS])
            result["driver"] = driver_calls(cu)

    t = threading.Thread(target=work, name="cuda-worker")
    t.start()
    t.join()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
