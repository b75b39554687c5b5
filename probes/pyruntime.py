"""Find a process's CPython runtime: which ELF holds `_PyRuntime`, where it is
loaded, which version it is, and the type addresses the walker checks against.

The ELF is read from the target's own view of the filesystem
(/proc/PID/root/<path>, else /proc/PID/map_files/<range>), so venvs, deleted
files and other mount namespaces work. Parsed ELF facts are cached by file
identity (elfsyms), so a forked DataLoader worker (same exe, same maps) costs
a maps read, not an ELF parse; a process that exec()s is simply resolved again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from dataclasses import dataclass

from . import procfs
from .elfsyms import ElfSymbols, symbols
from .procmem import ProcessMemory
from .pylayouts import DEBUG_READ_SIZE, Layout, UnsupportedVersion, layout_for


class NotPython(Exception):
    """The process has no CPython runtime we can find."""


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


def _elf(pid: int, path: str, maps: list[procfs.Mapping]) -> ElfSymbols | None:
    """The target's file, read by its own view of the filesystem."""
    clean = path.removesuffix(" (deleted)")
    candidates = [f"/proc/{pid}/root{clean}"]
    candidates += [f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}" for m in maps if m.offset == 0]
    for c in candidates:
        t = symbols(c)
        if t is not None:
            return t
    return None


def _candidates(pid: int, maps: dict[str, list[procfs.Mapping]]) -> list[str]:
    """The executable first, then libpython, then anything else named like python."""
    exe = procfs.exe(pid) or ""
    ordered = [p for p in maps if p == exe]
    ordered += [p for p in maps if "libpython" in os.path.basename(p) and p not in ordered]
    ordered += [p for p in maps if re.search(r"python", os.path.basename(p)) and p not in ordered]
    return ordered


def _version(mem: ProcessMemory, elf: ElfSymbols, base: int, path: str) -> tuple[int, int, int]:
    py_version = elf.address("Py_Version")
    if py_version is not None:  # 3.11+: PY_VERSION_HEX
        (hexv,) = struct.unpack("<I", mem.read(base + py_version, 4))
        return (hexv >> 24, (hexv >> 16) & 0xFF, (hexv >> 8) & 0xFF)
    m = re.search(r"python(\d)\.(\d+)", os.path.basename(path))
    if m:
        return (int(m.group(1)), int(m.group(2)), -1)
    if elf.address("PyAIter_Check") is not None:  # new in 3.10, and Py_Version is 3.11+
        return (3, 10, -1)
    return (3, 9, -1)  # older than 3.10: unsupported anyway


def find_runtime(pid: int, mem: ProcessMemory | None = None) -> Runtime:
    """Locate the interpreter of pid. Raises NotPython, UnsupportedVersion, or OSError
    (process gone, EPERM on reading memory)."""
    mem = mem or ProcessMemory(pid)
    maps = procfs.file_maps(pid, strict=True)
    for path in _candidates(pid, maps):
        elf = _elf(pid, path, maps[path])
        if elf is None:
            continue
        sym = elf.address("_PyRuntime")
        if sym is None:
            sym = elf.sections.get(".PyRuntime")
        code_type = elf.address("PyCode_Type")
        if sym is None or code_type is None:
            continue
        if elf.e_type == "ET_EXEC":
            base = 0
        else:
            first = min((m for m in maps[path] if m.offset == 0), key=lambda m: m.start, default=None)
            if first is None:
                continue
            base = first.start - elf.load_vaddr
        runtime_addr = base + sym
        version = _version(mem, elf, base, path)
        blob = mem.read(runtime_addr, DEBUG_READ_SIZE) if version[:2] >= (3, 13) else None
        try:
            layout = layout_for(version[:2], blob)
        except UnsupportedVersion as e:
            e.version = ".".join(str(v) for v in version if v >= 0)  # for doctor
            raise
        return Runtime(pid, path, base, runtime_addr, base + code_type, version, layout)
    raise NotPython(f"pid {pid} ({procfs.comm(pid) or '?'}) is not a CPython process: "
                    "no _PyRuntime in its executable or libraries")


def runtime_for_child(parent: Runtime, pid: int) -> Runtime | None:
    """A forked child shares its parent's layout: reuse the parent's resolution when the
    child still maps the same interpreter ELF at the same address (it has not exec()d)."""
    exe = procfs.exe(pid)
    if exe is None or exe != procfs.exe(parent.pid):
        return None
    try:
        mine = procfs.file_maps(pid, strict=True).get(parent.path)
        theirs = procfs.file_maps(parent.pid, strict=True).get(parent.path)
    except OSError:
        return None
    if not mine or not theirs or (mine[0].start, mine[0].offset) != (theirs[0].start, theirs[0].offset):
        return None
    return dataclasses.replace(parent, pid=pid)


__all__ = ["NotPython", "Runtime", "UnsupportedVersion", "find_runtime", "runtime_for_child"]
