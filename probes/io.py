"""IO syscall probe: what the target tree reads, writes, opens and maps,
with paths, bytes and latency. Keeps each process's fd -> path table from
openat's own results (seeded from /proc), because the kernel structs that
hold it cannot be read safely here.

IO on fds that are not data files (pipes, sockets, /dev, ...) is summed in
the kernel (summed.py), which keeps its own fd -> class map (io.bpf.c);
this seeds that map from /proc for processes it did not see create them."""

from __future__ import annotations

import ctypes as ct
import errno
import os
import struct

from . import fsnames, procfs
from .bccload import bcc_module, tracepoint_exists
from .events import IO, Event, Span
from .kernel import BPF_NOEXIST, CFG_IO_ONEBY_PER_CPU_S, Probe
from .ringbuf import event_class, struct_of
from .summed import CLS_DATA, CLS_OTHER

# Kind numbers from io.h -> syscall names.
IO_KINDS = {1: "openat", 2: "read", 3: "pread64", 4: "readv", 5: "preadv", 6: "write",
            7: "pwrite64", 8: "writev", 9: "close", 10: "mmap", 11: "statx",
            12: "newfstatat", 13: "getdents64", 14: "dup", 15: "preadv2", 16: "openat2",
            17: "pipe2", 18: "socket", 19: "socketpair", 20: "eventfd2", 21: "memfd_create"}
_OPENS = {1, 16}
_PATH_KINDS = {1, 11, 12, 16}
# fd-creating kinds -> (what /proc shows for such an fd, the label if it does not)
_NEW_FDS = {17: ("pipe:", "pipe"), 18: ("socket:", "socket"), 19: ("socket:", "socket"),
            20: ("anon_inode:", "eventfd"), 21: ("/memfd:", "memfd")}
_BYTES_KINDS = {2, 3, 4, 5, 6, 7, 8, 15}  # ret is a byte count
_OFFSET_KINDS = {3, 5, 7, 10, 15}         # offset is an argument
AT_FDCWD = -100
_NOT_DATA = ("/dev/", "/proc/", "/sys/", "/memfd:")
# Flood control (io.bpf.c): data-file reads/writes shipped one by one per
# second, machine-wide (split evenly across CPUs); beyond that they are summed
# in the kernel. Real loaders stay well below it (8 workers reading 1,000
# files/s make ~16k calls/s); a one-by-one event costs the collector ~6 µs, so
# 20k/s is ~12% of a core at most, and a flood is never lost. `--io-oneby-per-s`.
IO_ONEBY_PER_S = 20_000
_GPU_LIB, _GPU_LIB2 = "/libcu", "/libnccl"   # as io.bpf.c's gpu_library()


def fd_class(link: str) -> int:
    """The kernel's class (summed.h) for what /proc/PID/fd/N links to: the
    same rule io.bpf.c applies to paths, plus what only /proc shows
    (pipe:[..], socket:[..], anon_inode:..)."""
    if link.startswith("/") and not link.startswith(_NOT_DATA) and link not in ("/dev", "/proc", "/sys"):
        return CLS_DATA
    return CLS_OTHER


