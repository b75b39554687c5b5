"""Reading /proc: the target tree, thread names, open files. Read-only, and
every read tolerates the process vanishing under it."""

from __future__ import annotations

import os
from collections.abc import Iterator


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # A zombie has exited; only its parent's wait() is left.
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def comm(pid: int, tid: int | None = None) -> str:
    path = f"/proc/{pid}/task/{tid}/comm" if tid else f"/proc/{pid}/comm"
    return (read_text(path) or "").strip()


def cmdline(pid: int) -> list[str]:
    raw = read_text(f"/proc/{pid}/cmdline") or ""
    return [a for a in raw.split("\0") if a]


def threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """Direct child processes, from every thread's children list."""
    out: set[int] = set()
    for tid in threads(pid):
        text = read_text(f"/proc/{pid}/task/{tid}/children") or ""
        out.update(int(c) for c in text.split())
    return sorted(out)


def descendants(pid: int) -> list[int]:
    """pid and every process below it, parents first."""
    seen, order, todo = set(), [], [pid]
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        order.append(p)
        todo.extend(children(p))
    return order


def fd_path(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


def fd_table(pid: int) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        path = fd_path(pid, int(name))
        if path is not None:
            out[int(name)] = path
    return out


def cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def maps(pid: int) -> Iterator[tuple[int, int, str, int, str]]:
    """(start, end, perms, offset, path) of each mapping; path '' when anonymous."""
    text = read_text(f"/proc/{pid}/maps") or ""
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        yield start, end, parts[1], int(parts[2], 16), parts[5] if len(parts) > 5 else ""
