"""PyTorch's own step markers (probes/torchops): uprobes on the real
libtorch_cpu of a real training loop see every optimizer step, DataLoader
batch and backward pass, on the loop's thread, with names and times."""

from __future__ import annotations

from collections import Counter

import tracecheck
from conftest import Gpuscope

N = 40


def test_every_step_batch_and_backward_is_seen(tmp_path, target):
    job = target("torch_steps.py", str(N))
    out = tmp_path / "t.pftrace"
    g = Gpuscope(["attach", "-p", str(job.pid), "-o", str(out), "--no-nvml", "--no-cuda", "--no-nccl",
                  "--torch"])
    g.wait_attached()
    assert job.go() == {"steps": 2 * N}
    rc, err = g.finish()  # ends with the target
    assert rc == 0, err
    t = tracecheck.load(str(out))
    torch_slices = [x for x in t.slices if t.track_name(x.track) == "PyTorch"]
    names = Counter(x.name for x in torch_slices)
    assert names["Optimizer.step#SGD.step"] == 2 * N, names
    assert names["Optimizer.zero_grad#SGD.zero_grad"] == N, names
    assert names["backward"] == 3 * N, names
    # n batches and the __next__ that ends the epoch
    assert names["enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"] == N + 1, names
    assert all(x.end > x.start for x in torch_slices)
    assert len({x.track for x in torch_slices}) == 1  # all on the loop's thread
    assert "torch: " not in err  # no attach notices
