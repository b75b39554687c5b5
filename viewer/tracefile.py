"""Reads a Perfetto trace file as it is written: framed TracePackets
(`0x0A varint(len) packet`), from a byte offset, in chunks. A torn last
record is not an error (the writer may be mid-flush); it is left for the
next read. Anything else that does not decode is a TraceError naming the
byte offset, so the viewer can say what is wrong instead of failing."""

from __future__ import annotations

import os

from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from gpuscope.collector.perfetto import MAX_PACKET, TraceError, split_frames

CHUNK = 4 << 20
def read_chunks(path: str, offset: int = 0, chunk: int = CHUNK):
    """Yields (end_offset, [TracePacket]) for whole records from offset on,
    about `chunk` bytes at a time. end_offset is where the next read starts."""
    with open(path, "rb") as f:
        if offset == 0:
            head = f.read(1)
            if not head:
                return
            if head != b"\x0a":
                raise TraceError(f"not a Perfetto trace: byte 0 is 0x{head[0]:02x}, "
                                 "a trace starts with 0x0a", 0)
        f.seek(offset)
        carry = b""
        pos = offset
        while True:
            data = f.read(chunk)
            if not data:
                return
            buf = carry + data
            used, frames, err = split_frames(buf, pos)
            if frames:
                trace = pb.Trace()
                try:
                    trace.ParseFromString(buf[:used])   # one C call for the whole chunk
                except DecodeError:
                    good, err = _locate_bad_packet(buf, frames, pos)
                    yield pos + good[0], good[1]
                    raise err from None
                pos += used
                yield pos, trace.packet
            if err is not None:
                raise err
            carry = buf[used:]
            if len(carry) > MAX_PACKET + 16:
                raise TraceError(f"unterminated record at byte {pos}", pos)


def _locate_bad_packet(buf: bytes, frames, pos: int):
    """((bytes of good records, [their packets]), error) for a chunk that does not decode."""
    packets = []
    for a, b in frames:
        p = pb.TracePacket()
        try:
            p.ParseFromString(buf[a:b])
        except DecodeError:
            start = a - 1 - len(_varint_len(b - a))
            return ((start, packets),
                    TraceError(f"packet at byte {pos + start} does not decode: corrupted",
                               pos + start))
        packets.append(p)
    return (0, []), TraceError(f"records from byte {pos} on do not decode: corrupted", pos)


def _varint_len(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F)
        n >>= 7
        if not n:
            return bytes(out)


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def read_head(path: str, limit: int = 256 << 10) -> list:
    """Packets of the first `limit` bytes (clock snapshot, first tracks); [] if unreadable."""
    try:
        for _, packets in read_chunks(path, 0, limit):
            return packets
    except (OSError, TraceError):
        pass
    return []


def check(path: str, limit: int = 256 << 10) -> str | None:
    """Why the trace cannot be shown at all (nothing readable from its start);
    None if it can. An empty file is a capture that has not written yet; damage
    further in is reported by the index, which keeps what comes before it."""
    try:
        for _ in read_chunks(path, 0, limit):
            break
    except TraceError as e:
        if e.offset == 0:
            return str(e)
    except OSError as e:
        return f"cannot read the trace: {e.strerror}"
    return None
