"""Read another process's memory with process_vm_readv, without stopping it.

One syscall costs ~5 µs from Python, so callers read whole structs (or many
structs at once with read_many) rather than field by field. The target is
never stopped, signalled or ptraced: what we read may be changing under us,
which the stack walker detects; this module only reports what the kernel did.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os


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

IOV_MAX = 1024


class ReadError(OSError):
    """A read of the target's memory failed (bad address, process gone, no permission)."""


class ProcessGone(ReadError):
    """The target process no longer exists (ESRCH)."""


class NoPermission(ReadError):
    """EPERM: the caller may not read this process."""

    def __init__(self, pid: int):
        super().__init__(
            errno.EPERM,
            f"process_vm_readv on pid {pid}: permission denied — "
            "gpuscope needs root or CAP_SYS_PTRACE to read Python stacks",
        )


class ProcessMemory:
    """A reader for one pid. Reuses one local buffer to avoid allocations per read."""

    def __init__(self, pid: int, bufsize: int = 1 << 16):
        self.pid = pid
        self._buf = ctypes.create_string_buffer(bufsize)
        self.reads = 0  # syscalls made, for stats and benchmarks
        self._local = (_IoVec * IOV_MAX)()
        self._remote = (_IoVec * IOV_MAX)()

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
        """Several (addr, size) ranges in as few syscalls as possible.

        A range that cannot be read comes back as None (the kernel stops at the
        first failing range; the rest are retried), so one stale pointer does
        not sink the others.
        """
        out: list[bytes | None] = [None] * len(spans)
        i = 0
        while i < len(spans):
            chunk = spans[i : i + IOV_MAX]
            total = sum(max(s, 0) for _, s in chunk)
            self._ensure(total)
            base = ctypes.addressof(self._buf)
            local, remote = self._local, self._remote
            off = 0
            for k, (a, s) in enumerate(chunk):
                local[k] = (base + off, s)
                remote[k] = (a, s)
                off += s
            self.reads += 1
            n = _readv(self.pid, local, len(chunk), remote, len(chunk), 0)
            if n < 0:
                err = ctypes.get_errno()
                if err in (errno.ESRCH, errno.EPERM):
                    raise self._fail(err, chunk[0][0], chunk[0][1])
                n = 0
            raw = ctypes.string_at(base, n)
            off = 0
            k = 0
            # Ranges the kernel fully copied; a partial one counts as failed.
            while k < len(chunk) and off + chunk[k][1] <= n:
                out[i + k] = raw[off : off + chunk[k][1]]
                off += chunk[k][1]
                k += 1
            if k < len(chunk):
                out[i + k] = None  # the failing range; continue after it
                k += 1
            i += k
        return out
