"""Protobuf wire-format primitives for encoding by hand (collector/perfetto.py).

Fast where a trace writer needs it: every 1- and 2-byte varint, and every
low 14 bits of a longer one (both bytes flagged "more to come"), are
precomputed, so a varint of up to 56 bits (a nanosecond timestamp) is a few
lookups joined instead of a loop per byte. The tables take about 1.4 MB,
once per process.
"""

from __future__ import annotations

import struct

VARINT, I64, LEN = 0, 1, 2   # wire types
U64 = (1 << 64) - 1
I64_MIN, I64_END = -(1 << 63), 1 << 63
pack_double = struct.Struct("<d").pack


def _varint_loop(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


SMALL = tuple(_varint_loop(i) for i in range(1 << 14))                           # varint(i)
LO2 = tuple(bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(1 << 14))  # + more


def varint(n: int) -> bytes:
    """Base-128 varint; negative numbers as their 64-bit two's complement."""
    if 0 <= n < 16384:
        return SMALL[n]
    if n < 0:
        n &= U64
    if n < 1 << 28:
        return LO2[n & 0x3FFF] + SMALL[n >> 14]
    if n < 1 << 42:
        return LO2[n & 0x3FFF] + LO2[(n >> 14) & 0x3FFF] + SMALL[n >> 28]
    if n < 1 << 56:
        return b"".join((LO2[n & 0x3FFF], LO2[(n >> 14) & 0x3FFF], LO2[(n >> 28) & 0x3FFF],
                         SMALL[n >> 42]))
    return _varint_loop(n)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def f_varint(field: int, n: int) -> bytes:
    return varint(field << 3) + varint(n)


def f_bytes(field: int, data: bytes) -> bytes:
    return varint(field << 3 | LEN) + varint(len(data)) + data


def utf8(s: str) -> bytes:
    """Strict UTF-8 when possible. A string from os.fsdecode() keeps its
    undecodable bytes as U+FFFD; any other lone surrogate becomes '?'."""
    try:
        return s.encode()
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode()
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace")


def f_str(field: int, s: str) -> bytes:
    return f_bytes(field, utf8(s))

