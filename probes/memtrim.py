"""Gives back the memory BCC's compiler leaves behind, after each attach
(Pipeline.attach, once every source has compiled: `attach`, `run`, the sidecar).

Compiling the probes maps libLLVM and libclang-cpp and touches about 70 MB of
their code, and leaves about 40 MB of freed heap that glibc keeps. Neither is
used again until the next attach (a restarted trainer), yet a capture would
carry both in its RSS for good, which is what a pod's memory limit and the
issue 11 target (200 MB) count. So: malloc_trim(0), then
madvise(MADV_DONTNEED) on the compiler's file mappings that hold no private
(copy-on-write) pages, the only case where dropping them loses nothing: the
kernel faults the same file pages back in if the code runs again."""

from __future__ import annotations

import ctypes
import ctypes.util
import re

from . import procfs

MADV_DONTNEED = 4
COMPILER_LIBS = re.compile(r"/lib(LLVM|clang)[^/]*\.so[^/]*$")


def release_compiler_memory() -> int:
    """kB of RSS given back (best effort: 0 where the calls are missing)."""
    before = _rss_kb()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return 0
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for m, counts in procfs.smaps():
        if (COMPILER_LIBS.search(m.path) and m.perms[3] == "p" and "w" not in m.perms
                and counts.get("Anonymous", 1) == 0 and counts.get("Rss", 0) > 0):
            libc.madvise(m.start, m.end - m.start, MADV_DONTNEED)
    return max(0, before - _rss_kb())


def _rss_kb() -> int:
    try:
        return int(procfs.status("self").get("VmRSS", "0 kB").split()[0])
    except ValueError:
        return 0
