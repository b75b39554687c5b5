"""BPF ring buffers read straight from their memory map, and record layouts.

BCC's ring buffer API calls back into Python through ctypes for every
record; here a poll maps the ring once and copies each record out with one
slice, in a plain loop (the kernel's ring layout is its UAPI: a consumer
page, a producer page, then the data pages mapped twice so a record that
wraps reads as one piece). Records are decoded with struct formats derived
from BCC's own ctypes structs, which BCC builds from the .h files: the
layout has one definition, the C one.
"""

from __future__ import annotations

import ctypes as ct
import mmap
import struct

BUSY, DISCARD = 1 << 31, 1 << 30
HEADER = 8
_PAGE = mmap.PAGESIZE
_u64 = struct.Struct("<Q")
_u32 = struct.Struct("<I")

_CODES = {ct.c_ulonglong: "Q", ct.c_longlong: "q", ct.c_uint: "I", ct.c_int: "i",
          ct.c_ushort: "H", ct.c_short: "h", ct.c_ubyte: "B", ct.c_byte: "b", ct.c_char: "c",
          ct.c_ulong: "Q", ct.c_long: "q"}


def struct_of(cls: type[ct.Structure], upto: str | None = None) -> struct.Struct:
    """A little-endian struct.Struct with the fields (and padding) of a ctypes
    Structure, up to (not including) the field named `upto`. Arrays of char
    become bytes ('Ns')."""
    fmt, pos = "<", 0
    for name, typ, *_ in cls._fields_:
        if name == upto:
            break
        off = getattr(cls, name).offset
        if off > pos:
            fmt += f"{off - pos}x"
        if issubclass(typ, ct.Array):
            code = "s" if typ._type_ is ct.c_char else None
            if code is None:
                raise TypeError(f"{cls.__name__}.{name}: arrays of {typ._type_} are not decoded")
            fmt += f"{typ._length_}s"
        else:
            fmt += _CODES[typ]
        pos = off + ct.sizeof(typ)
    if upto is None and ct.sizeof(cls) > pos:
        fmt += f"{ct.sizeof(cls) - pos}x"
    return struct.Struct(fmt)


def event_class(table) -> type[ct.Structure]:
    """BCC's ctypes struct for a ring's records (built from the C source)."""
    return type(table.event(ct.create_string_buffer(8192)))


class RingReader:
    """One BPF ring buffer, consumed from user space without callbacks."""

    def __init__(self, table):
        self.fd = table.map_fd
        self.size = table.max_entries
        self.mask = self.size - 1
        self.cons = mmap.mmap(self.fd, _PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.prod = mmap.mmap(self.fd, _PAGE + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                              offset=_PAGE)

    def read(self, out: list) -> int:
        """Appends every committed record (as bytes) to out; returns how many."""
        prod, data = self.prod, self.prod
        cons = _u64.unpack_from(self.cons, 0)[0]
        end = _u64.unpack_from(prod, 0)[0]
        n, mask, unpack = 0, self.mask, _u32.unpack_from
        while cons < end:
            at = _PAGE + (cons & mask)
            length = unpack(data, at)[0]
            if length & BUSY:
                break  # being written: the rest comes next poll
            size = length & ~(BUSY | DISCARD)
            if not length & DISCARD:
                out.append(data[at + HEADER:at + HEADER + size])
                n += 1
            cons += (size + HEADER + 7) & ~7
        _u64.pack_into(self.cons, 0, cons)
        return n

    def close(self) -> None:
        for m in (self.cons, self.prod):
            try:
                m.close()
            except (BufferError, ValueError):
                pass
