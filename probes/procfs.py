"""Reading /proc: the target tree, thread names, open files, mappings, stat
and status. The one parser of each /proc file gpuscope reads. Read-only, and
every read tolerates the process vanishing under it (None, [] or {})."""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from . import fsnames

PROC = "/proc"


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


class Mapping(NamedTuple):
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str      # "r-xp"
    offset: int
    dev: int        # os.makedev(major, minor), comparable with st_dev
    inode: int
    path: str       # '' when anonymous; "[heap]" etc.; " (deleted)" kept as the kernel wrote it

    @property
    def file(self) -> bool:
        return self.path.startswith("/")

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")


class Stat(NamedTuple):
    """The fields of /proc/PID/stat gpuscope uses (see proc(5)); times in clock ticks."""

    pid: int
    comm: str
    state: str      # "R", "S", "D", "Z", ...
    ppid: int
    pgrp: int
    session: int
    flags: int
    minflt: int
    majflt: int
    utime: int
    stime: int
    num_threads: int
    starttime: int  # since boot
    vsize: int      # bytes
    rss: int        # pages
    processor: int  # CPU it last ran on


def parse_stat(raw: bytes) -> Stat | None:
    """A stat line, or None if it is not one. The comm may hold spaces and ')':
    it ends at the last ')'."""
    head, sep, tail = raw.rpartition(b")")
    pid, sep2, name = head.partition(b" (")
    f = tail.split()
    if not sep or not sep2 or len(f) < 37:
        return None
    try:
        return Stat(int(pid), fsnames.text(name), f[0].decode(), int(f[1]),
                    int(f[2]), int(f[3]), int(f[6]), int(f[7]), int(f[9]), int(f[11]),
                    int(f[12]), int(f[17]), int(f[19]), int(f[20]), int(f[21]), int(f[36]))
    except ValueError:
        return None


def stat_state(raw: bytes) -> str | None:
    """Only the state letter of a stat line: for callers that pread stat per sample."""
    i = raw.rfind(b")")
    return chr(raw[i + 2]) if 0 <= i < len(raw) - 2 else None


def _task(pid: int | str, tid: int | None, name: str, proc: str = PROC) -> str:
    return f"{proc}/{pid}/task/{tid}/{name}" if tid else f"{proc}/{pid}/{name}"


def stat(pid: int, tid: int | None = None) -> Stat | None:
    raw = read_bytes(_task(pid, tid, "stat"))
    return parse_stat(raw) if raw is not None else None


def alive(pid: int) -> bool:
    raw = read_bytes(f"{PROC}/{pid}/stat")
    # A zombie has exited; only its parent's wait() is left.
    return raw is not None and stat_state(raw) not in (None, "Z")


def parse_status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def status(pid: int | str, tid: int | None = None, proc: str = PROC) -> dict[str, str]:
    """/proc/PID/status as {"Name": "python3", "NSpid": "4242 7", ...}; {} when gone.
    pid may be "self"; proc another procfs (the host's, seen from a pod)."""
    text = read_text(_task(pid, tid, "status", proc))
    return parse_status(text) if text is not None else {}


def comm(pid: int, tid: int | None = None) -> str:
    return fsnames.text((read_bytes(_task(pid, tid, "comm")) or b"").rstrip(b"\n"))


def cmdline(pid: int) -> list[str]:
    raw = read_bytes(f"/proc/{pid}/cmdline") or b""
    return [fsnames.text(a) for a in raw.split(b"\0") if a]


def pids(proc: str = PROC) -> list[int]:
    """Every process procfs shows (threads are under each one's task/)."""
    try:
        return sorted(int(n) for n in os.listdir(proc) if n.isdigit())
    except OSError:
        return []


def threads(pid: int, proc: str = PROC) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"{proc}/{pid}/task"))
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
    """What the fd is, as a name for the trace (fsnames.text), not to open."""
    try:
        return fsnames.text(os.readlink(f"/proc/{pid}/fd/{fd}".encode()))
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
    """As a name for the trace (fsnames.text): relative paths are joined to it."""
    try:
        return fsnames.text(os.readlink(f"/proc/{pid}/cwd".encode()))
    except OSError:
        return None


def exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def parse_maps(text: str) -> list[Mapping]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        start, _, end = parts[0].partition("-")
        major, _, minor = parts[3].partition(":")
        try:
            out.append(Mapping(int(start, 16), int(end, 16), parts[1], int(parts[2], 16),
                               os.makedev(int(major, 16), int(minor, 16)), int(parts[4]),
                               parts[5] if len(parts) > 5 else ""))
        except ValueError:
            continue
    return out


def maps(pid: int, strict: bool = False) -> list[Mapping]:
    """The mappings of a process in address order; [] when it is gone (or, with
    strict, OSError: for callers that must tell "gone" from "maps nothing")."""
    if strict:
        with open(f"{PROC}/{pid}/maps", "rb") as f:
            return parse_maps(f.read().decode("utf-8", "replace"))
    return parse_maps(read_text(f"{PROC}/{pid}/maps") or "")


# An executable file mapping's line: perms with x, then offset, dev, inode, path.
_EXEC_LINE = re.compile(rb"^[0-9a-f]+-[0-9a-f]+ ..x. [0-9a-f]+ [0-9a-f]+:[0-9a-f]+ (\d+) +(/.*)$", re.M)
_DELETED = b" (deleted)"


def executable_files(pid: int) -> dict[str, int]:
    """path -> inode of the executable file mappings of a process ({} when gone).

    The per-tick library poll's read: a regex over the bytes picks the few
    executable lines out of hundreds (0.7 vs 1.7 ms a call on a torch process)."""
    try:
        with open(f"{PROC}/{pid}/maps", "rb") as f:
            data = f.read()
    except OSError:
        return {}
    return {m[2].decode("utf-8", "replace"): int(m[1]) for m in _EXEC_LINE.finditer(data)
            if not m[2].endswith(_DELETED)}


def file_maps(pid: int, strict: bool = False) -> dict[str, list[Mapping]]:
    """File-backed mappings grouped by path, each group in address order."""
    out: dict[str, list[Mapping]] = {}
    for m in maps(pid, strict):
        if m.file:
            out.setdefault(m.path, []).append(m)
    return out


def smaps(pid: int | str = "self") -> list[tuple[Mapping, dict[str, int]]]:
    """Each mapping with its /proc/PID/smaps counters (kB: Rss, Anonymous, ...)."""
    out: list[tuple[Mapping, dict[str, int]]] = []
    for line in (read_text(f"{PROC}/{pid}/smaps") or "").splitlines():
        key, sep, rest = line.partition(":")
        if sep and " " not in key and out:
            value = rest.split()
            if value and value[0].isdigit():
                out[-1][1][key] = int(value[0])
        else:
            m = parse_maps(line)
            if m:
                out.append((m[0], {}))
    return out
