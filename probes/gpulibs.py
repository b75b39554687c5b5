"""The GPU libraries a target has mapped, their exported symbols, and the
names of code addresses in a target (kernel host stubs).

Discovery reads /proc/PID/maps: every executable file mapping is classified
once per inode as the CUDA runtime (libcudart.so.*, or any ELF exporting
cudaLaunchKernel: a static cudart), the driver (libcuda.so.*) or NCCL
(libnccl.so.*, or an ELF exporting ncclAllReduce). Symbols come from the
ELF files themselves (pyelftools for the section headers, struct for the
symbol tables, which can hold hundreds of thousands of entries).
"""

from __future__ import annotations

import bisect
import os
import re
import struct
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import procfs

CUDART, DRIVER, NCCL = "cudart", "cuda", "nccl"
_BY_NAME = [(re.compile(r"libcudart\.so"), CUDART), (re.compile(r"libcuda\.so"), DRIVER),
            (re.compile(r"libnccl\.so"), NCCL)]
_MARKERS = [(b"\0cudaLaunchKernel\0", CUDART), (b"\0ncclAllReduce\0", NCCL)]
_SKIP = re.compile(r"/(ld-linux|libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|"
                   r"libz|libpython|libffi|libssl|libcrypto)[.-]")

STT_FUNC, STT_GNU_IFUNC, SHN_UNDEF = 2, 10, 0


def _elf(path: str):
    from elftools.elf.elffile import ELFFile

    f = open(path, "rb")
    try:
        return f, ELFFile(f)
    except Exception:
        f.close()
        raise


@dataclass
class SymbolTable:
    """Defined function symbols of one ELF file, sorted by address."""

    addrs: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    exported: dict[str, int] = field(default_factory=dict)   # dynsym name -> address
    loads: list[tuple[int, int, int]] = field(default_factory=list)  # (p_offset, p_filesz, p_vaddr)

    def lookup(self, vaddr: int) -> str | None:
        i = bisect.bisect_right(self.addrs, vaddr) - 1
        if i >= 0 and (vaddr < self.ends[i] or vaddr == self.addrs[i]):
            return self.names[i]
        return None

    def vaddr(self, addr: int, map_start: int, map_offset: int) -> int:
        """The ELF virtual address of a runtime address in a mapping (load bias)."""
        off = addr - map_start + map_offset
        for p_offset, p_filesz, p_vaddr in self.loads:
            if p_offset <= off < p_offset + max(p_filesz, 1):
                return off - p_offset + p_vaddr
        return off


def _read_symbols(elf, section, exported: dict[str, int] | None, out: list) -> None:
    if section is None or section["sh_entsize"] != 24 or elf.elfclass != 64:
        return
    strtab = elf.get_section(section["sh_link"]).data()
    for name_off, info, _other, shndx, value, size in struct.iter_unpack(
            "<IBBHQQ", section.data()):
        if shndx == SHN_UNDEF or (info & 0xF) not in (STT_FUNC, STT_GNU_IFUNC) or not value:
            continue
        end = strtab.index(b"\0", name_off)
        name = strtab[name_off:end].decode("utf-8", "replace")
        out.append((value, value + size, name))
        if exported is not None:
            exported[name] = value


_tables: dict[tuple[int, int, float], SymbolTable] = {}
_tables_lock = threading.Lock()


def _key(path: str) -> tuple[int, int, float] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime


