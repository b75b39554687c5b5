"""Shared by the fault suite (test_faults_*.py): a long-running target that
logs numbered ticks, the gpuscope command run to completion, and the check
that an error is one line with no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import GPUSCOPE, TARGETS


def run(args: list[str], timeout: float = 120, **kw) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `gpuscope ARGS`."""
    p = subprocess.run(GPUSCOPE + args, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    return p.returncode, p.stdout, p.stderr


def one_line(err: str) -> str:
    """The only line of err: what went wrong and what to do."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


def last_line(err: str) -> str:
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.strip()][-1]


class Ticker:
    """tests/targets/ticker.py: reads a file and logs `tick N` every 10 ms to a file."""

    def __init__(self, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(TARGETS / "ticker.py"), str(log)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = json.loads(self.proc.stdout.readline())["ready"]

    def send(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def lines(self) -> list[str]:
        """The complete lines logged so far (the last may be mid-write)."""
        text = self.log.read_text()
        return text[: text.rfind("\n") + 1].splitlines()

    def ticks(self) -> list[int]:
        return [int(ln.split()[1]) for ln in self.lines() if ln.startswith("tick ")]

    def wait_ticks(self, more_than: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ticks()) <= more_than:
            assert time.monotonic() < deadline, "the target stopped ticking"
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                return self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        return self.proc.wait()
