"""The pipeline on real eBPF: consumers added and removed while it runs (as a
sidecar capture is), the prelude fed first, nothing after removal, ticks,
fork/exit followed, typed statistics that match what was delivered."""

from __future__ import annotations

import sys
import threading
import time

from gpuscope.collector.pipeline import Pipeline
from gpuscope.probes.events import Instant, Span
from gpuscope.probes.io import IoProbe
from gpuscope.probes.kernel import KernelProbes
from gpuscope.probes.proc import ProcProbe

from conftest import Target

# Once told to go, reads a regular file (data IO, shipped one by one) for ~3 s
# and forks a child that reads it too.
READER = ("import json, os, sys, time\nprint(json.dumps({'ready': os.getpid()}), flush=True)\n"
          "fd = os.open(sys.executable, os.O_RDONLY)\nsys.stdin.readline()\n"
          "def spin(s):\n    end = time.monotonic() + s\n    while time.monotonic() < end:\n"
          "        os.read(fd, 8); time.sleep(0.002)\n"
          "spin(1.2)\npid = os.fork()\nif pid == 0:\n    spin(0.5); os._exit(0)\n"
          "os.waitpid(pid, 0)\nspin(1.5)\n")


class Collect:
    def __init__(self):
        self.batches: list[list] = []
        self.closed = False

    @property
    def events(self) -> list:
        return [ev for b in self.batches for ev in b]

    def feed(self, batch):
        self.batches.append(list(batch))

    def close(self):
        self.closed = True


def test_consumers_come_and_go_on_a_running_pipeline():
    target = Target([sys.executable, "-c", READER])
    proc, io = ProcProbe(), IoProbe()
    proc.listeners.append(io)
    p = Pipeline()
    always, late = Collect(), Collect()
    ticks: list[int] = []
    p.add_consumer(always)
    p.on_tick(lambda pl: ticks.append(pl.generation), every_s=0.2)
    stop = threading.Event()
    try:
        p.attach(target.pid, [KernelProbes([proc, io])])
        target.proc.stdin.write("go\n")
        target.proc.stdin.flush()
        runner = threading.Thread(target=p.run, args=(stop,))
        runner.start()
        time.sleep(0.8)
        marker = Instant("test", "capture starts", 0, 0, time.monotonic_ns())
        p.add_consumer(late, prelude=lambda: [marker])
        time.sleep(1.5)
        p.remove_consumer(late, flush=True)
        after_removal = len(late.events)
        time.sleep(1.0)
    finally:
        stop.set()
        if "runner" in locals():
            runner.join(timeout=30)
        p.close()
        target.kill()

    assert late.events and late.events[0] is marker and len(late.batches[0]) == 1
    assert len(late.events) == after_removal, "fed after it was removed"
    assert not late.closed and always.closed        # removing does not close; close() does
    for b in always.batches + late.batches:          # each batch in time order
        assert [e.ts for e in b] == sorted(e.ts for e in b)
    # The late consumer saw a stretch of the same stream, not a copy of its own.
    live = late.events[1:]
    ids = {id(e) for e in always.events}
    assert live and all(id(e) in ids for e in live)
    reads = [e for e in always.events if type(e) is Span and e.name == "read"]
    pids = {e.pid for e in reads}
    child = next(e.args["child"] for e in always.events
                 if type(e) is Instant and e.name == "fork" and e.pid == target.pid)
    assert {target.pid, child} <= pids, "the forked child was followed"
    assert child in p.processes
    st = p.stats()
    assert st.events["io"] >= len(reads) > 0 and st.lost["io"] == 0
    assert st["events"] == st.total_events == sum(st.events.values())
    assert len(ticks) >= 3 and set(ticks) == {1}
    assert p.target is None and p.sources == []
