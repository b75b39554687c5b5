"""Bad input: one line that says what to do, a non-zero exit, no traceback,
and nothing already captured is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import tracecheck
from conftest import GPUSCOPE, ROOT


def run(args, **kw):
    p = subprocess.run(GPUSCOPE + args, capture_output=True, text=True, timeout=120, **kw)
    return p.returncode, p.stderr


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_pid_that_does_not_exist():
    rc, err = run(["attach", "-p", "999999999"])
    assert rc == 2
    assert "no running process with PID 999999999" in one_line(err)


def test_pid_that_exits_during_attach(tmp_path):
    # The target exits as soon as gpuscope has checked it and created its
    # output, i.e. while the probes are being compiled and attached.
    out = tmp_path / "gone.pftrace"
    watcher = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "while not os.path.exists(sys.argv[1]):\n"
        "    time.sleep(0.002)\n"), str(out)])
    try:
        rc, err = run(["attach", "-p", str(watcher.pid), "-o", str(out), "-q"])
    finally:
        watcher.kill()
        watcher.wait()
    assert rc != 0
    line = err.splitlines()[-1]
    assert "exited" in line and "Traceback" not in err
    if "what was captured is in" in line:
        tracecheck.load(str(out))  # kept and readable


def test_unprivileged_user_is_told_to_use_root(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        os.chmod(tmp_path, 0o777)
        rc, err = run(["attach", "-p", str(sleeper.pid), "-o", str(tmp_path / "x.pftrace")],
                      preexec_fn=_drop_to_nobody, cwd=str(tmp_path),
                      env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        sleeper.kill()
    assert rc == 77
    line = one_line(err)
    assert "root" in line and "CAP_BPF" in line and "sudo" in line


def _drop_to_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def test_unwritable_output_path():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        for path in ("/nonexistent-dir/x.pftrace", "/proc/1/x.pftrace"):
            rc, err = run(["attach", "-p", str(sleeper.pid), "-o", path])
            assert rc == 2, err
            line = one_line(err)
            assert path in line and "-o" in line
    finally:
        sleeper.kill()


def test_run_with_unknown_command():
    rc, err = run(["run", "--", "no-such-command-xyz"])
    assert rc == 2
    assert "command not found" in one_line(err)


def test_run_captures_a_command_from_its_start(tmp_path):
    out = tmp_path / "run.pftrace"
    marker = tmp_path / "marker.txt"
    marker.write_text("hello")
    t0 = time.monotonic()
    rc, err = run(["run", "-o", str(out), "-q", "--", sys.executable, "-c",
                   f"open({str(marker)!r}).read()\nimport sys; sys.exit(3)"])
    assert rc == 3, err  # the job's own exit status
    assert time.monotonic() - t0 < 60
    tr = tracecheck.load(str(out))
    assert any(s.name == "openat" and s.args.get("path") == str(marker) for s in tr.slices_on("IO"))
    assert any(i[0] == "exec" for i in tr.instants)
