"""CUDA runtime, driver and NCCL probes on the real libraries, end to end.

The target (gpu_targets/cuda_calls.py) loads the real libcudart.so.12
(nvidia-cuda-runtime-cu12) and libnccl.so.2 (nvidia-nccl-cu12) and calls every
probed function with known arguments; without a GPU they return errors (35,
ncclInvalidArgument), but they run, and the probes fire on the real binaries.

One stand-in: the driver, libcuda.so.1, cannot exist without a GPU. The test
builds gpu_targets/libcuda_stub.c as a tiny libcuda.so.1 exporting the driver
entry points under their real names (the _v2 ones included), so the driver
probes fire on a real ELF in a real process. The target dlopens it only after
gpuscope attached: that is also the "library mapped after attach" case.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tracecheck
from conftest import Gpuscope, Target

HERE = Path(__file__).resolve().parent
GPU_TARGETS = HERE / "gpu_targets"
NVIDIA = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" \
    / "site-packages" / "nvidia"
CUDART = NVIDIA / "cuda_runtime" / "lib" / "libcudart.so.12"
NCCL = NVIDIA / "nccl" / "lib" / "libnccl.so.2"


def _need(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"{path} is missing: pip install the test extras (nvidia-*-cu12)")
    return str(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
    """The driver stand-in and a library with a C++-mangled "kernel" host stub."""
    d = tmp_path_factory.mktemp("gpulibs")
    stub, kern = d / "libcuda.so.1", d / "libkernels.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(stub),
                    str(GPU_TARGETS / "libcuda_stub.c")], check=True)
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-o", str(kern),
                    str(GPU_TARGETS / "kernels.cpp")], check=True)
    return {"driver": str(stub), "kernels": str(kern)}


def start_target(*args: str) -> Target:
    return Target([sys.executable, str(GPU_TARGETS / "cuda_calls.py"), *args])


RUNTIME_ARGS = {
    "cudaMalloc": {"bytes": 1 << 20},
    "cudaMemcpy": {"kind": "HtoD", "bytes": 4096},
    "cudaMemcpyAsync": {"kind": "DtoH", "bytes": 8192, "stream": "0x5151"},
    "cudaMemset": {"value": 7, "bytes": 512},
    "cudaMemsetAsync": {"value": 3, "bytes": 256, "stream": "0x5151"},
    "cudaMemset2D": {"pitch": 64, "width": 32, "height": 4, "bytes": 128},
    "cudaMemset2DAsync": {"width": 16, "height": 8, "bytes": 128, "stream": "0x5151"},
    "cudaStreamSynchronize": {"stream": "0x5151"},
    "cudaDeviceSynchronize": {},
    "cudaEventSynchronize": {"event": "0x6161"},
    "cudaStreamWaitEvent": {"stream": "0x5151", "event": "0x6161"},
    "cudaFree": {"ptr": "0x0"},
    "cudaMallocAsync": {"bytes": 2048, "stream": "0x5151"},
    "cudaFreeAsync": {"ptr": "0x0", "stream": "0x5151"},
    "cudaGraphLaunch": {"graph": "0x7171", "stream": "0x5151"},
    "cudaLaunchKernel": {"kernel": "void mykernels::scale_kernel<float>(float*, int, float)",
                         "grid": "4x2x1", "block": "128x1x1", "shared_mem": 256,
                         "stream": "0x5151"},
    "cudaLaunchKernelExC": {"kernel": "void mykernels::scale_kernel<float>(float*, int, float)",
                            "grid": "8x1x1", "block": "64x2x1", "shared_mem": 1024,
                            "stream": "0x5151"},
}
DRIVER_ARGS = {
    "cuModuleGetFunction": {"name": "vector_add(float*, float*, float*, int)",
                            "module": "0xabc", "function": "0xf00d"},
    "cuLibraryGetKernel": {"name": "foo()", "library": "0xdef", "function": "0xbeef"},
    "cuLaunchKernel": {"kernel": "vector_add(float*, float*, float*, int)", "grid": "2x3x4",
                       "block": "32x8x1", "shared_mem": 128, "stream": "0x5151"},
    "cuLaunchKernelEx": {"kernel": "foo()", "grid": "5x1x1", "block": "256x1x1",
                         "shared_mem": 64, "stream": "0x5151"},
    "cuMemcpyHtoD": {"kind": "HtoD", "bytes": 1000, "dst": "0xd000"},
    "cuMemcpyDtoH": {"kind": "DtoH", "bytes": 2000, "src": "0xd000"},
    "cuMemcpyDtoD": {"kind": "DtoD", "bytes": 500, "dst": "0xd000", "src": "0xd100"},
    "cuMemcpyHtoDAsync": {"kind": "HtoD", "bytes": 3000, "stream": "0x5151"},
    "cuMemcpyDtoHAsync": {"kind": "DtoH", "bytes": 4000, "stream": "0x5151"},
    "cuMemcpyDtoDAsync": {"kind": "DtoD", "bytes": 600, "stream": "0x5151"},
    "cuMemcpy": {"bytes": 700},
    "cuMemcpyAsync": {"bytes": 800, "stream": "0x5151"},
    "cuStreamSynchronize": {"stream": "0x5151"},
    "cuCtxSynchronize": {},
    "cuMemAlloc": {"bytes": 4096, "ptr": "0xd000"},
    "cuMemFree": {"ptr": "0xd000"},
    "cuMemAllocAsync": {"bytes": 8192, "ptr": "0xe000", "stream": "0x5151"},
    "cuMemFreeAsync": {"ptr": "0xe000", "stream": "0x5151"},
    "cuGraphLaunch": {"graph": "0x7171", "stream": "0x5151"},
}
NCCL_ARGS = {
    "ncclGroupStart": {},
    "ncclAllReduce": {"op": "AllReduce", "count": 1024, "datatype": "float32", "bytes": 4096,
                      "reduce": "sum", "comm": "0x0", "stream": "0x5151"},
    "ncclBroadcast": {"count": 100, "datatype": "int32", "bytes": 400, "root": 1},
    "ncclReduce": {"count": 10, "datatype": "float64", "bytes": 80, "reduce": "max", "root": 0,
                   "comm": "0x0", "stream": "0x5151"},
    "ncclAllGather": {"count": 64, "datatype": "float16", "bytes": 128, "stream": "0x5151"},
    "ncclReduceScatter": {"count": 32, "datatype": "bfloat16", "bytes": 64, "reduce": "avg",
                          "stream": "0x5151"},
    "ncclSend": {"count": 256, "datatype": "int8", "bytes": 256, "peer": 3, "stream": "0x5151"},
    "ncclRecv": {"count": 512, "datatype": "int64", "bytes": 4096, "peer": 2},
    "ncclGroupEnd": {},
}


def check_calls(t, track: str, expected: dict, codes: dict, pid: int, tid: int) -> None:
    slices = [s for s in t.slices_on(track) if t.thread_of(s.track) == (pid, tid)]
    by = {}
    for s in slices:
        assert s.name not in by, f"{s.name} traced twice"
        by[s.name] = s
    assert set(by) == set(expected), (sorted(set(expected) - set(by)), sorted(set(by) - set(expected)))
    for name, want in expected.items():
        s = by[name]
        assert s.end >= s.start
        assert s.args["ret"] == codes[name], (name, s.args)
        if codes[name]:
            assert s.args["error"], (name, s.args)
        for k, v in want.items():
            assert s.args.get(k) == v, (name, k, s.args)


def test_cuda_nccl_calls_end_to_end(tmp_path, built):
    cudart, nccl = _need(CUDART), _need(NCCL)
    target = start_target("--cudart", cudart, "--nccl", nccl, "--kernels", built["kernels"],
                          "--late-driver", built["driver"])
    # A process outside the target tree using the same library at the same time.
    other = start_target("--cudart", cudart, "--only-runtime")
    out = tmp_path / "cuda.pftrace"
    g = Gpuscope(["attach", "-p", str(target.pid), "-o", str(out), "-d", "60", "--no-sched"])
    try:
        g.wait_attached()
        did = target.go()
        other_did = other.go()
        rc, err = g.finish()
    finally:
        target.kill()
        other.kill()
        if g.proc.poll() is None:
            g.proc.kill()
    assert rc == 0, err
    assert did["probed"] == {"runtime": True, "driver": True}, did
    assert other_did["probed"]["runtime"], other_did
    t = tracecheck.load(str(out))
    pid, tid = did["pid"], did["tid"]
    assert tid != pid  # calls made on a worker thread land on that thread's track
    check_calls(t, "CUDA", {**RUNTIME_ARGS, **DRIVER_ARGS}, {**did["runtime"], **did["driver"]},
                pid, tid)
    check_calls(t, "NCCL", NCCL_ARGS, did["nccl"], pid, tid)
    by = {s.name: s for s in t.slices_on("CUDA")}
    assert by["cudaMalloc"].args["error"] == "cudaErrorInsufficientDriver"
    assert by["cuLaunchKernel"].args["error"] == "CUDA_ERROR_NO_DEVICE"
    assert by["cuCtxSynchronize"].end - by["cuCtxSynchronize"].start >= 2_000_000  # stub sleeps
    # The other process called the same probed functions: not one of its calls is there.
    assert other_did["pid"] not in {t.thread_of(s.track)[0] for s in t.slices}
    assert other_did["pid"] not in {p for p, _ in t.processes.values()}
    # Derived per-process rates.
    launches = t.counter_named("CUDA kernel launches/s")
    assert launches and max(v for _, v in launches) > 0
    h2d = t.counter_named("CUDA H2D bytes/s")
    assert h2d and max(v for _, v in h2d) > 0
    sync = t.counter_named("CUDA sync share")
    assert sync and max(v for _, v in sync) > 0
    assert "nvml: NVML not available" in err  # no NVML here: one notice, capture went on


def test_event_structs_agree_and_symbols_resolve(built):
    """The C structs BCC decodes match cuda.h/nccl.h, and symbol lookup finds
    the mangled host stub through the load bias of a mapping."""
    from bcc.table import _get_event_class

    from gpuscope.probes.cuda import FUNCTIONS, CudaProbe
    from gpuscope.probes.gpulibs import CUDART as K_CUDART
    from gpuscope.probes.gpulibs import Symbolizer, classify
    from gpuscope.probes.kernel import KernelProbes
    from gpuscope.probes.nccl import NcclProbe

    kp = KernelProbes([CudaProbe(), NcclProbe()])
    kp.start([])
    try:
        size = {r: ctypes.sizeof(_get_event_class(kp.bpf[r])) for r in ("cuda_events", "nccl_events")}
        assert size == {"cuda_events": 2 * 8 + 4 * 4 + 11 * 8 + 64,
                        "nccl_events": 2 * 8 + 4 * 4 + 8 * 8}
    finally:
        kp.stop()
    assert FUNCTIONS[1] == "cudaLaunchKernel" and FUNCTIONS[50] == "cuLaunchKernel"
    assert classify(_need(CUDART)) == K_CUDART
    lib = ctypes.CDLL(built["kernels"])
    lib.scale_kernel_address.restype = ctypes.c_void_p
    name = Symbolizer().name(os.getpid(), lib.scale_kernel_address())
    assert name == "void mykernels::scale_kernel<float>(float*, int, float)"
