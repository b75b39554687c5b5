"""What `attach` and `run` refuse before anything is loaded: an output that is
not a writable regular file, a target that would make gpuscope trace itself
or every process, a command exec would refuse. Each is a CliError with the
fix (exit 2)."""

from __future__ import annotations

import os
import shutil

from gpuscope.probes import procfs

from .errors import EXIT_USAGE, CliError


def check_output(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not os.path.isfile(path):
        raise CliError(f"cannot write trace to {path}: not a regular file "
                       "(give a file path with -o)", EXIT_USAGE)
    if not os.path.isdir(d):
        raise CliError(f"cannot write trace to {path}: directory {d} does not exist "
                       "(create it, or choose another path with -o)", EXIT_USAGE)
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise CliError(f"cannot write trace to {path}: {e.strerror} "
                       "(choose another path with -o)", EXIT_USAGE) from None


def check_target(pid: int, subprocesses: bool) -> None:
    """Refuses what would make gpuscope trace itself (its own PID, or an
    ancestor when following descendants) or every process (PID 1)."""
    fix = "give the training job's PID (`ps -ef`), or start it with `gpuscope run -- CMD`"
    if pid == os.getpid():
        raise CliError(f"PID {pid} is this gpuscope: it cannot trace itself; {fix}", EXIT_USAGE)
    if not subprocesses:
        return
    if pid == 1:
        raise CliError("PID 1 is the init process: following it and its descendants would "
                       f"trace every process on the machine; {fix} (or --no-subprocesses to "
                       "trace PID 1 alone)", EXIT_USAGE)
    p, seen = os.getppid(), set()
    while p > 1 and p not in seen:
        if p == pid:
            raise CliError(f"PID {pid} ({procfs.comm(pid)}) is an ancestor of this gpuscope: "
                           f"following its descendants would trace gpuscope itself; {fix} "
                           "(or --no-subprocesses)", EXIT_USAGE)
        seen.add(p)
        st = procfs.stat(p)
        p = st.ppid if st else 0


def check_command(name: str) -> None:
    """What exec would say, in words: a path that is not there, a directory,
    a file without execute permission; a bare name not on PATH."""
    if "/" not in name:
        if shutil.which(name) is None:
            raise CliError(f"cannot run {name}: command not found (check the name, or give "
                           "its path)", EXIT_USAGE)
        return
    if not os.path.exists(name):
        raise CliError(f"cannot run {name}: no such file", EXIT_USAGE)
    if os.path.isdir(name):
        raise CliError(f"cannot run {name}: it is a directory", EXIT_USAGE)
    if not os.access(name, os.X_OK) or not os.stat(name).st_mode & 0o111:
        raise CliError(f"cannot run {name}: the file is not executable (chmod +x it, or run "
                       "it through its interpreter, e.g. python FILE)", EXIT_USAGE)
