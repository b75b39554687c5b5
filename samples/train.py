"""A small PyTorch training job whose input pipeline can be made slow in each
way gpuscope diagnoses. The target of `make demo` and the verdict tests.

    python samples/train.py --data DIR [--make-data N] [--workers 2] ...

Ways to slow it (combine as needed):
  storage:   point --data at a samples/slowfs.py mount (real blocking reads)
  CPU:       --transform-ms X   CPU work per item in the worker (real torch ops)
  workers:   --workers N (0 = load on the main thread)
  IPC:       --payload-floats N  items carry Python lists the main thread unpickles
  epochs:    --no-persistent-workers --epoch-batches K --worker-init-ms M
  H2D:       --h2d-standin LIB --h2d-mb M  a synchronous host-to-device copy per step
             through LIB (a libcuda.so.1: the real driver, or the stand-in in
             samples/standin/ on machines without a GPU)
  control:   --compute-ms Y with fast loading = compute-bound
  loader:    --stateful  torchdata's StatefulDataLoader (a DataLoader subclass) instead
Ground truth: --log FILE gets one JSON line per step with the time the main
loop spent getting its batch (data_ns: in next(), and at an epoch's start also
ending the last epoch's iterator and iter() starting the new one, which forks
non-persistent workers) and computing (compute_ns).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset


def spin_torch(ms: float, x: torch.Tensor) -> torch.Tensor:
    """Real CPU work (small matmuls) for about ms milliseconds."""
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        x = torch.tanh(x @ x.T @ x[:, :64])[:, :64]
    return x


class FileDataset(Dataset):
    def __init__(self, root: str, transform_ms: float, payload_floats: int, limit: int):
        names = sorted(f for f in os.listdir(root) if f.endswith(".bin"))
        if not names:
            raise SystemExit(f"no .bin files in {root}: run with --make-data first")
        self.files = [os.path.join(root, f) for f in names][: limit or None]
        self.transform_ms = transform_ms
        self.payload_floats = payload_floats

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            raw = f.read()
        x = torch.frombuffer(bytearray(raw[:4096 * 4]), dtype=torch.float32).clone()
        x = torch.nan_to_num(x)[:4096]
        if self.transform_ms:
            spin_torch(self.transform_ms, torch.rand(64, 64))
        if self.payload_floats:
            return [float(v) for v in range(self.payload_floats)], i % 10
        return x, i % 10


def identity_collate(batch):
    return batch


def make_data(root: str, n: int, size: int) -> None:
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        p = os.path.join(root, f"{i:05d}.bin")
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(os.urandom(size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--make-data", type=int, default=0, help="create N sample files first")
    ap.add_argument("--file-size", type=int, default=64 * 1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--transform-ms", type=float, default=0)
    ap.add_argument("--compute-ms", type=float, default=40)
    ap.add_argument("--payload-floats", type=int, default=0)
    ap.add_argument("--pin-memory", action="store_true")
    ap.add_argument("--persistent-workers", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--epoch-batches", type=int, default=0, help="batches per epoch (0 = all files)")
    ap.add_argument("--worker-init-ms", type=float, default=0, help="work when each worker starts")
    ap.add_argument("--h2d-standin", metavar="LIB", help="libcuda.so.1 whose cuMemcpyHtoD_v2 copies each batch")
    ap.add_argument("--h2d-mb", type=float, default=64, help="MB copied host-to-device per step")
    ap.add_argument("--stateful", action="store_true", help="torchdata's StatefulDataLoader")
    ap.add_argument("--steps", type=int, default=0, help="0 = run until killed")
    ap.add_argument("--log", help="ground-truth log (JSON lines)")
    a = ap.parse_args()
    if a.make_data:
        make_data(a.data, a.make_data, a.file_size)
    torch.set_num_threads(1)
    limit = a.epoch_batches * a.batch
    ds = FileDataset(a.data, a.transform_ms, a.payload_floats, limit)
    init = (lambda _wid: spin_torch(a.worker_init_ms, torch.rand(64, 64))) if a.worker_init_ms else None
    if a.stateful:
        from torchdata.stateful_dataloader import StatefulDataLoader as Loader
    else:
        Loader = DataLoader
    loader = Loader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                        pin_memory=a.pin_memory, worker_init_fn=init,
                        persistent_workers=a.persistent_workers and a.workers > 0,
                        collate_fn=identity_collate if a.payload_floats else None)
    model = torch.nn.Sequential(torch.nn.Linear(4096, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = open(a.log, "a") if a.log else None
    copy = None
    if a.h2d_standin:
        import ctypes

        driver = ctypes.CDLL(a.h2d_standin)
        driver.cuInit(0)
        staging = torch.empty(int(a.h2d_mb * 1e6), dtype=torch.uint8)  # pageable host memory

        def copy():
            driver.cuMemcpyHtoD_v2(ctypes.c_ulonglong(0), ctypes.c_void_p(staging.data_ptr()),
                                   ctypes.c_size_t(staging.numel()))
    print(json.dumps({"ready": os.getpid()}), flush=True)
    step, state = 0, torch.rand(64, 64)
    t0 = time.monotonic_ns()
    while True:
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break  # t0 stays: the next epoch's first step waits through this and iter()
            t1 = time.monotonic_ns()
            if copy:
                copy()  # the batch to the device, synchronously (pageable memory)
            x, y = (torch.rand(len(batch), 4096), torch.zeros(len(batch), dtype=torch.long)) \
                if a.payload_floats else batch
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            state = spin_torch(a.compute_ms, state)
            del batch, x, y  # freeing a batch is step work, not time spent waiting for data
            t2 = time.monotonic_ns()
            if log:
                log.write(json.dumps({"step": step, "start_ns": t0, "data_ns": t1 - t0,
                                      "compute_ns": t2 - t1}) + "\n")
                log.flush()
            step += 1
            t0 = time.monotonic_ns()
            if a.steps and step >= a.steps:
                return


if __name__ == "__main__":
    main()
