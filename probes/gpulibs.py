"""The GPU libraries a target has mapped, their exported symbols, and the
names of code addresses in a target (kernel host stubs).

Discovery reads /proc/PID/maps: every executable file mapping is classified
once per inode as the CUDA runtime (libcudart.so.*, or any ELF exporting
cudaLaunchKernel: a static cudart), the driver (libcuda.so.*) or NCCL
(libnccl.so.*, or an ELF exporting ncclAllReduce). Symbols come from
elfsyms, names from demangle.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from . import procfs
from .demangle import demangle
from .elfsyms import dynamic_strings, symbols

CUDART, DRIVER, NCCL = "cudart", "cuda", "nccl"
_BY_NAME = [(re.compile(r"libcudart\.so"), CUDART), (re.compile(r"libcuda\.so"), DRIVER),
            (re.compile(r"libnccl\.so"), NCCL)]
_MARKERS = [(b"\0cudaLaunchKernel\0", CUDART), (b"\0ncclAllReduce\0", NCCL)]
_SKIP = re.compile(r"/(ld-linux|libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|"
                   r"libz|libpython|libffi|libssl|libcrypto)[.-]")


def _key(path: str) -> tuple[int, int, float] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime


_kinds: dict[tuple[int, int, float], str | None] = {}


def classify(path: str) -> str | None:
    """CUDART, DRIVER, NCCL or None for one mapped file (cached per inode)."""
    key = _key(path)
    if key is None:
        return None
    if key in _kinds:
        return _kinds[key]
    base = os.path.basename(path)
    kind = next((k for rx, k in _BY_NAME if rx.match(base)), None)
    if kind is None and not _SKIP.search(path):
        kind = _exports_marker(path)
    _kinds[key] = kind
    return kind


def _exports_marker(path: str) -> str | None:
    """Does the file's dynamic string table name a CUDA runtime or NCCL entry point?"""
    data = dynamic_strings(path)
    for marker, kind in _MARKERS:
        if marker in data:
            t = symbols(path)
            if t is not None and marker.strip(b"\0").decode() in t.exported:
                return kind
    return None


@dataclass(frozen=True)
class MappedLib:
    kind: str
    path: str       # as the target sees it (/proc/PID/maps)
    open_path: str  # a path to the same file from here (through /proc/PID/root if needed)


def host_path(pid: int, path: str, inode: int | None = None) -> str:
    """A path to the file the target mapped, valid in our mount namespace."""
    try:
        if inode is None or os.stat(path).st_ino == inode:
            return path
    except OSError:
        pass
    return f"/proc/{pid}/root{path}"


def mapped_files(pid: int) -> dict[str, int]:
    """path -> inode of the executable file mappings of a process."""
    return procfs.executable_files(pid)


def gpu_libraries(pids: Iterable[int], skip: set[str] | None = None) -> list[MappedLib]:
    """GPU libraries mapped by these processes, except paths already in skip."""
    found: dict[str, MappedLib] = {}
    for pid in pids:
        for path, inode in mapped_files(pid).items():
            if path in found or (skip is not None and path in skip):
                continue
            open_path = host_path(pid, path, inode)
            kind = classify(open_path)
            if kind is not None:
                found[path] = MappedLib(kind, path, open_path)
            elif skip is not None:
                skip.add(path)
    return list(found.values())


class Symbolizer:
    """Names code addresses in target processes from /proc/PID/maps and ELF symbols."""

    def __init__(self):
        self._maps: dict[int, list[tuple[int, int, int, str]]] = {}
        self._cache: dict[tuple[int, int], str | None] = {}

    def _regions(self, pid: int, refresh: bool = False) -> list[tuple[int, int, int, str]]:
        r = self._maps.get(pid)
        if r is None or refresh:
            r = self._maps[pid] = sorted((m.start, m.end, m.offset, host_path(pid, m.path, m.inode))
                                         for m in procfs.maps(pid) if m.file)
        return r

    def name(self, pid: int, addr: int) -> str | None:
        """Demangled symbol at addr in pid, or None."""
        key = (pid, addr)
        if key in self._cache:
            return self._cache[key]
        name = self._resolve(pid, addr)
        if name is not None:
            name = demangle(name)
        self._cache[key] = name
        return name

    def _resolve(self, pid: int, addr: int) -> str | None:
        for refresh in (False, True):
            regions = self._regions(pid, refresh)
            i = bisect.bisect_right(regions, (addr, 1 << 64)) - 1
            if i >= 0 and regions[i][0] <= addr < regions[i][1]:
                start, _end, offset, path = regions[i]
                t = symbols(path)
                if t is None:
                    return None
                return t.lookup(t.vaddr(addr, start, offset))
        return None

    def forget(self, pid: int) -> None:
        self._maps.pop(pid, None)
        self._cache = {k: v for k, v in self._cache.items() if k[0] != pid}
