"""The symbols of ELF files, read once per file and cached by file identity.

Everything that needs a symbol asks here: the uprobe attach checks (does this
libcudart export cudaLaunchKernel?), kernel names from code addresses, and
CPython's _PyRuntime. pyelftools' structs parse the ELF, section and program
headers; the symbol tables themselves are unpacked with struct, because they
can hold hundreds of thousands of entries (libtorch_cpu.so: 600k) and
pyelftools builds one Python object per entry (bench/bench_symbols.py: 10-70x
slower).

The cache key is (st_dev, st_ino, st_size, st_mtime_ns) of the opened file, so
the same library reached as /usr/lib/x.so, /proc/PID/root/usr/lib/x.so or
/proc/PID/map_files/... is read once, and a rebuilt file is read again.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

STT_OBJECT, STT_FUNC, STT_GNU_IFUNC = 1, 2, 10
STB_LOCAL = 0
SHN_UNDEF = 0
VERSYM_HIDDEN = 0x8000  # .gnu.version: not the default version of its name
MAX_FILES = 64  # distinct ELF files kept; a long-running sidecar sees many venvs

_FUNC = (STT_FUNC, STT_GNU_IFUNC)
_NAMED = (STT_FUNC, STT_GNU_IFUNC, STT_OBJECT)


@dataclass
class ElfSymbols:
    """Defined symbols of one ELF file, and what is needed to place them in a process."""

    e_type: str = ""                                        # "ET_DYN", "ET_EXEC"
    loads: list[tuple[int, int, int, int]] = field(default_factory=list)
    # ^ PT_LOAD segments: (p_offset, p_filesz, p_vaddr, p_align)
    sections: dict[str, int] = field(default_factory=dict)  # section name -> sh_addr
    addrs: list[int] = field(default_factory=list)          # functions, sorted by address
    ends: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    exported: dict[str, int] = field(default_factory=dict)  # .dynsym functions and objects
    # ^ of a versioned name (realpath@GLIBC_2.2.5, realpath@@GLIBC_2.3) the default one
    unexported: dict[str, int] = field(default_factory=dict)  # global ones only in .symtab

    def lookup(self, vaddr: int) -> str | None:
        """The function containing an ELF virtual address (mangled), or None."""
        i = bisect.bisect_right(self.addrs, vaddr) - 1
        if i >= 0 and (vaddr < self.ends[i] or vaddr == self.addrs[i]):
            return self.names[i]
        return None

    def address(self, name: str) -> int | None:
        """st_value of a defined function or object, from .dynsym, else .symtab."""
        v = self.exported.get(name)
        return v if v is not None else self.unexported.get(name)

    def vaddr(self, addr: int, map_start: int, map_offset: int) -> int:
        """The ELF virtual address of a runtime address in a mapping (load bias)."""
        off = addr - map_start + map_offset
        for p_offset, p_filesz, p_vaddr, _align in self.loads:
            if p_offset <= off < p_offset + max(p_filesz, 1):
                return off - p_offset + p_vaddr
        return off

    @property
    def load_vaddr(self) -> int:
        """The first PT_LOAD's p_vaddr rounded down to its alignment: what the
        loader maps at the lowest address (load bias = that address - this)."""
        if not self.loads:
            return 0
        _off, _size, vaddr, align = self.loads[0]
        return vaddr & ~(max(align, 1) - 1)


class _Sections:
    """Section and program headers, read with pyelftools' structs but without its
    section and segment objects (building those parses e.g. the whole GNU hash
    table: a third of the time on libtorch_cpu.so)."""

    def __init__(self, elf, f):
        from elftools.common.utils import struct_parse

        self.f = f
        self.segments = [struct_parse(elf.structs.Elf_Phdr, f, elf["e_phoff"] + i * elf["e_phentsize"])
                         for i in range(elf.num_segments())]
        self.headers = [struct_parse(elf.structs.Elf_Shdr, f, elf["e_shoff"] + i * elf["e_shentsize"])
                        for i in range(elf.num_sections())]
        names = self.data(self.headers[elf.get_shstrndx()]) if self.headers else b""
        self.by_name: dict[str, Any] = {}  # name -> the first section header of that name
        for h in self.headers:
            off = h["sh_name"]
            self.by_name.setdefault(names[off:names.find(b"\0", off)].decode("utf-8", "replace"), h)

    def data(self, header) -> bytes:
        if header["sh_type"] == "SHT_NOBITS":
            return b""
        self.f.seek(header["sh_offset"])
        return self.f.read(header["sh_size"])


def _entries(elf, secs: _Sections, name: str):
    """A symbol table's entries as ELF64 orders them (st_name, st_info, st_other,
    st_shndx, st_value, st_size), and its string table."""
    h = secs.by_name.get(name)
    if h is None or not 0 < h["sh_link"] < len(secs.headers):
        return (), b""
    bits = "<" if elf.little_endian else ">"
    if elf.elfclass == 64 and h["sh_entsize"] == 24:
        raw = struct.iter_unpack(bits + "IBBHQQ", secs.data(h))
    elif elf.elfclass == 32 and h["sh_entsize"] == 16:
        raw = ((n, i, o, x, v, z) for n, v, z, i, o, x in struct.iter_unpack(bits + "IIIBBH", secs.data(h)))
    else:
        return (), b""
    return raw, secs.data(secs.headers[h["sh_link"]])


def _read(f) -> ElfSymbols:
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(f)
    t = ElfSymbols(e_type=elf.header["e_type"])
    secs = _Sections(elf, f)
    t.loads = [(s["p_offset"], s["p_filesz"], s["p_vaddr"], s["p_align"])
               for s in secs.segments if s["p_type"] == "PT_LOAD"]
    t.sections = {name: h["sh_addr"] for name, h in secs.by_name.items() if name}
    funcs: list[tuple[int, int, str]] = []
    exported, unexported = t.exported, t.unexported
    entries, strtab = _entries(elf, secs, ".dynsym")
    versym = secs.by_name.get(".gnu.version")
    versions = (struct.unpack(("<" if elf.little_endian else ">") + f"{versym['sh_size'] // 2}H",
                              secs.data(versym)) if versym is not None else ())
    for i, (off, info, _other, shndx, value, size) in enumerate(entries):
        kind = info & 0xF
        if shndx == SHN_UNDEF or not value or kind not in _NAMED:
            continue
        name = strtab[off:strtab.index(b"\0", off)].decode("utf-8", "replace")
        if i < len(versions) and versions[i] & VERSYM_HIDDEN:
            exported.setdefault(name, value)  # an old version: only if there is no default
        else:
            exported[name] = value
        if kind in _FUNC:
            funcs.append((value, value + size, name))
    entries, strtab = _entries(elf, secs, ".symtab")
    for off, info, _other, shndx, value, size in entries:
        kind = info & 0xF
        if shndx == SHN_UNDEF or not value or kind not in _NAMED:
            continue
        local = info >> 4 == STB_LOCAL
        if local and kind == STT_OBJECT:
            continue  # file-static data: nothing asks for it
        name = strtab[off:strtab.index(b"\0", off)].decode("utf-8", "replace")
        if not local:  # .dynsym holds no local symbols
            if exported.get(name) == value:
                continue  # the same symbol as in .dynsym
            unexported.setdefault(name, value)
        if kind in _FUNC:
            funcs.append((value, value + size, name))
    funcs.sort()
    t.addrs = [e[0] for e in funcs]
    t.ends = [e[1] for e in funcs]
    t.names = [e[2] for e in funcs]
    return t


_files: OrderedDict[tuple[int, int, int, int], ElfSymbols | None] = OrderedDict()
_lock = threading.Lock()  # guards _files and _reading, never held while a file is read
_reading: dict[tuple[int, int, int, int], threading.Lock] = {}


def symbols(path: str) -> ElfSymbols | None:
    """The symbols of the ELF file at path, or None if it cannot be opened or is
    not an ELF file. Cached per file identity (the last MAX_FILES files).

    Reading libtorch_cuda.so takes seconds: meanwhile other files are served
    (the stack sampler resolving a new interpreter must not wait on it), and a
    second caller for the same file waits for the first one's result."""
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        try:
            st = os.fstat(f.fileno())
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _lock:
            if key in _files:
                _files.move_to_end(key)
                return _files[key]
            reading = _reading.setdefault(key, threading.Lock())
        with reading:
            with _lock:
                if key in _files:
                    return _files[key]
            try:
                t: ElfSymbols | None = _read(f)
            except Exception:  # pyelftools raises its own errors, struct too: not an ELF we can read
                t = None
            with _lock:
                _files[key] = t
                _reading.pop(key, None)
                while len(_files) > MAX_FILES:
                    _files.popitem(last=False)
            return t


