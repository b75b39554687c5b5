"""A training loop without a DataLoader, the way nanoGPT's train.py and the
LLM tutorials that copy it read data: random windows of a token file through
np.memmap in a `get_batch`, a small GPT-like model, AdamW, CPU torch.

    python samples/memmap_train.py --data DIR [--steps N] [--log FILE]

--get-batch-ms adds CPU work to get_batch (to make it input-bound on purpose).
Ground truth: --log FILE gets one JSON line per step: the time in get_batch
(data_ns) and in the rest of the step (compute_ns).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

BLOCK, BATCH, VOCAB = 64, 8, 256


def make_tokens(path: str, n: int = 2_000_000) -> None:
    if not os.path.exists(path):
        np.random.default_rng(0).integers(0, VOCAB, n, dtype=np.uint16).tofile(path)


def get_batch(data_dir: str, extra_ms: float):
    # As nanoGPT: a new memmap per batch (avoids its memory leak), random windows.
    data = np.memmap(os.path.join(data_dir, "train.bin"), dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - BLOCK, (BATCH,))
    x = torch.stack([torch.from_numpy(data[i:i + BLOCK].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK].astype(np.int64)) for i in ix])
    end = time.monotonic() + extra_ms / 1000
    while time.monotonic() < end:
        pass
    return x, y


class TinyGPT(torch.nn.Module):
    def __init__(self, dim: int = 128, layers: int = 2):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, dim)
        self.pos = torch.nn.Parameter(torch.zeros(BLOCK, dim))
        layer = torch.nn.TransformerEncoderLayer(dim, 4, 4 * dim, batch_first=True, dropout=0.0)
        self.blocks = torch.nn.TransformerEncoder(layer, layers)
        self.head = torch.nn.Linear(dim, VOCAB)

    def forward(self, idx, targets):
        mask = torch.nn.Transformer.generate_square_subsequent_mask(idx.shape[1])
        h = self.blocks(self.emb(idx) + self.pos, mask=mask, is_causal=True)
        logits = self.head(h)
        return logits, torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=0, help="0 = run until killed")
    ap.add_argument("--get-batch-ms", type=float, default=0)
    ap.add_argument("--log")
    a = ap.parse_args()
    os.makedirs(a.data, exist_ok=True)
    make_tokens(os.path.join(a.data, "train.bin"))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    log = open(a.log, "a") if a.log else None
    print(json.dumps({"ready": os.getpid()}), flush=True)
    step = 0
    while not a.steps or step < a.steps:
        t0 = time.monotonic_ns()
        x, y = get_batch(a.data, a.get_batch_ms)
        t1 = time.monotonic_ns()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.monotonic_ns()
        if log:
            log.write(json.dumps({"step": step, "start_ns": t0, "data_ns": t1 - t0,
                                  "compute_ns": t2 - t1}) + "\n")
            log.flush()
        step += 1


if __name__ == "__main__":
    main()
