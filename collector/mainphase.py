"""What the training loop's thread was doing in one sample, and whether it is
the training loop at all, from its Python stack: waiting for data (in a
DataLoader's __next__, or in the loop's own batch producer: a memmap
`get_batch`, a generator), computing, copying, syncing, communicating.

A loop without a DataLoader has no library frame that says "data": its
batch producer is the user function the loop calls that is neither the
model, the loss, backward nor the optimizer, and whose name says it makes
batches (get_batch, load_data, next_sample, a stream...)."""

from __future__ import annotations

import os
import re

from .steps import COMM, COMPUTE, DATA, H2D, SYNC

_DL = "torch/utils/data/dataloader.py"
_PRODUCER = re.compile(r"batch|data|load|fetch|next|sample|read|stream|input|shard|token|iter",
                       re.IGNORECASE)
# Library code a batch producer is not (nor called from): the model, autograd, the optimizer.
_NOT_PRODUCER_LIBS = ("/torch/", "/lightning/", "/pytorch_lightning/", "/transformers/",
                      "/accelerate/")
_STDLIB_MARKERS = ("/lib/python3", "<frozen")


def in_frames(frames, file_suffix: str, func: str | None = None) -> bool:
    return any(f.file.endswith(file_suffix) and (func is None or f.function.rsplit(".", 1)[-1] == func)
               for f in frames)


def label(f) -> str:
    return f"{f.function} ({os.path.basename(f.file)}:{f.line})"


def by_function(labels) -> list[dict]:
    """Producer labels ("get_batch (train.py:34)": samples) summed per function,
    each named by its most sampled line."""
    funcs: dict[str, list] = {}
    for lab, n in labels.most_common():
        f = funcs.setdefault(lab.rsplit(":", 1)[0], [lab, 0])
        f[1] += n
    top = sorted(funcs.values(), key=lambda v: -v[1])[:3]
    return [{"frame": lab, "samples": n} for lab, n in top]


def in_dataloader_next(frames) -> bool:
    return in_frames(frames, _DL, "__next__")


def loop_evidence(frames) -> bool:
    """Does this stack belong to a training loop (not a DataLoader worker)?"""
    for f in frames:
        fn = f.function.rsplit(".", 1)[-1]
        if f.file.endswith(_DL) and fn == "__next__":
            return True
        if "torch/optim/" in f.file and fn == "step":
            return True
        if (f.file.endswith("torch/_tensor.py") or f.file.endswith("torch/autograd/__init__.py")) \
                and fn == "backward":
            return True
    return False


def in_optimizer_step(frames) -> bool:
    return any("torch/optim/" in f.file and f.function.rsplit(".", 1)[-1] == "step" for f in frames)


def _user(f) -> bool:
    p = f.file
    return not any(m in p for m in _STDLIB_MARKERS) and "site-packages/" not in p \
        and "dist-packages/" not in p


def loop_frame(frames) -> tuple[str, str] | None:
    """(file, function) of the frame that calls into torch on a stack inside
    backward or the optimizer: the training loop's own frame."""
    for i, f in enumerate(frames):
        if "/torch/" in f.file:
            return (frames[i - 1].file, frames[i - 1].function) if i else None
    return None


def producer_frame(frames, loop: tuple[str, str] | None):
    """The loop's own batch producer on this stack (outermost first), or None:
    a user function named for data that the loop frame calls (before the loop
    frame is known: one called by user code, not under torch or a framework)."""
    if loop is not None:
        for i in range(len(frames) - 2, -1, -1):
            f = frames[i]
            if f.function == loop[1] and f.file == loop[0]:
                g = frames[i + 1]
                return g if _user(g) and _PRODUCER.search(g.function.rsplit(".", 1)[-1]) else None
        return None
    for i, f in enumerate(frames):
        if any(m in f.file for m in _NOT_PRODUCER_LIBS):
            return None  # under torch (the model, backward, the optimizer) or a framework
        if i and _user(f) and _PRODUCER.search(f.function.rsplit(".", 1)[-1]):
            return f
    return None


# Off-CPU inside the autograd engine: waiting for it, not running Python. In a
# CPU (gloo) DDP rank that is the reducer's all-reduce at the end of backward
# (the engine runs backward on the caller's thread, so nothing else makes it
# wait); elsewhere, the device's autograd thread. StallAnalysis.result() turns
# it into COMM or COMPUTE once it knows which job it is.
BACKWARD_WAIT = "backward_wait"


def _engine_waits(frames, state: str) -> bool:
    if state == "running" or not frames:
        return False
    f = frames[-1]
    fn = f.function.rsplit(".", 1)[-1]
    return (f.file.endswith("torch/autograd/graph.py") and fn == "_engine_run_backward") or \
        (f.file.endswith("torch/autograd/__init__.py") and fn in ("backward", "grad"))


def in_ddp(frames) -> bool:
    """A stack through DistributedDataParallel or torch.distributed: a DDP rank."""
    return any("torch/nn/parallel/distributed.py" in f.file or "torch/distributed/" in f.file
               for f in frames)


def classify(frames, state: str, cuda, main_io: bool, have_workers: bool,
             loop: tuple[str, str] | None = None) -> tuple[str, str, str]:
    """(phase, data-wait detail, producer label) of one main-thread sample.
    cuda: the CUDA/NCCL call covering the sample, (start, end, kind) or None;
    main_io: a data-file IO call covers it."""
    if cuda and cuda[2] == "h2d":
        return H2D, "", ""
    if cuda and cuda[2] == "comm" or in_frames(frames, "torch/distributed/distributed_c10d.py"):
        return COMM, "", ""
    if cuda and cuda[2] == "sync":
        return SYNC, "", ""
    if _engine_waits(frames, state):
        return BACKWARD_WAIT, "", ""
    if in_dataloader_next(frames):
        return DATA, _data_detail(frames, state, main_io, have_workers), ""
    if in_frames(frames, _DL, "__iter__"):
        return DATA, "epoch_start", ""  # a new epoch's iterator (non-persistent workers: forked now)
    p = producer_frame(frames, loop)
    if p is not None:
        return DATA, "main_fetch" if main_io else "main_produce", label(p)
    return COMPUTE, "", ""


def _data_detail(f, state: str, main_io: bool, have_workers: bool) -> str:
    """Where the main thread's data wait in a DataLoader goes."""
    if main_io:
        return "main_fetch"
    if in_frames(f, "torch/utils/data/_utils/pin_memory.py") or in_frames(f, _DL, "_pin_memory_loop"):
        return "pin"
    if in_frames(f, "torch/utils/data/_utils/collate.py"):
        return "collate"
    mp = any("/multiprocessing/" in x.file for x in f)  # a directory: in_frames matches file ends
    if in_frames(f, "torch/utils/data/_utils/fetch.py") or not mp \
            and state == "running" and not in_frames(f, "threading.py") and not in_frames(f, "queue.py"):
        return "main_transform" if not have_workers else "main_other"
    if state == "running" and (in_frames(f, "multiprocessing/queues.py")
                               or in_frames(f, "multiprocessing/connection.py")):
        return "ipc"  # unpickling a batch sent by a worker
    return "waiting_for_workers"
