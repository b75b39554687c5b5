"""CPython line tables, decoded into sorted address ranges (in code units).

3.10's co_linetable (pairs of byte-offset and line deltas) and the 3.11+
location table (Objects/locations.md). Pure functions of the table bytes, so a
code object's table is decoded once and cached by the walker.
"""

from __future__ import annotations


def parse_lnotab310(table: bytes, firstlineno: int) -> tuple[list[int], list[int], list[int], int]:
    """3.10 co_linetable: (start-delta u8, line-delta i8) pairs over bytecode bytes.
    Returns ranges in code units (2 bytes) and the code length in units."""
    starts, ends, lines = [], [], []
    line, end = firstlineno, 0
    for i in range(0, len(table) - 1, 2):
        sdelta, ldelta = table[i], table[i + 1]
        if ldelta >= 128:
            ldelta -= 256
        start, end = end, end + sdelta
        if ldelta == -128:
            cur = -1
        else:
            line += ldelta
            cur = line
        if end > start:
            starts.append(start // 2)
            ends.append(end // 2)
            lines.append(cur)
    return starts, ends, lines, end // 2


def _varint(t: bytes, i: int) -> tuple[int, int]:
    b = t[i]
    i += 1
    val, shift = b & 63, 6
    while b & 64:
        b = t[i]
        i += 1
        val |= (b & 63) << shift
        shift += 6
    return val, i


def _svarint(t: bytes, i: int) -> tuple[int, int]:
    u, i = _varint(t, i)
    return (-(u >> 1) if u & 1 else u >> 1), i


def parse_locations311(table: bytes, firstlineno: int) -> tuple[list[int], list[int], list[int], int]:
    """3.11+ location table (Objects/locations.md), ranges in code units."""
    starts, ends, lines = [], [], []
    line, addr, i, n = firstlineno, 0, 0, len(table)
    while i < n:
        b = table[i]
        if not b & 0x80:
            raise ValueError("location table entry without start bit")
        i += 1
        code, length = (b >> 3) & 15, (b & 7) + 1
        if code == 15:
            cur = -1
        elif code == 14:
            delta, i = _svarint(table, i)
            line += delta
            cur = line
            for _ in range(3):
                _, i = _varint(table, i)
        elif code == 13:
            delta, i = _svarint(table, i)
            line += delta
            cur = line
        elif code >= 10:
            line += code - 10
            cur = line
            i += 2
        else:
            cur = line
            i += 1
        starts.append(addr)
        ends.append(addr + length)
        lines.append(cur)
        addr += length
    return starts, ends, lines, addr
