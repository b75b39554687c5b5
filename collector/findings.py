"""The verdict's findings: the rules applied to a stall analysis' numbers,
each finding with its numbers, evidence and the fix to try. Thresholds from
../shared/STALLS.md (see stalls.py)."""

from __future__ import annotations

from collections import Counter

from . import mainphase
from .steps import DATA, H2D

HIGH, MODERATE = 0.20, 0.05


def findings(a, steps, wall, share, phase_ns) -> list[dict]:
    """The findings, each with its numbers, evidence and fix (a: the StallAnalysis)."""
    out = []
    stall_ns = phase_ns[DATA]
    stall_ms = stall_ns / 1e6
    n_workers = concurrent_workers(a)
    detail: Counter[str] = Counter()  # where the analysed steps' data wait went
    for st in steps:
        detail.update(st.detail)
    dtotal = sum(detail.values()) or 1
    wcat = a.worker_cat
    wtotal = sum(wcat.values()) or 1
    frac = {k: wcat[k] / wtotal for k in ("fetch", "transform", "wait_index", "send", "other", "startup")}
    waiting = detail["waiting_for_workers"] / dtotal

    def add(kind, title, severity, weight_ms, numbers, evidence, fix):
        out.append({"kind": kind, "title": title, "severity": severity, "stall_ms": round(weight_ms, 1),
                    "numbers": numbers, "evidence": evidence, "fix": fix})

    producers = mainphase.by_function(a.producers)
    prod = producers[0]["frame"] if producers else None
    own = prod is not None and not a.dataloader_seen   # no DataLoader: the loop's own producer
    io_b, io_n, io_ns, mmaps = a.main_io
    prod_ev = [f"batches made on the loop's thread by {prod}: {stall_ms / len(steps):.1f} ms/step",
               f"file IO on the loop's thread: {io_n} calls, {io_b / 1e6:.1f} MB read, {io_ns / 1e6:.0f} ms"
               + (f" ({mmaps} mmaps: reads through a memmap are page faults, not syscalls)" if mmaps else "")
               ] if own else []
    if share < MODERATE:
        add("not_input_bound", f"Not input-bound: {share:.1%} of step time waits for data",
            "info", 0, {"data_wait_share": round(share, 4), **({"producer": prod} if own else {})},
            [f"{len(steps)} steps, median {median_ms(steps):.1f} ms, data wait {stall_ms / len(steps):.1f} ms/step"]
            + prod_ev, "Look at compute: the input pipeline keeps up.")
    sev = "high" if share >= HIGH else "medium"
    lat = sorted(a.read_lat)
    io_numbers = {"files": len(a.files), "bytes": sum(f[0] for f in a.files.values()),
                  "reads": sum(f[1] for f in a.files.values()),
                  "read_latency_ms_mean": round(sum(lat) / len(lat) / 1e6, 2) if lat else 0,
                  "read_latency_ms_p95": round(lat[int(0.95 * (len(lat) - 1))] / 1e6, 2) if lat else 0}
    top_frames = [" <- ".join(reversed(k[-3:])) for k, _ in a.stall_frames.most_common(3)]
    if share >= MODERATE and own:
        add("loop_producer_stall", f"The loop makes its own batches: {prod} takes {share:.0%} of step time",
            sev, stall_ms, {"producer": prod, "loading_share": round(share, 4), "main_read_bytes": io_b,
                            "main_reads": io_n}, prod_ev,
            "Make the next batch while this step computes: a DataLoader with workers over the same "
            "reads (or a prefetching thread), pinned memory and non_blocking copies.")
    elif share >= MODERATE and n_workers == 0:
        main_fetch = detail["main_fetch"] / dtotal
        add("too_few_workers", "num_workers=0: the training loop loads every batch itself", sev,
            stall_ms, {"num_workers": 0, "cores": a.cores, "loading_share": round(share, 4),
                       "storage_share_of_loading": round(main_fetch, 3)},
            [f"main thread in dataset code for {stall_ms / len(steps):.1f} ms/step",
             f"{main_fetch:.0%} of that blocked in file reads"],
            f"Set DataLoader(num_workers={max(2, min(8, a.cores))}) so loading overlaps compute.")
    if share >= MODERATE and n_workers > 0:
        ws = stall_ms * waiting
        blamed = waiting >= 0.2  # the loop waits on its workers: what they do is the cause
        if blamed and frac["fetch"] >= 0.35 and frac["fetch"] >= frac["transform"]:
            add("storage_fetch_stall", "Storage fetch stall: workers are blocked reading files", sev,
                ws * max(frac["fetch"], 0.5), {**io_numbers, "worker_time_reading": round(frac["fetch"], 3)},
                [f"workers spent {frac['fetch']:.0%} of stall time in read/open syscalls",
                 f"{io_numbers['reads']} reads, mean {io_numbers['read_latency_ms_mean']} ms, "
                 f"p95 {io_numbers['read_latency_ms_p95']} ms"],
                "Faster or local storage (cache the dataset on local NVMe/RAM), larger sequential "
                "files (shards), or more workers to overlap the latency.")
        if blamed and frac["transform"] >= 0.35 and frac["transform"] > frac["fetch"]:
            add("cpu_preprocessing_stall", "CPU preprocessing stall: workers are busy transforming", sev,
                ws * max(frac["transform"], 0.5), {"worker_time_transforming": round(frac["transform"], 3),
                                                    "num_workers": n_workers, "cores": a.cores},
                [f"workers on CPU in transforms {frac['transform']:.0%} of stall time"] + top_frames,
                "Make the transform cheaper (decode at lower resolution, move augmentation to the GPU), "
                "cache preprocessed samples, or add CPU cores/workers.")
        busy = frac["fetch"] + frac["transform"] + frac["send"]
        runq = sum(a.runq_ns[p] for p in a.workers) / max(1, a.last_ts - a.first_ts) / max(1, n_workers)
        if n_workers > 2 * a.cores or (runq >= 0.25 and n_workers > a.cores):
            add("too_many_workers", f"Too many workers: {n_workers} on {a.cores} cores", "medium",
                ws * 0.5, {"num_workers": n_workers, "cores": a.cores, "worker_runqueue_share": round(runq, 3)},
                [f"{n_workers} workers for {a.cores} cores; each waits {runq:.0%} of the time for a CPU"],
                f"Use about {max(1, a.cores)} workers (one per core left for loading).")
        elif busy >= 0.8 and waiting >= 0.5:
            more = n_workers * 2 if frac["fetch"] >= frac["transform"] else min(2 * n_workers, max(n_workers + 1, a.cores))
            add("too_few_workers", f"Too few workers: all {n_workers} busy while the loop waits", sev,
                ws * 0.4, {"num_workers": n_workers, "cores": a.cores, "workers_busy": round(busy, 3)},
                [f"workers busy {busy:.0%} of stall time"], f"Try num_workers={more}.")
        ipc = (detail["ipc"] + detail["collate"] + detail["pin"]) / dtotal
        if ipc >= 0.3 or (frac["wait_index"] >= 0.5 and waiting < 0.5):
            add("ipc_collate_pin_bound", "IPC / collate / pin-memory bound: the loop is busy receiving batches",
                sev, stall_ms * max(ipc, 0.5), {"ipc_share_of_wait": round(detail["ipc"] / dtotal, 3),
                                                "collate_share_of_wait": round(detail["collate"] / dtotal, 3),
                                                "pin_share_of_wait": round(detail["pin"] / dtotal, 3),
                                                "workers_idle": round(frac["wait_index"], 3)},
                [f"main thread unpickling/collating/pinning {ipc:.0%} of its data wait",
                 f"workers idle waiting for work {frac['wait_index']:.0%} of stall time"],
                "Send tensors, not Python objects (torch shares tensor storage instead of pickling), "
                "collate in the workers, keep batches compact.")
        respawn = _respawn_stall(a, steps)
        if respawn is not None and respawn[0] >= 0.4:
            add("epoch_start_stall", "Epoch-start stall: workers are restarted every epoch", sev,
                stall_ms * max(respawn[0], frac["startup"]), {"worker_starts": respawn[1], "stall_share_after_restart": round(respawn[0], 3)},
                [f"{respawn[1]} worker processes started during the capture",
                 f"{respawn[0]:.0%} of the data wait falls in the first step after a restart",
                 f"workers spent {frac['startup']:.0%} of stall time starting up"],
                "DataLoader(persistent_workers=True) keeps workers (and their state) across epochs.")
    h2d_share = phase_ns[H2D] / wall
    if h2d_share >= 0.10:
        add("h2d_copy_bound", f"Host-to-device copies take {h2d_share:.0%} of step time", "medium",
            phase_ns[H2D] / 1e6, {"h2d_share": round(h2d_share, 4), "h2d_bytes": a.h2d_bytes},
            ["synchronous cudaMemcpy/cuMemcpyHtoD on the training loop's thread"],
            "pin_memory=True and .to(device, non_blocking=True) so copies overlap compute.")
    return out

