"""What to buy or change, with the arithmetic shown: the step without its
input stall, the workers and CPU cores that would keep up, the read
bandwidth needed against what was achieved, the GPU time lost per hour, and
whether a bigger GPU helps. Each figure comes from the measured steps and
the workers' samples; where a figure cannot be known it says so."""

from __future__ import annotations

import math

from .steps import DATA


def sizing(a, steps, share: float) -> dict:
    """a: the StallAnalysis; steps: the analysed steps; share: data-wait share."""
    n = len(steps)
    wall_ms = sum(s.wall_ns for s in steps) / n / 1e6
    data_ms = sum(s.phases.get(DATA, 0) for s in steps) / n / 1e6
    compute_ms = max(wall_ms - data_ms, 1e-3)
    gpu = a.cuda_calls > 0
    out: dict = {"step_ms": round(wall_ms, 2), "data_wait_ms": round(data_ms, 2),
                 "step_ms_without_stall": round(compute_ms, 2),
                 "speedup_without_stall": round(wall_ms / compute_ms, 2), "gpu_seen": gpu}
    lines = [f"step without the input stall: {wall_ms:.1f} ms - {data_ms:.1f} ms data wait = "
             f"{compute_ms:.1f} ms, a {wall_ms / compute_ms:.2f}x speedup"]
    lost_min = 60 * share
    out["gpu_minutes_lost_per_hour"] = round(lost_min, 1)
    who = "the GPU" if gpu else "the training loop (no GPU seen: no CUDA calls)"
    lines.append(f"time lost per hour of training: {share:.1%} x 60 min = {lost_min:.1f} min of {who} "
                 "waiting for data")
    # Workers: each batch costs a worker this much of its time; to keep up, the
    # workers together must make one batch per step of compute.
    batches = len(a.markers[a.main_tid].batches) if a.main_tid in a.markers else 0
    batches = batches or n
    # Workers' time from their own samples' span (the sampler may reach them
    # less often than the loop), split by what their samples were doing.
    w = a.worker_all
    total = sum(w.values()) or 1
    worker_ms = sum(a.worker_last[p] - t for p, t in a.worker_first.items() if p in a.worker_last) / 1e6
    busy_ms = worker_ms * (w["fetch"] + w["transform"] + w["send"]) / total / batches
    cpu_ms = worker_ms * w["transform"] / total / batches
    if a.workers and busy_ms > 0:
        need = max(1, math.ceil(busy_ms / compute_ms))
        cores = max(1, math.ceil(cpu_ms / compute_ms)) + 1
        out.update(worker_ms_per_batch=round(busy_ms, 2), worker_cpu_ms_per_batch=round(cpu_ms, 2),
                   workers_needed=need, cores_needed_per_gpu=cores)
        lines.append(f"workers to keep up: {busy_ms:.1f} ms of a worker per batch / {compute_ms:.1f} ms "
                     f"of compute per step = {busy_ms / compute_ms:.2f} -> num_workers >= {need} "
                     f"(now {len(a.workers)})")
        lines.append(f"CPU cores per GPU (per training process): {cpu_ms:.1f} ms of transform CPU per batch / {compute_ms:.1f} ms = "
                     f"{cpu_ms / compute_ms:.2f} cores for loading, + 1 for the loop = {cores} "
                     f"(this machine: {a.cores})")
    elif not a.workers:
        lines.append("workers to keep up: unknown (no DataLoader workers: batches are made on the "
                     "loop's thread)")
    nbytes = sum(f[0] for f in a.files.values())
    span_s = max(1e-9, (a.last_ts - a.first_ts) / 1e9)
    if nbytes:
        per_step = nbytes / batches
        need_mbs = per_step / compute_ms / 1e3
        got_mbs = nbytes / span_s / 1e6
        out.update(read_bytes_per_step=int(per_step), read_mb_s_needed=round(need_mbs, 1),
                   read_mb_s_achieved=round(got_mbs, 1))
        lines.append(f"read bandwidth: {per_step / 1e6:.2f} MB per step / {compute_ms:.1f} ms = "
                     f"{need_mbs:.1f} MB/s needed without a stall; achieved {got_mbs:.1f} MB/s")
    else:
        lines.append("read bandwidth: unknown (no data-file reads seen: data in memory, a memmap, "
                     "or the network)")
    if not gpu:
        lines.append("bigger GPU: cannot tell (no GPU seen)")
    elif share >= 0.05:
        lines.append(f"bigger GPU: would not help: it shortens only the {compute_ms:.1f} ms of compute; "
                     f"the {data_ms:.1f} ms data wait per step stays (fix the input first)")
    else:
        lines.append("bigger GPU: may help: the step is compute (the input keeps up), "
                     "a faster GPU shortens it up to the host's own work")
    out["lines"] = lines
    return out