def offset_in(loads: list[tuple[int, int, int, int]], vaddr: int) -> int:
    """The file offset of an ELF virtual address, through PT_LOADs as
    ElfSymbols.loads holds them (ElfSymbols.vaddr's inverse; what a uprobe link
    takes: they differ where a p_vaddr is not its p_offset, as with lld)."""
    for p_offset, p_filesz, p_vaddr, _align in loads:
        if p_vaddr <= vaddr < p_vaddr + max(p_filesz, 1):
            return vaddr - p_vaddr + p_offset
    return vaddr


_segments: OrderedDict[tuple[int, int, int, int], list[tuple[int, int, int, int]]] = OrderedDict()


def load_segments(path: str) -> list[tuple[int, int, int, int]]:
    """The PT_LOADs of a file (as ElfSymbols.loads), from its symbols if they are
    cached, else from its program headers alone: libtorch_cpu.so's uprobes must
    not cost a read of its 600k symbols. [] when unreadable."""
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            with _lock:
                t = _files.get(key)
                if t is not None:
                    return t.loads
                if key in _segments:
                    return _segments[key]
            loads = [(s["p_offset"], s["p_filesz"], s["p_vaddr"], s["p_align"])
                     for s in _Sections(ELFFile(f), f).segments if s["p_type"] == "PT_LOAD"]
    except Exception:  # unreadable or not an ELF
        return []
    with _lock:
        _segments[key] = loads
        while len(_segments) > MAX_FILES:
            _segments.popitem(last=False)
    return loads


