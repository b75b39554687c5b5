"""Find a process's CPython runtime: which ELF holds `_PyRuntime`, where it is
loaded, which version it is, and the type addresses the walker checks against.

The ELF is read from the target's own view of the filesystem
(/proc/PID/root/<path>, else /proc/PID/map_files/<range>), so venvs, deleted
files and other mount namespaces work. Parsed ELF facts are cached by file
identity, so a forked DataLoader worker (same exe, same maps) costs a maps
read, not an ELF parse; a process that exec()s is simply resolved again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import threading
from dataclasses import dataclass

from elftools.elf.constants import SHN_INDICES
from elftools.elf.elffile import ELFFile

from .procmem import ProcessMemory
from .pylayouts import DEBUG_READ_SIZE, Layout, UnsupportedVersion, layout_for

_WANTED = ("_PyRuntime", "PyCode_Type", "PyUnicode_Type", "Py_Version", "PyAIter_Check")


class NotPython(Exception):
    """The process has no CPython runtime we can find."""


@dataclass(frozen=True)
class ElfFacts:
    e_type: str
    load_vaddr: int  # first PT_LOAD p_vaddr rounded down to its alignment
    symbols: dict[str, int]  # defined symbols among _WANTED -> st_value
    pyruntime_section: int | None  # sh_addr of .PyRuntime


@dataclass(frozen=True)
class Runtime:
    """Everything the stack walker needs to know about one process's interpreter."""

    pid: int
    path: str  # the ELF defining _PyRuntime, as the target names it
    base: int  # load bias added to symbol values
    runtime_addr: int
    code_type: int  # &PyCode_Type in the target
    version: tuple[int, int, int]  # micro == -1 when unknown (3.10 from a file name)
    layout: Layout

    @property
    def version_str(self) -> str:
        major, minor, micro = self.version
        return f"{major}.{minor}" + (f".{micro}" if micro >= 0 else "")


_cache: dict[tuple, ElfFacts | None] = {}
_cache_lock = threading.Lock()


@dataclass
class _Mapping:
    start: int
    end: int
    offset: int
    path: str


def read_maps(pid: int) -> dict[str, list[_Mapping]]:
    """File-backed mappings grouped by path, in address order."""
    out: dict[str, list[_Mapping]] = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            lo, hi = parts[0].split("-")
            path = parts[5].rstrip("\n")
            out.setdefault(path, []).append(_Mapping(int(lo, 16), int(hi, 16), int(parts[2], 16), path))
    return out


def _open_elf(pid: int, path: str, maps: list[_Mapping]):
    """Open the target's file by its own view of the filesystem."""
    clean = path.removesuffix(" (deleted)")
    candidates = [f"/proc/{pid}/root{clean}"]
    candidates += [f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}" for m in maps if m.offset == 0]
    last: OSError | None = None
    for c in candidates:
        try:
            return open(c, "rb")
        except OSError as e:
            last = e
    raise last or FileNotFoundError(path)


def _elf_facts(f) -> ElfFacts | None:
    """Symbols we need from one ELF file, or None if it does not define _PyRuntime."""
    st = os.fstat(f.fileno())
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    try:
        elf = ELFFile(f)
        symbols: dict[str, int] = {}
        for secname in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(secname)
            if sec is None:
                continue
            for name in _WANTED:
                if name in symbols:
                    continue
                for sym in sec.get_symbol_by_name(name) or ():
                    if sym["st_shndx"] != SHN_INDICES.SHN_UNDEF and sym["st_value"]:
                        symbols[name] = sym["st_value"]
                        break
        sec = elf.get_section_by_name(".PyRuntime")
        section = sec["sh_addr"] if sec is not None else None
        if "_PyRuntime" not in symbols and section is None:
            facts = None
        else:
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            first = loads[0] if loads else None
            vaddr = first["p_vaddr"] & ~(max(first["p_align"], 1) - 1) if first else 0
            facts = ElfFacts(elf.header["e_type"], vaddr, symbols, section)
    except Exception:  # not an ELF, truncated, unreadable: not our runtime
        facts = None
    with _cache_lock:
        _cache[key] = facts
    return facts


def _candidates(pid: int, maps: dict[str, list[_Mapping]]) -> list[str]:
    """The executable first, then libpython, then anything else named like python."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    ordered = [p for p in maps if p == exe]
    ordered += [p for p in maps if "libpython" in os.path.basename(p) and p not in ordered]
    ordered += [p for p in maps if re.search(r"python", os.path.basename(p)) and p not in ordered]
    return ordered


def _version(mem: ProcessMemory, facts: ElfFacts, base: int, path: str) -> tuple[int, int, int]:
    if "Py_Version" in facts.symbols:  # 3.11+: PY_VERSION_HEX
        (hexv,) = struct.unpack("<I", mem.read(base + facts.symbols["Py_Version"], 4))
        return (hexv >> 24, (hexv >> 16) & 0xFF, (hexv >> 8) & 0xFF)
    m = re.search(r"python(\d)\.(\d+)", os.path.basename(path))
    if m:
        return (int(m.group(1)), int(m.group(2)), -1)
    if "PyAIter_Check" in facts.symbols:  # new in 3.10, and Py_Version is 3.11+
        return (3, 10, -1)
    return (3, 9, -1)  # older than 3.10: unsupported anyway


def find_runtime(pid: int, mem: ProcessMemory | None = None) -> Runtime:
    """Locate the interpreter of pid. Raises NotPython, UnsupportedVersion, or OSError
    (process gone, EPERM on reading memory)."""
    mem = mem or ProcessMemory(pid)
    maps = read_maps(pid)
    for path in _candidates(pid, maps):
        try:
            with _open_elf(pid, path, maps[path]) as f:
                facts = _elf_facts(f)
        except OSError:
            continue
        if facts is None:
            continue
        if facts.e_type == "ET_EXEC":
            base = 0
        else:
            first = min((m for m in maps[path] if m.offset == 0), key=lambda m: m.start, default=None)
            if first is None:
                continue
            base = first.start - facts.load_vaddr
        sym = facts.symbols.get("_PyRuntime", facts.pyruntime_section)
        if "PyCode_Type" not in facts.symbols or sym is None:
            continue
        runtime_addr = base + sym
        version = _version(mem, facts, base, path)
        blob = mem.read(runtime_addr, DEBUG_READ_SIZE) if version[:2] >= (3, 13) else None
        try:
            layout = layout_for(version[:2], blob)
        except UnsupportedVersion as e:
            e.version = ".".join(str(v) for v in version if v >= 0)  # for doctor
            raise
        return Runtime(pid, path, base, runtime_addr, base + facts.symbols["PyCode_Type"],
                       version, layout)
    raise NotPython(f"pid {pid} ({_comm(pid)}) is not a CPython process: "
                    "no _PyRuntime in its executable or libraries")


def runtime_for_child(parent: Runtime, pid: int) -> Runtime | None:
    """A forked child shares its parent's layout: reuse the parent's resolution when the
    child still maps the same interpreter ELF at the same address (it has not exec()d)."""
    try:
        if os.readlink(f"/proc/{pid}/exe") != os.readlink(f"/proc/{parent.pid}/exe"):
            return None
        mine = read_maps(pid).get(parent.path)
        theirs = read_maps(parent.pid).get(parent.path)
    except OSError:
        return None
    if not mine or not theirs or (mine[0].start, mine[0].offset) != (theirs[0].start, theirs[0].offset):
        return None
    return dataclasses.replace(parent, pid=pid)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


__all__ = ["NotPython", "Runtime", "UnsupportedVersion", "find_runtime", "read_maps", "runtime_for_child"]
