"""A small PyTorch training job whose DataLoader workers read samples from
files: the bundled target for `make demo` and the tests.

    python samples/file_loader.py --data DIR [--workers 2] [--steps 0 (forever)]

Writes its own ground truth (time blocked in the DataLoader vs computing)
to --log as JSON lines, so a profiler's numbers can be checked against it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset


class FileDataset(Dataset):
    def __init__(self, root: str):
        self.files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".bin"))
        if not self.files:
            raise SystemExit(f"no .bin files in {root}: run with --make-data first")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            raw = f.read()
        x = torch.frombuffer(bytearray(raw), dtype=torch.uint8)[:4096].float() / 255
        return x, i % 10


def make_data(root: str, n: int, size: int) -> None:
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        p = os.path.join(root, f"{i:05d}.bin")
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(os.urandom(size))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--make-data", type=int, default=0, help="create N sample files first")
    ap.add_argument("--file-size", type=int, default=64 * 1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=0, help="0 = run until killed")
    ap.add_argument("--log", help="ground-truth log (JSON lines)")
    a = ap.parse_args()
    if a.make_data:
        make_data(a.data, a.make_data, a.file_size)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(4096, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(FileDataset(a.data), batch_size=a.batch, shuffle=True,
                        num_workers=a.workers, persistent_workers=a.workers > 0)
    log = open(a.log, "a") if a.log else None
    print(json.dumps({"ready": os.getpid()}), flush=True)
    step = 0
    while True:
        it = iter(loader)
        while True:
            t0 = time.monotonic_ns()
            try:
                x, y = next(it)
            except StopIteration:
                break
            t1 = time.monotonic_ns()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.monotonic_ns()
            if log:
                log.write(json.dumps({"step": step, "data_ns": t1 - t0, "compute_ns": t2 - t1,
                                      "start_ns": t0}) + "\n")
                log.flush()
            step += 1
            if a.steps and step >= a.steps:
                return


if __name__ == "__main__":
    main()
