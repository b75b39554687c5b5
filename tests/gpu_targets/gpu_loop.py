"""A DataLoader training loop whose GPU work goes through the driver
stand-in (libcuda.so.1 on LD_LIBRARY_PATH, $STUB_KERNEL_US per kernel): each
step waits ~15 ms for its batch, then launches 4 kernels on one stream and
synchronises.

    gpu_loop.py STEPS

Prints {"ready": pid}, waits for a line on stdin, runs, then prints one JSON
line: the stand-in's busy and late ns for the stream and the loop's
CLOCK_MONOTONIC start and end.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

cu = ct.CDLL("libcuda.so.1")
S = ct.c_void_p(0xa1)


class Slow(Dataset):
    def __len__(self) -> int:
        return 1 << 20

    def __getitem__(self, i: int):
        time.sleep(0.015)
        return torch.zeros(4)


def main() -> None:
    steps = int(sys.argv[1])
    print(json.dumps({"ready": os.getpid()}), flush=True)
    sys.stdin.readline()
    it = iter(DataLoader(Slow(), batch_size=1, num_workers=0))
    t0 = time.monotonic_ns()
    for _ in range(steps):
        next(it)
        for _ in range(4):
            cu.cuLaunchKernel(ct.c_void_p(0xf00d), 1, 1, 1, 32, 1, 1, 0, S, None, None)
        cu.cuStreamSynchronize(S)
    t1 = time.monotonic_ns()
    cu.standin_stream_busy_ns.restype = cu.standin_stream_late_ns.restype = ct.c_uint64
    print(json.dumps({"pid": os.getpid(), "busy_ns": cu.standin_stream_busy_ns(S),
                      "late_ns": cu.standin_stream_late_ns(S), "start_ns": t0, "end_ns": t1}),
          flush=True)


if __name__ == "__main__":
    main()
