"""samples/train.py's model and dataset trained by a real framework: a
Lightning Trainer (CPU), whose loop, fetcher and optimizer wrapper sit
between the user's code and torch. The verdict must find its steps as in a
plain loop.

    python samples/lightning_train.py --data DIR [--workers 1] [--transform-ms 12] ...

Ground truth: --log FILE gets one JSON line per batch: when the loop asked
the DataLoader for it (start_ns), how long that took (data_ns), and the time
until it asked for the next one (compute_ns). The DataLoader's iterator is
wrapped to time it, as a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import lightning as L
import torch
from torch.utils.data import DataLoader
from train import FileDataset, spin_torch


class TimedLoader(DataLoader):
    """A DataLoader whose iterator logs each batch's wait (the ground truth)."""

    log = None

    def __iter__(self):
        it = super().__iter__()
        last = None
        while True:
            t0 = time.monotonic_ns()
            if last is not None and self.log:
                self.log.write(json.dumps({"start_ns": last[0], "data_ns": last[1] - last[0],
                                           "compute_ns": t0 - last[1]}) + "\n")
                self.log.flush()
            try:
                batch = next(it)
            except StopIteration:
                return
            last = (t0, time.monotonic_ns())
            yield batch


class Model(L.LightningModule):
    def __init__(self, compute_ms: float):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4096, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        self.compute_ms = compute_ms
        self.state = torch.rand(64, 64)

    def training_step(self, batch, _idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.state = spin_torch(self.compute_ms, self.state)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--transform-ms", type=float, default=0)
    ap.add_argument("--compute-ms", type=float, default=30)
    ap.add_argument("--log")
    a = ap.parse_args()
    torch.set_num_threads(1)
    loader = TimedLoader(FileDataset(a.data, a.transform_ms, 0, 0), batch_size=a.batch, shuffle=True,
                         num_workers=a.workers, persistent_workers=a.workers > 0)
    TimedLoader.log = open(a.log, "a") if a.log else None
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    trainer.fit(Model(a.compute_ms), train_dataloaders=loader)


if __name__ == "__main__":
    main()
