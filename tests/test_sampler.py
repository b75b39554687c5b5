"""The out-of-process Python sampler against real interpreters (no mocks).

These are the outside walk's tests: the kernel's walk of running threads is off
here (tests/test_sampler_kernel.py tests it). Every interpreter on the machine is a parameter; a missing one is skipped with
its reason. py-spy (from PyPI, in the venv) is the oracle for stacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuscope.probes.events import Loss, StackSample
from gpuscope.probes.pylayouts import UnsupportedVersion, layout_for
from gpuscope.probes.pyruntime import NotPython
from gpuscope.probes.sampler import PythonSampler, dump, python_version

TARGETS = Path(__file__).parent / "targets"
PYSPY = Path(sys.executable).parent / "py-spy"


def _pyenv(version: str) -> str | None:
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    path = Path(root) / "versions" / version / "bin" / "python3"
    return str(path) if path.exists() else None


INTERPRETERS = {
    "3.10.13": _pyenv("3.10.13"),
    "3.11.7": _pyenv("3.11.7"),
    "3.12.1": _pyenv("3.12.1"),
    "3.13.0": _pyenv("3.13.0"),
    "debian-3.11-static": "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else None,
}


@pytest.fixture(autouse=True)
def outside_walk_only(monkeypatch):
    """These tests are the outside walker's, running threads included (the kernel's
    walk of running threads is tests/test_sampler_kernel.py's)."""
    monkeypatch.setenv("GPUSCOPE_PYTHON_KERNEL_WALK", "0")


@pytest.fixture(params=sorted(INTERPRETERS))
def python(request) -> str:
    path = INTERPRETERS[request.param]
    if path is None:
        pytest.skip(f"interpreter {request.param} is not installed on this machine")
    return path