def dynamic_strings(path: str) -> bytes:
    """The raw .dynstr of a file (b'' when there is none): a quick "does it name
    X at all" test before its symbol tables are read."""
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            secs = _Sections(ELFFile(f), f)
            h = secs.by_name.get(".dynstr")
            return secs.data(h) if h is not None else b""
    except Exception:  # unreadable or not an ELF
        return b""


def find_functions(path: str, prefixes: list[str]) -> dict[str, int]:
    """prefix -> st_value of the first defined function whose name starts with
    it and is not a compiler's clone (.symtab, then .dynsym; local symbols too), without reading the whole
    table into Python: a few symbols of libtorch_cpu.so (600k) cost no more
    than its string table held briefly, not the ~130 MB a symbols() table
    keeps. 64-bit little-endian ELF only (else {})."""
    from array import array

    from elftools.elf.elffile import ELFFile

    found: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.elfclass != 64 or not elf.little_endian:
                return found
            secs = _Sections(elf, f)
            for table in (".symtab", ".dynsym"):
                h = secs.by_name.get(table)
                if h is None or h["sh_entsize"] != 24 or not 0 < h["sh_link"] < len(secs.headers):
                    continue
                strtab = secs.data(secs.headers[h["sh_link"]])
                offsets = {}
                for p in prefixes:
                    i = strtab.find(b"\0" + p.encode())
                    while p not in found and i >= 0:
                        name = strtab[i + 1:strtab.index(b"\0", i + 1)]
                        if b"." not in name:  # not a compiler's clone (.cold, .isra, .constprop)
                            offsets[i + 1] = p
                            break
                        i = strtab.find(b"\0" + p.encode(), i + 1)
                if not offsets:
                    continue
                words = array("I", secs.data(h))   # each entry: 6 x u32 (name, info..., value lo/hi, size)
                names = words[0::6]
                for off, p in offsets.items():
                    start = 0
                    while True:
                        try:
                            k = names.index(off, start)
                        except ValueError:
                            break
                        value = words[6 * k + 2] | words[6 * k + 3] << 32
                        info = words[6 * k + 1] & 0xF
                        if value and info in _FUNC:
                            found[p] = value
                            break
                        start = k + 1
    except Exception:  # unreadable or not an ELF
        return found
    return found


__all__ = ["ElfSymbols", "dynamic_strings", "find_functions", "symbols"]