def _respawn_stall(a, steps):
    starts = sorted(ts for ts in a.worker_first.values())
    if len(starts) < 2 or len(a.workers) <= concurrent_workers(a):
        return None
    # New workers after the first set: the steps they were started in.
    first = starts[0]
    late = [ts for ts in starts if ts - first > 1e9]
    if not late:
        return None
    total = sum(s.phases.get(DATA, 0) for s in steps) or 1
    hit = 0
    for s in steps:
        if any(s.start_ns - 2e9 <= ts <= s.end_ns for ts in late):
            hit += s.phases.get(DATA, 0)
    return hit / total, len(a.workers)

def concurrent_workers(a) -> int:
    """num_workers as observed: the most worker processes alive at once."""
    edges = []
    for pid, ts in a.worker_first.items():
        edges += [(ts, 1), (a.exited.get(pid, a.last_ts + 1), -1)]
    best = cur = 0
    for _, d in sorted(edges):
        cur += d
        best = max(best, cur)
    return best

def median_ms(steps) -> float:
    return sorted(s.wall_ns for s in steps)[len(steps) // 2] / 1e6

def headline(level, share, findings, steps) -> str:
    if level == "no":
        text = f"Not input-bound: {share:.1%} of step time waits for data ({len(steps)} steps)"
        if findings and findings[0]["kind"] != "not_input_bound":
            text += " — but " + findings[0]["title"][0].lower() + findings[0]["title"][1:]
        return text
    cause = findings[0]["title"] if findings else "cause not identified"
    return f"Input-bound ({level}): {share:.0%} of step time waits for data — {cause}"
