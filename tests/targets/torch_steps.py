"""A tiny CPU training loop with exactly known markers: N optimizer steps
(SGD), each with one DataLoader batch and one backward pass, then a
gradient-accumulation phase (2 backward passes per step), then exit.
Prints {"ready": pid} with torch loaded, and starts on a line on stdin."""

import json
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

n = int(sys.argv[1])
torch.set_num_threads(1)
model = torch.nn.Linear(16, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(torch.rand(n, 16), torch.zeros(n, dtype=torch.long)), batch_size=1)
print(json.dumps({"ready": os.getpid()}), flush=True)
sys.stdin.readline()
for x, y in loader:  # n batches, then one __next__ that raises StopIteration
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
for _ in range(n):
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(torch.rand(1, 16)), torch.zeros(1, dtype=torch.long)).backward()
    opt.step()
print(json.dumps({"steps": 2 * n}), flush=True)
