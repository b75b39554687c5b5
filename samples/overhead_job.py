"""Work-bound training jobs for bench/bench_overhead.py: a fixed amount of CPU work
per item and per step (not a fixed time, as samples/train.py's spin does), so any CPU
a profiler takes from the machine shows up as fewer steps per second.

    python samples/overhead_job.py --mode input --log steps.jsonl
    python samples/overhead_job.py --mode compute --log steps.jsonl

  input:   one DataLoader worker runs a CPU-heavy transform (torch ops + a little
           pure Python) while the main loop trains a small MLP: both cores busy.
  compute: cheap items, a heavier main loop on one core; the other core is free.
The log gets one line per step: {"t": CLOCK_MONOTONIC ns at the step's end}.

--profiler-signals: torch.profiler cannot attach from outside, so SIGUSR1 starts it
(CPU, with_stack, record_shapes) in this process and SIGUSR2 stops it; each answers
one JSON line on stdout once done, so the caller keeps the stop's post-processing
(and --profiler-export) out of its measured window. Only handlers are installed:
nothing runs while it is off.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import torch
import torch.profiler
from torch.utils.data import DataLoader, Dataset


class Items(Dataset):
    def __init__(self, work: int, py_work: int, dim: int):
        self.work, self.py_work, self.dim = work, py_work, dim

    def __len__(self):
        return 1 << 30

    def __getitem__(self, i):
        x = torch.full((48, 48), 1.0 / (1 + i % 7))
        for _ in range(self.work):
            x = torch.tanh(x @ x)
        acc = 0
        for k in range(self.py_work):  # Python-level work: deep-ish, changing stacks
            acc += k * k % 7
        v = torch.empty(self.dim)
        v.fill_(float(acc % 3))
        v[: 48] = x[0]
        return v, i % 10


class SignalProfiler:
    """torch.profiler on at SIGUSR1, off at SIGUSR2 (main process only: the DataLoader
    worker is another process). The handlers run in the main thread between bytecodes."""

    def __init__(self, export: str | None):
        self.export, self.prof = export, None
        signal.signal(signal.SIGUSR1, self.start)
        signal.signal(signal.SIGUSR2, self.stop)

    def start(self, *_) -> None:
        if self.prof is None:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                               with_stack=True, record_shapes=True)
            self.prof.start()
        print(json.dumps({"profiler": "on"}), flush=True)

    def stop(self, *_) -> None:
        t0 = time.monotonic()
        if self.prof is not None:
            self.prof.stop()
            if self.export:
                self.prof.export_chrome_trace(self.export)
            self.prof = None  # discarded: the next start begins empty
        print(json.dumps({"profiler": "off", "stop_s": time.monotonic() - t0}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("input", "compute"), default="input")
    ap.add_argument("--log", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--item-work", type=int, help="matmuls per item (default by mode)")
    ap.add_argument("--item-py", type=int, help="Python loop iterations per item")
    ap.add_argument("--step-work", type=int, help="forward/backward passes per step")
    ap.add_argument("--profiler-signals", action="store_true",
                    help="SIGUSR1/SIGUSR2 switch torch.profiler on/off in this process")
    ap.add_argument("--profiler-export", metavar="JSON",
                    help="with --profiler-signals: write each stop's Chrome trace here")
    a = ap.parse_args()
    if a.profiler_export and not a.profiler_signals:
        ap.error("--profiler-export needs --profiler-signals")
    torch.set_num_threads(1)
    input_mode = a.mode == "input"
    item_work = a.item_work if a.item_work is not None else (180 if input_mode else 0)
    item_py = a.item_py if a.item_py is not None else (10000 if input_mode else 0)
    step_work = a.step_work if a.step_work is not None else (9 if input_mode else 60)
    dim = 256
    loader = DataLoader(Items(item_work, item_py, dim), batch_size=a.batch, num_workers=1,
                        persistent_workers=True, prefetch_factor=2)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = open(a.log, "a", buffering=1)
    ready = False
    for x, y in loader:
        for _ in range(step_work):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        log.write(f'{{"t": {time.monotonic_ns()}}}\n')
        if not ready:  # after the first step: lazy imports done (a handler must not race them)
            if a.profiler_signals:
                SignalProfiler(a.profiler_export)
            print(json.dumps({"ready": os.getpid()}), flush=True)
            ready = True


if __name__ == "__main__":
    main()