def symbols(path: str) -> SymbolTable | None:
    """The function symbols of an ELF file (.symtab and .dynsym), cached per inode."""
    key = _key(path)
    if key is None:
        return None
    with _tables_lock:
        t = _tables.get(key)
        if t is not None:
            return t
        t = SymbolTable()
        try:
            f, elf = _elf(path)
        except Exception:
            _tables[key] = t
            return t
        with f:
            entries: list[tuple[int, int, str]] = []
            _read_symbols(elf, elf.get_section_by_name(".dynsym"), t.exported, entries)
            _read_symbols(elf, elf.get_section_by_name(".symtab"), None, entries)
            t.loads = [(s["p_offset"], s["p_filesz"], s["p_vaddr"]) for s in elf.iter_segments()
                       if s["p_type"] == "PT_LOAD"]
        entries.sort()
        t.addrs = [e[0] for e in entries]
        t.ends = [e[1] for e in entries]
        t.names = [e[2] for e in entries]
        _tables[key] = t
        return t


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
    try:
        f, elf = _elf(path)
    except Exception:
        return None
    with f:
        dynstr = elf.get_section_by_name(".dynstr")
        if dynstr is None:
            return None
        data = dynstr.data()
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
    out: dict[str, int] = {}
    text = procfs.read_text(f"/proc/{pid}/maps") or ""
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and "x" in parts[1] and parts[5].startswith("/") \
                and not parts[5].endswith(" (deleted)"):
            out[parts[5]] = int(parts[4])
    return out


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

    def __init__(self, demangler: Demangler | None = None):
        self.demangler = demangler or Demangler()
        self._maps: dict[int, list[tuple[int, int, int, str]]] = {}
        self._cache: dict[tuple[int, int], str | None] = {}

    def _regions(self, pid: int, refresh: bool = False) -> list[tuple[int, int, int, str]]:
        r = self._maps.get(pid)
        if r is None or refresh:
            r = self._maps[pid] = sorted((s, e, off, host_path(pid, p))
                                         for s, e, _perm, off, p in procfs.maps(pid)
                                         if p.startswith("/"))
        return r

    def name(self, pid: int, addr: int) -> str | None:
        """Demangled symbol at addr in pid, or None."""
        key = (pid, addr)
        if key in self._cache:
            return self._cache[key]
        name = self._resolve(pid, addr)
        if name is not None:
            name = self.demangler(name)
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


class Demangler:
    """C++ names through one long-lived `c++filt` (binutils), cached; names
    pass through unchanged when c++filt is missing."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._cache: dict[str, str] = {}
        self._broken = False

    def __call__(self, name: str) -> str:
        if not name.startswith("_Z") or self._broken:
            return name
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        try:
            if self._proc is None:
                self._proc = subprocess.Popen(["c++filt"], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, text=True, bufsize=1)
            self._proc.stdin.write(name + "\n")
            self._proc.stdin.flush()
            out = self._proc.stdout.readline().rstrip("\n") or name
        except OSError:
            self._broken = True
            return name
        self._cache[name] = out
        return out

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait()
            self._proc = None


class LibraryAttacher:
    """Attaches one uprobe + uretprobe per (library, symbol) for all processes
    (pid -1; the BPF side filters on the tracked map), once per library, for
    libraries found at start and later (tick)."""

    def __init__(self, kinds: dict[str, dict[str, str]], required: dict[str, set[str]]):
        self.kinds = kinds          # kind -> {symbol: program suffix}
        self.required = required    # kind -> symbols whose absence is worth a notice
        self.attached: dict[str, MappedLib] = {}   # open_path -> lib
        self.probes = 0
        self._seen: set[str] = set()               # target paths looked at
        self._notices: list[str] = []

    def scan(self, bpf, pids: list[int]) -> list[MappedLib]:
        new = []
        for lib in gpu_libraries(pids, self._seen):
            self._seen.add(lib.path)
            if lib.kind in self.kinds and lib.open_path not in self.attached:
                new.append(lib)
                self._attach(bpf, lib)
        return new

    def _attach(self, bpf, lib: MappedLib) -> None:
        self.attached[lib.open_path] = lib
        table = symbols(lib.open_path)
        exported = table.exported if table is not None else {}
        done: set[int] = set()
        for sym, prog in self.kinds[lib.kind].items():
            addr = exported.get(sym)
            if addr is None:
                if sym in self.required.get(lib.kind, ()):
                    self._notices.append(f"{sym} is not exported by {lib.path}: not probed")
                continue
            if addr in done:  # an alias of a symbol already probed
                continue
            try:
                bpf.attach_uprobe(name=lib.open_path, sym=sym, fn_name=f"enter_{prog}", pid=-1)
                bpf.attach_uretprobe(name=lib.open_path, sym=sym, fn_name=f"leave_{prog}",
                                     pid=-1)
            except Exception as e:  # BCC raises bare Exception
                self._notices.append(f"attach uprobe {sym} in {lib.path}: {e}")
                continue
            done.add(addr)
            self.probes += 1

    def notices(self) -> list[str]:
        return list(self._notices)
