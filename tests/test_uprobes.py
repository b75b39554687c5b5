"""The GPU libraries' uprobes as uprobe_multi links (probes/uprobes.py), and
BCC's perf-event uprobes where links are off (GPUSCOPE_UPROBE_LINKS=0, what
a kernel older than 6.6 gets): the same calls traced either way, every probe
held as what it should be while attached, and none left after the detach."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_cuda import CUDART, _need
from test_cuda_early import TARGET, check_all

import tracecheck
from conftest import Gpuscope, Target, bpf_ids, run_attached


def held(pid: int) -> dict[str, set[int]]:
    """BPF link ids by link type, and uprobe perf events, that `pid` holds open."""
    out: dict[str, set[int]] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        if "link_type" in fields:
            out.setdefault(fields["link_type"], set()).add(int(fields["link_id"]))
        elif target == "anon_inode:[perf_event]":
            out.setdefault("perf_event", set()).add(int(fd))
    return out


@pytest.mark.parametrize("links", ["1", "0"])
def test_cuda_uprobes_as_links_or_perf_events(tmp_path, links):
    cudart = _need(CUDART)
    target = Target([sys.executable, str(TARGET), cudart, "--wait"])
    out = tmp_path / "u.pftrace"
    g = Gpuscope(["attach", "-p", str(target.pid), "-o", str(out), "--no-sched", "--no-python"],
                 env={**os.environ, "GPUSCOPE_UPROBE_LINKS": links})
    seen: dict[str, dict[str, set[int]]] = {}
    rc, err, did = run_attached(g, target, lambda g: seen.update(during=held(g.proc.pid)))
    during = seen["during"]
    assert rc == 0, err
    check_all(tracecheck.load(str(out)), did)
    entry, ret = during.get("uprobe_multi", set()), during.get("uretprobe_multi", set())
    if links == "1":
        # One entry and one return link per probed function, of every libcudart found.
        assert len(entry) == len(ret) >= 20, during
        assert not (entry | ret) & bpf_ids("link"), "links left after the detach"
    else:
        assert not entry and not ret, during
        # BCC: a perf event per uprobe, beside the tracepoints' ones.
        assert len(during.get("perf_event", ())) >= 40, during


def test_file_offset_of_a_segment_placed_apart():
    """libcudart's second PT_LOAD sits at 0x2b0000 in memory, 0xb0000 in the
    file: a link takes the file offset."""
    from gpuscope.probes import elfsyms

    cudart = _need(CUDART)
    loads = elfsyms.load_segments(cudart)   # from the program headers alone
    assert loads == elfsyms.symbols(cudart).loads
    apart = [(off, vaddr) for off, _size, vaddr, _align in loads if off != vaddr]
    assert apart, loads
    off, vaddr = apart[0]
    assert elfsyms.offset_in(loads, vaddr + 0x10) == off + 0x10
    first_off, _s, first_vaddr, _a = loads[0]
    assert elfsyms.offset_in(loads, first_vaddr + 0x1234) == first_off + 0x1234