class IoProbe(Probe):
    name = "io"
    bpf_file = "io.bpf.c"
    ring = "io_events"
    drop_slot = 0  # DROP_IO
    summed_kinds = IO_KINDS
    raw_bytes = True

    def __init__(self, oneby_per_s: int = IO_ONEBY_PER_S):
        self.oneby_per_s = oneby_per_s   # 0: no flood control (every transfer one by one)
        self.flooded = 0                 # transfers summed because of it, so far
        self.head = struct.Struct("")  # at attach: struct io_event up to its path (only some records carry one)
        self.fds: dict[int, dict[int, str]] = {}
        # Told when a tracked process opens or maps a file named like a GPU
        # library (the CUDA/NCCL probes attach their uprobes on the open).
        self.listeners: list[Probe] = []

    def cflags(self) -> list[str]:
        return ["-DHAVE_OPENAT2"] if tracepoint_exists("syscalls", "sys_enter_openat2") else []

    def attach(self, bpf) -> None:
        self.head = struct_of(event_class(bpf[self.ring]), upto="path")
        per_cpu = -(-self.oneby_per_s // (os.cpu_count() or 1)) if self.oneby_per_s > 0 else 0
        bpf["gs_config"][ct.c_int(CFG_IO_ONEBY_PER_CPU_S)] = ct.c_uint64(per_cpu)

    def tick(self, bpf, out: list[Event]) -> None:
        self.flooded = sum(bpf["io_flooded"][ct.c_int(0)])

    def notices(self) -> list[str]:
        if not self.flooded:
            return []
        return [f"io: {self.flooded:,} data-file reads/writes beyond {self.oneby_per_s:,}/s were "
                "summed in the kernel, not traced one by one (IO (summed) slices: calls, bytes, "
                "time; no paths)"]

    def initial_events(self, pids: list[int], out: list[Event]) -> None:
        for pid in pids:
            self._table(pid)

    def seed(self, bpf, kid: int, pid: int) -> None:
        # Only where the kernel has no class yet: it may already have seen
        # a newer fd behind the same number than the /proc read shows.
        table, update = bpf["fd_classes"], bcc_module().libbcc.lib.bpf_update_elem
        for fd, link in procfs.fd_table(pid).items():
            key, val = table.Key(kid, fd), ct.c_uint32(fd_class(link))
            update(table.map_fd, ct.byref(key), ct.byref(val), BPF_NOEXIST)

    # -- fd table ----------------------------------------------------------
    def _table(self, pid: int) -> dict[int, str]:
        t = self.fds.get(pid)
        if t is None:
            t = self.fds[pid] = procfs.fd_table(pid)
        return t

    def on_fork(self, pid: int, ppid: int) -> None:
        self.fds[pid] = dict(self._table(ppid))

    def on_exit(self, pid: int) -> None:
        self.fds.pop(pid, None)

    def path_of(self, pid: int, fd: int) -> str | None:
        """Only what the table knows: every fd is named at its creation (or
        from /proc at attach), never guessed later, when /proc may already
        show a newer file behind the same number."""
        return self._table(pid).get(fd)

    def _created(self, pid: int, kind: int, fds: list[int]) -> None:
        prefix, label = _NEW_FDS[kind]
        t = self._table(pid)
        for fd in fds:
            if fd >= 0:
                now = procfs.fd_path(pid, fd)  # right unless closed and reused already
                t[fd] = now if now and now.startswith(prefix) else label

    def _resolve(self, pid: int, dirfd: int, path: str) -> str:
        if not path:  # fstat(fd) is newfstatat(fd, "", AT_EMPTY_PATH)
            return self.path_of(pid, dirfd) or ""
        if path.startswith("/"):
            return path
        base = procfs.cwd(pid) if dirfd == AT_FDCWD else self.path_of(pid, dirfd)
        return os.path.normpath(os.path.join(base, path)) if base else path

    # -- decode ------------------------------------------------------------
    def decode(self, raw: bytes, size: int, out: list[Event]) -> None:
        start, end, pid, tid, kind, fd, ret, count, offset = self.head.unpack_from(raw)
        if kind in _BYTES_KINDS and ret >= 0:   # the commonest: a read or write of a known fd
            t = self.fds.get(pid)
            known = t.get(fd) if t is not None else self._table(pid).get(fd)
            if known is not None:
                out.append(Span(IO, IO_KINDS[kind], pid, tid, start, end,
                                {"fd": fd, "path": known, "bytes": ret, "requested": count,
                                 "offset": offset}
                                if offset >= 0 and kind in _OFFSET_KINDS else
                                {"fd": fd, "path": known, "bytes": ret, "requested": count}))
                return
        args: dict = {}
        if kind in _NEW_FDS:
            fds = [count, offset] if kind in (17, 19) else [ret]
            if ret >= 0:
                self._created(pid, kind, [int(x) for x in fds])
                args["fds" if len(fds) == 2 else "fd"] = (
                    f"{int(fds[0])},{int(fds[1])}" if len(fds) == 2 else ret)
        elif kind in _PATH_KINDS:
            path = self._resolve(pid, fd, fsnames.text(raw[self.head.size:].split(b"\0", 1)[0]))
            args["path"] = path
            if kind in _OPENS and ret >= 0:
                self._table(pid)[ret] = path
                args["fd"] = ret
                if _GPU_LIB in path or _GPU_LIB2 in path:
                    for p in self.listeners:
                        p.on_library_open(pid, path, out)
        else:
            args["fd"] = fd
            known = self.path_of(pid, fd)
            if known is not None:
                args["path"] = known
            if kind == 9:  # close
                self._table(pid).pop(fd, None)
            elif kind == 14 and ret >= 0 and known is not None:  # dup*
                self._table(pid)[ret] = known
        if kind in _BYTES_KINDS:
            if ret >= 0:
                args["bytes"] = ret
            args["requested"] = count
        elif kind == 10:  # mmap
            args["length"] = count
            if ret >= 0 and known and (_GPU_LIB in known or _GPU_LIB2 in known):
                for p in self.listeners:
                    p.on_library_mapped(pid, known, start, out)
        if offset >= 0 and kind in _OFFSET_KINDS:
            args["offset"] = offset
        if ret < 0:
            args["error"] = errno.errorcode.get(-ret, str(-ret))
        out.append(Span(IO, IO_KINDS.get(kind) or f"io{kind}", pid, tid, start, end, args))
