"""Shared fixtures: the gpuscope command, target processes, BPF object lists."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = Path(__file__).resolve().parent / "targets"
GPUSCOPE = [sys.executable, "-m", "gpuscope.collector.cli"]
sys.path.insert(0, str(ROOT / "samples"))  # samples/scenarios.py, shared with `make demo`


@pytest.fixture(autouse=True, scope="session")
def _needs_root():
    if os.geteuid() != 0:
        pytest.exit("gpuscope's tests load real eBPF programs: run them as root (make test)", 2)


class Gpuscope:
    """A running `gpuscope attach`, read until it says the probes are live."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(GPUSCOPE + args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.stderr_lines: list[str] = []

    def wait_attached(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line)
            if "attached to PID" in line:
                return
        self.proc.kill()
        raise AssertionError("gpuscope did not attach: " + "".join(self.stderr_lines) +
                             self.proc.stderr.read())

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.stderr_lines) + err


class Target:
    """A test target that prints {"ready": pid} and waits for a line on stdin."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        ready = json.loads(self.proc.stdout.readline())
        self.pid = ready["ready"]

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        self.proc.wait(timeout=30)
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_attached(g: Gpuscope, target: Target, during=None) -> tuple[int, str, dict]:
    """Once `g` has attached (and `during(g)` has looked at it, if given), lets
    the target run and `g` finish: (gpuscope's status, its stderr, what the
    target did). Both are killed if anything fails on the way."""
    try:
        g.wait_attached()
        if during is not None:
            during(g)
        did = target.go()
        rc, err = g.finish()
    finally:
        target.kill()
        if g.proc.poll() is None:
            g.proc.kill()
    return rc, err, did


@pytest.fixture
def target():
    made: list[Target] = []

    def start(script: str, *args: str) -> Target:
        t = Target([sys.executable, str(TARGETS / script), *args])
        made.append(t)
        return t

    yield start
    for t in made:
        t.kill()


# -- BPF objects in the kernel, listed through the bpf() syscall ---------------
_SYS_BPF = 321
_GET_NEXT_ID = {"prog": 11, "map": 12, "link": 31}


def bpf_ids(kind: str) -> set[int]:
    """IDs of all BPF programs / maps / links alive in the kernel."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 4)()
    ids, start = set(), 0
    while True:
        attr[0], attr[1] = start, 0
        if libc.syscall(_SYS_BPF, _GET_NEXT_ID[kind], ctypes.byref(attr), 16) != 0:
            return ids
        start = attr[1]
        ids.add(start)


def prog_ids_of(pid: int) -> set[int]:
    """IDs of the BPF programs a process holds open (from its fdinfo), so
    checks are not confused by other BPF users on the machine."""
    ids = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for f in fdinfo.iterdir():
        try:
            for line in f.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def probe_events() -> str:
    text = ""
    for name in ("uprobe_events", "kprobe_events"):
        try:
            text += Path("/sys/kernel/tracing", name).read_text()
        except OSError:
            pass
    return text
