"""Running threads' stacks walked in the kernel (probes/pyperf.bpf.c), on every
interpreter here: real perf events, real BPF, real target processes. The outside
walk (dump) and py-spy's frames are the oracles."""

from __future__ import annotations

import time

import pytest
from test_sampler import collect, names, python, target  # noqa: F401  (python: a fixture)

from gpuscope.probes.events import StackSample
from gpuscope.probes.sampler import PythonSampler

SPIN = ["spin_a", "spin_b"]


def start(pids: list[int], rate_hz: int = 100, timeout: float = 120.0) -> PythonSampler:
    """A sampler whose kernel walker is loaded (its compile takes seconds)."""
    s = PythonSampler(rate_hz=rate_hz)
    s.start(pids)
    end = time.monotonic() + timeout
    while s._kernel is None and time.monotonic() < end:
        if any("walked from outside" in n for n in s.notices()):
            s.stop()
            pytest.fail(f"kernel walker not loaded: {s.notices()}")
        s.poll(0.2)
    assert s._kernel is not None, f"kernel walker not loaded in {timeout}s: {s.notices()}"
    s.poll(0)
    return s


def kernel_samples(pid: int, want: int = 10, timeout: float = 20.0) -> list[StackSample]:
    """The kernel walker's own samples of pid (no outside walk mixed in)."""
    from gpuscope.probes import pyperf
    from gpuscope.probes.pyruntime import find_runtime
    from gpuscope.probes.pystack import Walker

    w = Walker(find_runtime(pid))
    kw = pyperf.KernelWalks(pyperf.OnCpuSampler(w.L, 100))
    try:
        assert kw.add(w)
        stacks, _ = w.sample()
        kw.cover(pid, [(st.tid, st.tstate) for st in stacks])
        out: list[StackSample] = []
        lost: dict[str, int] = {}
        end = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < end:
            time.sleep(0.2)
            out += kw.collect({pid: w}, lost)
        assert not lost, lost
        return out
    finally:
        kw.close()


def test_running_thread_is_walked_in_the_kernel(python):  # noqa: F811
    """Every version's offsets: the spinning thread's chain, named, outermost first."""
    from gpuscope.probes.sampler import dump

    with target(python, "parked.py") as proc:
        outside = {tid: [(f.function, f.file) for f in fs] for tid, fs in dump(proc.pid).items()}
        got = kernel_samples(proc.pid)
    spinner = [tid for tid, fs in outside.items() if [f for f, _ in fs][-2:] == SPIN]
    assert len(spinner) == 1 and len(got) >= 10
    # Only the spinner runs; its kernel stacks are the outside walk's chain.
    assert {e.tid for e in got} == set(spinner)
    assert all([(f.function, f.file) for f in e.frames] == outside[spinner[0]] for e in got)
    assert all(e.state == "running" and e.frames[-1].line > 0 for e in got)


def test_sampler_mixes_kernel_and_outside_walks(python):  # noqa: F811
    with target(python, "parked.py") as proc:
        s = start([proc.pid])
        try:
            events = collect(s, 2.0)
            stats = s.stats()
        finally:
            s.stop()
    samples = [e for e in events if isinstance(e, StackSample)]
    spin = [e for e in samples if names(e.frames)[-2:] == SPIN]
    # The spinner is the kernel's while on a CPU, the outside walk's while it waits
    # for one (this machine may be busy): either way it is sampled, running.
    assert stats["kernel"] > 0, stats
    assert len(spin) >= 30 and all(e.state == "running" for e in spin)
    # Idle threads are still sampled (from outside) at the full rate.
    waiter = [e for e in samples if "waiter_d" in names(e.frames)]
    assert len(waiter) >= len(spin) / 3 and all(e.state == "idle" for e in waiter)
    assert stats["errors"] <= max(2, stats["kernel"] * 0.02), stats


def test_switched_off_walks_running_threads_from_outside(monkeypatch):
    import sys

    monkeypatch.setenv("GPUSCOPE_PYTHON_KERNEL_WALK", "0")
    with target(sys.executable, "parked.py") as proc:
        s = PythonSampler(rate_hz=100)
        s.start([proc.pid])
        try:
            events = collect(s, 1.0)
            stats = s.stats()
            notes = s.notices()
        finally:
            s.stop()
    spin = [e for e in events if isinstance(e, StackSample) and names(e.frames)[-2:] == SPIN]
    assert stats["kernel"] == 0 and len(spin) >= 30
    assert any("walked from outside (switched off" in n for n in notes), notes


def test_stop_detaches_the_kernel_walker():
    """Its programs (perf event, sched_switch) are gone from the kernel's own list."""
    import os
    import sys

    from conftest import bpf_ids, prog_ids_of

    before = prog_ids_of(os.getpid())
    with target(sys.executable, "parked.py") as proc:
        s = start([proc.pid])
        ours = prog_ids_of(os.getpid()) - before
        assert len(ours) >= 2 and ours <= bpf_ids("prog")
        s.stop()
    assert not ours & bpf_ids("prog")
    assert prog_ids_of(os.getpid()) == before
