"""`gpuscope report` on files that are not traces: a device that never ends,
a FIFO nobody writes, a 1 GB sparse file, a record claiming 60 MB. Each
gets one line saying what is wrong, a non-zero exit and no traceback, in
bounded memory (peak RSS from the kernel's own accounting) and time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from gpuscope.collector.perfetto import varint

GPUSCOPE = [sys.executable, "-m", "gpuscope.collector.cli"]
RSS_LIMIT_KB = 200 << 10


# Peak RSS survives exec, so a child of this (large) test process would report
# ours. A small launcher forks gpuscope and reports the grandchild's own peak.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"maxrss_kb={usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def report(path: str, timeout: float = 60) -> tuple[int, str, int]:
    """(exit status, stderr, peak RSS in KiB) of `gpuscope report path`."""
    p = subprocess.Popen([sys.executable, "-c", LAUNCHER, *GPUSCOPE[1:], "report", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        pytest.fail(f"report {path} still running after {timeout} s")
    lines = err.decode().splitlines()
    assert lines and lines[-1].startswith("maxrss_kb="), err
    return p.returncode, "\n".join(lines[:-1]) + "\n", int(lines[-1].split("=")[1])


def sparse(path, size: int, head: bytes = b"") -> str:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return str(path)


def fifo(path) -> str:
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("make, says", [
    (lambda d: "/dev/zero", "is a device, not a trace file"),
    (lambda d: fifo(d / "pipe"), "is a FIFO, not a trace file"),
    (lambda d: str(d), "is a directory, not a trace file"),
    (lambda d: sparse(d / "sparse.pftrace", 1 << 30), "not a Perfetto protobuf trace"),
    (lambda d: sparse(d / "claims.pftrace", 1 << 30, b"\x0a" + varint(60 << 20)),
     "does not decode"),
    (lambda d: sparse(d / "endless.pftrace", 1 << 30, b"\x0a" + varint(1 << 40)),
     "corrupted"),
], ids=["dev-zero", "fifo", "directory", "sparse-1GB", "record-of-60MB", "length-of-1TB"])
def test_report_refuses_what_is_not_a_trace(tmp_path, make, says):
    path = make(tmp_path)
    rc, err, rss_kb = report(path)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], err
    assert "Traceback" not in err
    assert rss_kb < RSS_LIMIT_KB, f"peak RSS {rss_kb / 1024:.0f} MB"
