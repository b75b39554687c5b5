"""A DistributedDataParallel job on CPU (gloo), one rank slow on purpose: the
straggler scenario of ../shared/STALLS.md ("one rank waits on data while
peers wait in the all-reduce"). Run under torchrun:

    python -m torch.distributed.run --nproc_per_node=2 --master_addr 127.0.0.1 \
        --master_port PORT samples/ddp_train.py [--straggler 1 --load-ms 40] [--truth DIR]

Each step: get_batch (on the straggler rank it spins --load-ms in Python, as
a loop decoding its own batch would), forward, backward (DDP's hook
all-reduces the gradients there: the faster ranks wait in it for the slow
one), optimizer step.

Ground truth: --truth DIR gets, per rank, rankR.jsonl (one line per step:
start_ns, data_ns in get_batch, backward_ns in loss.backward(), comm_ns from
the all-reduce's start in DDP's comm hook to its future's completion) and
rankR.json (rank, local_rank, pid, steps, median step ms, totals in ms, wall
ms), rewritten every 10 steps: the job is usually killed, not finished.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

BATCH, INPUT, CLASSES = 64, 256, 10


def get_batch(load_ms: float):
    """The batch producer; on the straggler it burns load_ms of CPU first."""
    end = time.monotonic() + load_ms / 1000
    n = 0
    while time.monotonic() < end:
        n += 1
    return torch.randn(BATCH, INPUT), torch.randint(0, CLASSES, (BATCH,))


class CommTime:
    """The rank's wait in its all-reduces, summed by timed_allreduce."""

    ns = 0


def timed_allreduce(state: CommTime, bucket):
    """DDP comm hook: all-reduces a bucket (mean) and times it, from the hook's
    call (the bucket's gradients are ready) to the future completing (every
    rank has sent its part): the rank's wait in the collective."""
    t0 = time.monotonic_ns()
    world = dist.get_world_size()
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()

    def done(f):
        state.ns += time.monotonic_ns() - t0
        return f.value()[0] / world

    return fut.then(done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=0, help="0 = run until killed")
    ap.add_argument("--straggler", type=int, default=-1, help="the rank that makes its batches slowly")
    ap.add_argument("--load-ms", type=float, default=40, help="the straggler's get_batch time")
    ap.add_argument("--hidden", type=int, default=1024, help="model width (sets the compute time)")
    # Not --log: torchrun's parser takes any prefix of its own --log-dir, even after the script.
    ap.add_argument("--truth", help="directory for the per-rank ground truth")
    a = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(INPUT, a.hidden), torch.nn.ReLU(),
                              torch.nn.Linear(a.hidden, a.hidden), torch.nn.ReLU(),
                              torch.nn.Linear(a.hidden, CLASSES))
    model = DistributedDataParallel(net, bucket_cap_mb=100)   # one bucket: one all-reduce per step
    timed = CommTime()
    model.register_comm_hook(timed, timed_allreduce)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    load = a.load_ms if rank == a.straggler else 0.0
    if a.truth:
        os.makedirs(a.truth, exist_ok=True)
    rows = open(os.path.join(a.truth, f"rank{rank}.jsonl"), "a") if a.truth else None
    if rank == 0:
        print(json.dumps({"ready": os.getpid()}), flush=True)
    totals = {"data_ns": 0, "backward_ns": 0, "comm_ns": 0}
    walls: list[int] = []
    first = time.monotonic_ns()
    step = 0
    while not a.steps or step < a.steps:
        t0 = time.monotonic_ns()
        x, y = get_batch(load)
        t1 = time.monotonic_ns()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        c0 = timed.ns
        t2 = time.monotonic_ns()
        loss.backward()
        t3 = time.monotonic_ns()
        opt.step()
        t4 = time.monotonic_ns()
        row = {"step": step, "start_ns": t0, "end_ns": t4, "data_ns": t1 - t0, "backward_ns": t3 - t2,
               "comm_ns": timed.ns - c0}
        for k in totals:
            totals[k] += row[k]
        walls.append(t4 - t0)
        step += 1
        if rows:
            rows.write(json.dumps(row) + "\n")
            rows.flush()
        if a.truth and (step % 10 == 0 or step == a.steps):
            _summary(a.truth, rank, local_rank, step, walls, totals, t4 - first)
    dist.destroy_process_group()


def _summary(log: str, rank: int, local_rank: int, steps: int, walls: list[int], totals: dict,
             wall_ns: int) -> None:
    doc = {"rank": rank, "local_rank": local_rank, "pid": os.getpid(), "steps": steps,
           "step_ms_median": sorted(walls)[len(walls) // 2] / 1e6, "wall_ms": wall_ns / 1e6,
           **{k.replace("_ns", "_ms_total"): v / 1e6 for k, v in totals.items()}}
    path = os.path.join(log, f"rank{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
