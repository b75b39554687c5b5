"""The sampler inside a real capture: Python tracks, raw samples with
interned callstacks, and probe slices attributed to the Python line."""

from __future__ import annotations

import tracecheck
from conftest import TARGETS, Gpuscope


def test_read_is_attributed_to_its_python_line(target, tmp_path):
    t = target("py_reader.py")
    out = tmp_path / "py.pftrace"
    g = Gpuscope(["attach", "-p", str(t.pid), "-o", str(out), "--no-cuda", "--no-nccl", "--no-nvml"])
    g.wait_attached()
    did = t.go()
    rc, err = g.finish()
    assert rc == 0, err
    tr = tracecheck.load(str(out))
    script = str(TARGETS / "py_reader.py")
    reads = [s for s in tr.slices_on("IO") if s.name == "read"
             and tr.thread_of(s.track) == (did["pid"], did["tid"]) and s.args.get("bytes") == 10]
    assert len(reads) == 1, reads
    assert reads[0].end - reads[0].start > 300e6  # it waited for the feeder
    assert reads[0].args["py"] == f"reader ({script}:{did['line']})"
    # The same wait on the Off-CPU track names the line too.
    off = [s for s in tr.slices_on("Off-CPU") if tr.thread_of(s.track) == (did["pid"], did["tid"])
           and s.end - s.start > 300e6]
    assert off and off[0].args["py"] == reads[0].args["py"]
    # The Python track holds the frame as a slice across the wait.
    py = [s for s in tr.slices_on("Python") if tr.thread_of(s.track) == (did["pid"], did["tid"])
          and s.name == "reader"]
    assert py and py[0].end - py[0].start > 300e6
    assert py[0].args["file"] == script
    # Raw samples: instants with interned callstacks ending in reader().
    samples = [s for s in tr.samples if tr.thread_of(s[0]) == (did["pid"], did["tid"])]
    assert all(tr.track_name(s[0]) == "Python samples" for s in samples)
    assert len(samples) >= 20  # 100 Hz over > 0.3 s
    assert {s[2] for s in samples} <= {"idle", "running", "idle +GIL", "running +GIL"}
    waiting = [s for s in samples if s[3][-1] == ("reader", script, did["line"])]
    assert len(waiting) >= 20 and all(s[2].startswith("idle") for s in waiting)
    assert waiting[0][3][0][1] == "/usr/lib/python3.11/threading.py"  # outermost first
