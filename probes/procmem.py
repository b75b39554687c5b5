"""Read another process's memory with process_vm_readv, without stopping it.

One syscall costs a few µs from Python, so callers read whole structs (or many
structs at once with read_many) rather than field by field. The target is
never stopped, signalled or ptraced: what we read may be changing under us,
which the stack walker detects; this module only reports what the kernel did.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_readv = _libc.process_vm_readv
_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_readv.restype = ctypes.c_ssize_t
# The same function taking iovec arrays by address: read_many packs them with struct.
_readv_raw = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong,
                              ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong,
                              use_errno=True)(("process_vm_readv", _libc))
_IOV_FMT: dict[int, struct.Struct] = {}

IOV_MAX = 1024
MERGE_GAP = 2048  # bytes: reading this much more costs less than another iovec


class ReadError(OSError):
    """A read of the target's memory failed (bad address, process gone, no permission)."""


class ProcessGone(ReadError):
    """The target process no longer exists (ESRCH)."""


def denied_why() -> str:
    """Why process_vm_readv was refused, as far as can be told from here."""
    if os.geteuid():
        return "needs root or CAP_SYS_PTRACE"
    return ("refused although gpuscope runs as root: the process holds capabilities gpuscope "
            "lacks, is in another user namespace, or a security module forbids it")


class NoPermission(ReadError):
    """EPERM: the caller may not read this process."""

    def __init__(self, pid: int):
        super().__init__(
            errno.EPERM,
            f"process_vm_readv on pid {pid}: permission denied — reading Python stacks "
            + denied_why(),
        )


class ProcessMemory:
    """A reader for one pid. Reuses one local buffer to avoid allocations per read."""

    def __init__(self, pid: int, bufsize: int = 1 << 16):
        self.pid = pid
        self._buf = ctypes.create_string_buffer(bufsize)
        self.reads = 0  # syscalls made, for stats and benchmarks
        self._local = (_IoVec * IOV_MAX)()
        self._remote = (_IoVec * IOV_MAX)()
        self._local_addr, self._remote_addr = ctypes.addressof(self._local), ctypes.addressof(self._remote)
        self._local_mv = memoryview(self._local).cast("B")
        self._remote_mv = memoryview(self._remote).cast("B")

    def _ensure(self, n: int) -> None:
        if n > len(self._buf):
            self._buf = ctypes.create_string_buffer(max(n, 2 * len(self._buf)))

    def _fail(self, err: int, addr: int, size: int) -> ReadError:
        if err == errno.ESRCH:
            return ProcessGone(err, f"pid {self.pid} is gone")
        if err == errno.EPERM:
            return NoPermission(self.pid)
        return ReadError(err, f"read {size} bytes at {addr:#x} in pid {self.pid}: {os.strerror(err)}")

    def read(self, addr: int, size: int) -> bytes:
        """Exactly size bytes at addr, or raise. A short read (the range crosses
        into an unmapped page) is retried for the remainder once, then fails."""
        if size <= 0:
            return b""
        if addr <= 0:
            raise ReadError(errno.EFAULT, f"null read in pid {self.pid}")
        self._ensure(size)
        buf = self._buf
        base = ctypes.addressof(buf)
        done = 0
        while done < size:
            local = _IoVec(base + done, size - done)
            remote = _IoVec(addr + done, size - done)
            self.reads += 1
            n = _readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if n < 0:
                raise self._fail(ctypes.get_errno(), addr + done, size - done)
            if n == 0:
                raise self._fail(errno.EFAULT, addr + done, size - done)
            done += n
        return ctypes.string_at(base, size)

    def read_many(self, spans: list[tuple[int, int]]) -> list[bytes | None]:
        """Several (addr, size) ranges in as few syscalls and iovecs as possible.

        The kernel's cost is per remote iovec (each pins its pages on its own: ~0.4 µs,
        against ~1 µs for a whole 6 KB range), so ranges less than MERGE_GAP apart are
        read as one. A range that cannot be read comes back as None (a merged range
        that fails is read again range by range), so one stale pointer does not sink
        the others. Sizes of 0 give b"".
        """
        n = len(spans)
        out: list[bytes | None] = [None] * n
        regions: list[list] = []  # [start, end, member indices]
        for i in sorted(range(n), key=spans.__getitem__):
            a, size = spans[i]
            if size <= 0:
                out[i] = b""
                continue
            if regions and a <= regions[-1][1] + MERGE_GAP and a > 0:
                r = regions[-1]
                if a + size > r[1]:
                    r[1] = a + size
                r[2].append(i)
            else:
                regions.append([a, a + size, [i]])
        got = self._readv_ranges([(r[0], r[1] - r[0]) for r in regions])
        for (start, _end, members), data in zip(regions, got, strict=True):
            if data is None and len(members) > 1:
                for i, d in zip(members, self._readv_ranges([spans[i] for i in members]), strict=True):
                    out[i] = d
                continue
            for i in members:
                a, size = spans[i]
                out[i] = data[a - start : a - start + size] if data is not None else None
        return out

    def _readv_ranges(self, spans: list[tuple[int, int]]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(spans)
        i = 0
        while i < len(spans):
            chunk = spans[i : i + IOV_MAX]
            m = len(chunk)
            total = sum(s for _, s in chunk)
            self._ensure(total)
            base = ctypes.addressof(self._buf)
            flat_l: list[int] = []
            flat_r: list[int] = []
            off = 0
            for a, s in chunk:
                flat_l += (base + off, s)
                flat_r += (a, s)
                off += s
            fmt = _IOV_FMT.get(m) or _IOV_FMT.setdefault(m, struct.Struct(f"<{2 * m}Q"))
            fmt.pack_into(self._local_mv, 0, *flat_l)
            fmt.pack_into(self._remote_mv, 0, *flat_r)
            self.reads += 1
            n = _readv_raw(self.pid, self._local_addr, m, self._remote_addr, m, 0)
            if n < 0:
                err = ctypes.get_errno()
                if err in (errno.ESRCH, errno.EPERM):
                    raise self._fail(err, chunk[0][0], chunk[0][1])
                n = 0
            raw = ctypes.string_at(base, n)
            off = 0
            k = 0
            # Ranges the kernel fully copied; a partial one counts as failed.
            while k < m and off + chunk[k][1] <= n:
                out[i + k] = raw[off : off + chunk[k][1]]
                off += chunk[k][1]
                k += 1
            if k < m:
                out[i + k] = None  # the failing range; continue after it
                k += 1
            i += k
        return out