@contextlib.contextmanager
def target(python: str, script: str, *args: str, timeout: float = 20.0):
    """Start a target, wait for its "ready" line, kill it on the way out."""
    proc = subprocess.Popen([python, str(TARGETS / script), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert read_line(proc, timeout) == "ready", f"{script} did not become ready"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError("target said nothing")
    return proc.stdout.readline().strip()


def pyspy_dump(pid: int) -> list[dict]:
    if not PYSPY.exists():
        pytest.skip(f"py-spy not found at {PYSPY} (pip install py-spy)")
    out = subprocess.run([str(PYSPY), "dump", "--pid", str(pid), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def collect(sampler: PythonSampler, seconds: float) -> list:
    events, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        events += sampler.poll(0.1)
    return events


def names(frames) -> list[str]:
    return [f.function for f in frames]


# ---- stacks equal py-spy's --------------------------------------------------------------


def compare_with_pyspy(theirs: list[dict], mine: dict) -> list[str]:
    """Differences between py-spy's dump and ours (empty when equal)."""
    problems = []
    if sorted(mine) != sorted(t["os_thread_id"] for t in theirs):
        problems.append(f"kernel TIDs differ: {sorted(mine)} vs py-spy's "
                        f"{sorted(t['os_thread_id'] for t in theirs)}")
    for t in theirs:
        expect = [(f["name"], f["filename"], f["line"]) for f in reversed(t["frames"])]
        got = [(f.function, f.file, f.line) for f in mine.get(t["os_thread_id"], [])]
        if t["thread_name"] == "spinner":  # its line may move; function and file may not
            expect = [e[:2] for e in expect]
            got = [g[:2] for g in got]
        if got != expect:
            problems.append(f"thread {t['thread_name']}: {got} != py-spy's {expect}")
    return problems


def test_stacks_match_pyspy(python):
    with target(python, "parked.py") as proc:
        for _attempt in range(3):  # the main thread may still be on its way to its wait
            problems = compare_with_pyspy(pyspy_dump(proc.pid), mine := dump(proc.pid))
            if not problems:
                break
            time.sleep(0.3)
        assert not problems
        assert proc.pid in mine, "the main thread's TID is the pid"
        assert python_version(proc.pid).startswith(".".join(python_version_of(python)))


def python_version_of(python: str) -> tuple[str, str]:
    out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], out[1]


# ---- thread state and GIL -------------------------------------------------------------------


def test_sleeping_is_idle_spinning_is_running(python):
    with target(python, "parked.py") as proc:
        s = PythonSampler(rate_hz=200)
        try:
            s.start([proc.pid])
            samples = [e for e in collect(s, 0.7) if isinstance(e, StackSample)]
        finally:
            s.stop()
    sleeper = [e for e in samples if "sleeper_c" in names(e.frames)]
    spinner = [e for e in samples if "spin_b" in names(e.frames)]
    assert sleeper and spinner, "both threads sampled"
    assert all(e.state == "idle" and not e.gil for e in sleeper)
    running = sum(e.state == "running" for e in spinner) / len(spinner)
    holding = sum(e.gil for e in spinner) / len(spinner)
    print(f"spinner: running {running:.0%}, holding the GIL {holding:.0%} of {len(spinner)} samples")
    assert running >= 0.8
    assert holding >= 0.5
    assert all(e.tid != proc.pid for e in spinner + sleeper)
    assert all(e.ts > 0 and e.pid == proc.pid for e in samples)
    assert all(e.frames[-1].function.endswith("spin_b") for e in spinner), "innermost is last"


# ---- things that start after attach ------------------------------------------------------------


def test_forked_child_and_new_thread_are_sampled(python):
    child = 0
    with target(python, "forker.py") as proc:
        s = PythonSampler(rate_hz=100)
        try:
            s.start([proc.pid])
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = read_line(proc, 10)
            child = int(line.split()[1])
            s.add_process(child)
            samples = [e for e in collect(s, 1.0) if isinstance(e, StackSample)]
        finally:
            s.stop()
            if child:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, 9)
    child_samples = [e for e in samples if e.pid == child]
    assert child_samples, "the forked child was sampled"
    assert all(e.tid == child for e in child_samples), "only the child's surviving thread"
    assert any("child_main" in names(e.frames) for e in child_samples)
    late = [e for e in samples if e.pid == proc.pid and "late_thread_fn" in names(e.frames)]
    assert late and all(e.tid != proc.pid for e in late), "the new thread was sampled"


# ---- a pathological target ---------------------------------------------------------------------


def churn_stack_ok(frames) -> bool:
    """True when a sampled stack is one churn.py can really have (see its docstring)."""
    idx = [i for i, f in enumerate(frames) if f.file == "<churn>"]
    if not idx:
        return True
    if idx != list(range(idx[0], idx[-1] + 1)):
        return False
    block = frames[idx[0] : idx[-1] + 1]
    if idx[0] == 0 or frames[idx[0] - 1].function != "worker":
        return False
    if block[-1].function == "bottom":
        if not 124 <= block[-1].line <= 127:
            return False
        block = block[:-1]
    for k, f in enumerate(block):
        if f.function != f"f{k}" or f.line != 2 * k + 2:
            return False
    after = frames[idx[-1] + 1 :]
    return all(f.function == "spin" for f in after)


@pytest.mark.parametrize("version", ["3.10.13", "3.12.1", "3.13.0"])
def test_pathological_target_never_gives_wrong_stacks(version):
    python = INTERPRETERS[version]
    if python is None:
        pytest.skip(f"interpreter {version} is not installed on this machine")
    with target(python, "churn.py") as proc:
        s = PythonSampler(rate_hz=500)
        try:
            s.start([proc.pid])
            events = collect(s, 2.5)
            stats = s.stats()
        finally:
            s.stop()
    samples = [e for e in events if isinstance(e, StackSample)]
    lost = sum(e.count for e in events if isinstance(e, Loss))
    deep = [e for e in samples if any(f.file == "<churn>" for f in e.frames)]
    bad = [e for e in samples if not churn_stack_ok(e.frames)]
    share = lost / max(1, lost + len(samples))
    print(f"{version}: {len(samples)} samples ({len(deep)} in the recursion), {lost} lost "
          f"= error share {share:.2%}; stats {stats}")
    assert deep, "the recursion was sampled"
    assert not bad, f"wrong stacks: {[[(f.function, f.line) for f in e.frames] for e in bad[:3]]}"


# ---- rate ------------------------------------------------------------------------------------


def test_rate_1khz_reports_achieved_rate():
    python = INTERPRETERS["3.12.1"] or INTERPRETERS["debian-3.11-static"]
    if python is None:
        pytest.skip("no 3.12.1 or Debian 3.11 interpreter")
    with target(python, "parked.py") as proc:
        s = PythonSampler(rate_hz=1000)
        try:
            s.start([proc.pid])
            events = collect(s, 1.0)
            stats, notices = s.stats(), s.notices()
        finally:
            s.stop()
    samples = [e for e in events if isinstance(e, StackSample)]
    print(f"1 kHz on 4 threads: {len(samples)} samples, stats {stats}, notices {notices}")
    assert samples
    assert stats["samples_per_s"] > 0 and stats["events"] >= len(samples)
    assert {"events", "lost", "samples_per_s", "errors"} <= set(stats)


# ---- not Python, unsupported -------------------------------------------------------------------


def test_non_python_target_is_a_notice():
    sleep = shutil.which("sleep")
    proc = subprocess.Popen([sleep, "30"])
    try:
        time.sleep(0.1)
        s = PythonSampler()
        try:
            s.start([proc.pid])
            assert s.poll(0.2) == []
            assert any("not a CPython process" in n for n in s.notices()), s.notices()
        finally:
            s.stop()
            s.stop()  # twice is fine
        assert python_version(proc.pid) is None
        with pytest.raises(NotPython):
            dump(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_unsupported_version_message():
    with pytest.raises(UnsupportedVersion, match=r"unsupported Python 3\.9"):
        layout_for((3, 9))


# ---- venvs and other mount namespaces ---------------------------------------------------------


def test_venv_python(tmp_path):
    python = INTERPRETERS["3.11.7"] or INTERPRETERS["3.12.1"]
    if python is None:
        pytest.skip("no pyenv 3.11.7 or 3.12.1 to make a venv from")
    subprocess.run([python, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    vpy = tmp_path / "venv" / "bin" / "python3"
    assert vpy.is_symlink() or vpy.exists()
    with target(str(vpy), "parked.py", "nospin") as proc:
        stacks = dump(proc.pid)
    main = names(stacks[proc.pid])
    assert main[main.index("main"):main.index("main") + 4] == [
        "main", "outer_main", "middle_main", "Nest.inner_main"], main


def test_target_in_another_mount_namespace(tmp_path):
    """The interpreter file exists only inside the target's mount namespace: the ELF
    must be read through /proc/PID/root (or map_files), not the host path."""
    static = INTERPRETERS["debian-3.11-static"]
    unshare = shutil.which("unshare")
    if static is None or unshare is None:
        pytest.skip("needs Debian's static /usr/bin/python3.11 and unshare(1)")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    script = (f"mount -t tmpfs none {hidden} && cp {static} {hidden}/python3.11 && "
              f"PYTHONHOME=/usr exec {hidden}/python3.11 {TARGETS / 'parked.py'} nospin")
    proc = subprocess.Popen([unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        if read_line(proc, 20) != "ready":
            pytest.skip("could not start a target in a new mount namespace")
        assert not (hidden / "python3.11").exists(), "the host must not see the file"
        stacks = dump(proc.pid)
        assert "Nest.inner_main" in names(stacks[proc.pid])
        assert python_version(proc.pid) == "3.11.2"
    finally:
        proc.kill()
        proc.wait()


def test_threads_that_did_not_run_reuse_their_stack(python):
    """An idle thread's stack is reused only while it has not run; a reused stack is
    the one a fresh walk gives (and that walk is checked against py-spy above)."""
    with target(python, "parked.py") as proc:
        time.sleep(0.3)  # every thread parked
        fresh = dump(proc.pid)
        s = PythonSampler(rate_hz=200)
        try:
            s.start([proc.pid])
            samples = [e for e in collect(s, 0.7) if isinstance(e, StackSample)]
            stats = s.stats()
        finally:
            s.stop()
    assert stats["reused"] > 0, stats
    by_tid: dict[int, set] = {}
    for e in samples:
        by_tid.setdefault(e.tid, set()).add(e.frames)
    for tid, stacks in by_tid.items():
        if "spin_b" in names(fresh[tid]):
            continue
        assert stacks == {tuple(fresh[tid])}, (tid, stacks)


def test_idle_plumbing_threads_are_thinned_not_lost():
    """A queue feeder thread that keeps waking but is idle on the same stack whenever
    it is sampled is walked every THIN_EVERY-th tick (counted as thinned); the main
    thread keeps the full rate."""
    from gpuscope.probes.pystack import THIN_EVERY

    with target(sys.executable, "feeder.py") as proc:
        s = PythonSampler(rate_hz=200)
        try:
            s.start([proc.pid])
            samples = [e for e in collect(s, 1.0) if isinstance(e, StackSample)]
            stats = s.stats()
        finally:
            s.stop()
    feeder = [e for e in samples if any(n.endswith("._feed") for n in names(e.frames))]
    main = [e for e in samples if e.tid == proc.pid]
    assert feeder and main and stats["thinned"] > 0, stats
    assert len(feeder) < len(main) / 2, (len(feeder), len(main))
    assert len(feeder) >= len(main) / THIN_EVERY / 2
