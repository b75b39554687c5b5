"""Code objects and strings of a CPython process, decoded once and cached.

A code object is cached by address with a signature of its header (names, line
table, first line), so a freed-and-reused address is noticed. Each cached code
object hands out one Frame per instruction index it has been seen at, so a
sample's frames are shared objects, not new ones per sample.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from .events import Frame
from .procmem import ProcessMemory
from .pylayouts import Layout
from .pylines import parse_lnotab310, parse_locations311

MAX_CODES = 100_000
MAX_FRAMES_PER_CODE = 4096
_u64 = struct.Struct("<Q").unpack_from
_i64 = struct.Struct("<q").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from
_ENCODING = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}


class Torn(Exception):
    """The stack changed (or looked inconsistent) while we read it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class CodeInfo:
    sig: bytes  # header bytes the entry was built from
    function: str
    file: str
    firstlineno: int
    starts: list[int]  # line table ranges in code units, sorted by start
    ends: list[int]
    lines: list[int]
    n_units: int  # code size in code units (bound for the instruction index)
    firsttraceable: int
    frames: dict[int, Frame] = field(default_factory=dict)  # instruction index -> Frame

    def line(self, idx: int) -> int:
        k = bisect.bisect_right(self.starts, idx) - 1
        line = self.lines[k] if k >= 0 and idx < self.ends[k] else -1
        if line < 0:
            line = self.firstlineno if idx < 0 else 0
        return line

    def frame(self, idx: int) -> Frame:
        f = self.frames.get(idx)
        if f is None:
            f = Frame(self.function, self.file, self.line(idx))
            if len(self.frames) < MAX_FRAMES_PER_CODE:
                self.frames[idx] = f
        return f


class CodeCache:
    """Decoded code objects of one process, validated against each fresh header."""

    def __init__(self, layout: Layout, mem: ProcessMemory, code_type: int):
        self.L, self.mem, self.code_type = layout, mem, code_type
        self.codes: dict[int, CodeInfo] = {}

    def get(self, addr: int, hdr: bytes) -> CodeInfo:
        L = self.L
        if _u64(hdr, L.ob_type)[0] != self.code_type:
            raise Torn("not a code object")
        sig = hdr[L.ob_type :]
        info = self.codes.get(addr)
        if info is not None and info.sig == sig:
            return info
        name_ptr = _u64(hdr, L.code_qualname if L.code_qualname is not None else L.code_name)[0]
        function = self.read_str(name_ptr)
        filename = self.read_str(_u64(hdr, L.code_filename)[0])
        first = _i32(hdr, L.code_firstlineno)[0]
        table_ptr = _u64(hdr, L.code_linetable)[0]
        size = _i64(self.mem.read(table_ptr + L.ob_size, 8))[0]
        if not 0 <= size < 1 << 24:
            raise Torn("bad line table")
        table = self.mem.read(table_ptr + L.bytes_data, size)
        try:
            if L.linetable_format == "lnotab310":
                starts, ends, lines, n_units = parse_lnotab310(table, first)
            else:
                starts, ends, lines, n_units = parse_locations311(table, first)
        except (ValueError, IndexError) as e:
            raise Torn("bad line table") from e
        if L.frame_model == "interpframe":
            n_units = _i64(hdr, L.ob_size)[0]  # code units in co_code_adaptive
        ft = _i32(hdr, L.code_firsttraceable)[0] if L.code_firsttraceable is not None else 0
        info = CodeInfo(sig, function, filename, first, starts, ends, lines, n_units, ft)
        if len(self.codes) > MAX_CODES:
            self.codes.clear()
        self.codes[addr] = info
        return info

    def read_str(self, addr: int) -> str:
        """A compact str object's text (kind and ascii bits honoured)."""
        L = self.L
        hdr = self.mem.read(addr, L.str_compact_data)
        length = _i64(hdr, 16)[0]
        state = _u32(hdr, 32)[0]
        kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not compact or kind not in (1, 2, 4) or not 0 <= length < 1 << 20:
            raise Torn("bad string")
        data = self.mem.read(addr + (L.str_ascii_data if ascii_ else L.str_compact_data), length * kind)
        try:
            return data.decode(_ENCODING[kind])
        except UnicodeDecodeError as e:
            raise Torn("bad string") from e
