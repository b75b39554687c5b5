"""Finds the training process among the processes gpuscope can see (in a pod
with `shareProcessNamespace: true`: every container's).

By `--match REGEX` on the command line, or by default: a Python process with
PyTorch or CUDA libraries mapped. DataLoader workers and ranks map them too,
so of the candidates the topmost one (whose parent is not a candidate) is the
target, and the oldest of those when there are several."""

from __future__ import annotations

import os
import re

from gpuscope.probes import procfs

GPU_LIBS = re.compile(r"(libtorch|libc10|libcudart|libcuda\.so)[^/\s]*")


def _ppid(pid: int) -> int:
    st = procfs.stat(pid)
    return st.ppid if st else 0


def _start_time(pid: int) -> int:
    st = procfs.stat(pid)
    return st.starttime if st else 0


def is_python(pid: int) -> bool:
    exe = os.path.basename(procfs.exe(pid) or "")
    argv0 = os.path.basename((procfs.cmdline(pid) or [""])[0])
    return exe.startswith("python") or argv0.startswith("python")


def maps_gpu_libs(pid: int) -> bool:
    return any(GPU_LIBS.fullmatch(os.path.basename(m.path)) for m in procfs.maps(pid) if m.file)


def candidates(match: re.Pattern | None = None, exclude: set[int] | None = None) -> list[int]:
    exclude = exclude or set()
    out = []
    for pid in procfs.pids():
        if pid in exclude or not procfs.alive(pid):
            continue
        argv = procfs.cmdline(pid)
        if not argv:
            continue  # kernel threads, zombies
        if match is not None:
            if match.search(" ".join(argv)):
                out.append(pid)
        elif is_python(pid) and maps_gpu_libs(pid):
            out.append(pid)
    return sorted(out)


def find_target(match: re.Pattern | None = None, exclude: set[int] | None = None) -> int | None:
    """The training process's PID, or None if there is none (yet)."""
    found = candidates(match, exclude)
    if not found:
        return None
    chosen = set(found)
    top = [p for p in found if _ppid(p) not in chosen]
    return min(top or found, key=lambda p: (_start_time(p), p))


def own_tree() -> set[int]:
    """gpuscope itself and its children (BCC helpers): never a target."""
    return set(procfs.descendants(os.getpid()))
