"""The one reader of Perfetto traces (`gpuscope report`, replay, the viewer's
index): framed TracePackets read from a byte offset in bounded chunks, and
decoded into trace-level records (collector/tracerecords.py).

Memory stays bounded whatever the input: the file is read `CHUNK` bytes at
a time and only regular files are read at all (a FIFO would block, a device
never ends). A torn last record is not an error (a live trace may be
mid-flush); it is left for the next read. Anything else that does not decode
is a TraceError naming its byte offset."""

from __future__ import annotations

import os
import stat

from google.protobuf.message import DecodeError

from .perfetto import MAX_PACKET, TraceError, split_frames
from .tracerecords import (
    BEGIN,
    CLOCK,
    COUNTER,
    END,
    INSTANT,
    SLICE,
    TRACK,
    Interning,
    Trace,
    TracePacket,
    Track,
    columns,
    records,
)

__all__ = ["BEGIN", "CLOCK", "COUNTER", "END", "INSTANT", "SLICE", "TRACK", "Interning", "Track",
           "TraceError", "check", "file_size", "open_trace", "read", "read_chunks", "read_head",
           "read_records", "records"]

CHUNK = 1 << 20   # a parsed chunk takes ~25x its size in memory


def open_trace(path: str):
    """The file, opened for reading, if it is a regular file; a TraceError saying
    what it is otherwise. Opened non-blocking so that a FIFO cannot hang us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a directory" if stat.S_ISDIR(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise TraceError(f"{path} is {kind}, not a trace file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")





def _runs(path: str, offset: int, chunk: int):
    """Yields (offset, buffer, bytes, packets) for runs of whole records from
    offset on, about `chunk` bytes at a time (a record longer than that is
    read whole, up to MAX_PACKET); the buffer is valid until the next run.
    A framing error is raised after the run of good records before it."""
    with open_trace(path) as f:
        if offset == 0:
            head = f.read(1)
            if not head:
                return
            if head != b"\x0a":
                raise TraceError(f"not a Perfetto protobuf trace: byte 0 is 0x{head[0]:02x}, "
                                 "a trace starts with 0x0a", 0)
        f.seek(offset)
        buf = bytearray()
        pos = offset
        while True:
            data = f.read(max(chunk, _pending(buf) - len(buf)))
            if not data:
                return
            buf += data
            del data
            used, n, bad = _whole(buf)
            err = None
            if bad:
                used, frames, err = split_frames(buf, pos)   # what is wrong, in its words
                n = len(frames)
            if n:
                yield pos, buf, used, n
                pos += used
            if err is not None:
                raise err
            del buf[:used]
            if len(buf) > MAX_PACKET + 16:
                raise TraceError(f"unterminated record at byte {pos}", pos)


def _whole(data) -> tuple[int, int, bool]:
    """(bytes of whole records at the start of data, how many, whether a bad
    frame follows them): split_frames' scan, without the list."""
    i = k = 0
    n = len(data)
    while i < n:
        if data[i] != 0x0A:
            return i, k, True
        if i + 1 >= n:
            break
        b = data[i + 1]
        if b < 0x80:
            j = i + 2 + b
        else:
            length, shift, j = b & 0x7F, 7, i + 2
            while True:
                if j >= n:
                    return i, k, False   # the length itself is torn
                b = data[j]
                j += 1
                length |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
                if shift > 63:
                    return i, k, True
            if length > MAX_PACKET:
                return i, k, True
            j += length
        if j > n:
            break   # torn tail
        i = j
        k += 1
    return i, k, False


def _packets(buf, used: int, pos: int):
    """The TracePackets of a run; a TraceError after those before a bad one."""
    trace = Trace()
    with memoryview(buf) as view:
        try:
            trace.ParseFromString(view[:used])   # one C call per run
        except DecodeError:
            _, frames, _ = split_frames(buf, pos)   # the same runs, listed
            good, err = _locate_bad_packet(view, frames, pos)
            return good, err
    return (used, trace.packet), None


def read_chunks(path: str, offset: int = 0, chunk: int = CHUNK):
    """Yields (end_offset, packets) for whole records from offset on, about
    `chunk` bytes at a time. end_offset is where the next read starts."""
    for pos, buf, used, _ in _runs(path, offset, chunk):
        (good, packets), err = _packets(buf, used, pos)
        yield pos + good, packets
        del packets
        if err is not None:
            raise err from None


def read_records(path: str, offset: int = 0, st: Interning | None = None, chunk: int = CHUNK):
    """Yields (end_offset, packets read, [records]) chunk by chunk from offset on."""
    st = st or Interning()
    for pos, buf, used, n in _runs(path, offset, chunk):
        recs: list = []
        with memoryview(buf) as view:
            fast = columns(view[:used], n, st, recs)
        if fast:
            yield pos + used, n, recs
            continue
        (good, packets), err = _packets(buf, used, pos)
        records(packets, st, recs)
        k = len(packets)
        del packets   # before the next chunk is parsed
        yield pos + good, k, recs
        if err is not None:
            raise err from None


def read(path: str, offset: int = 0, st: Interning | None = None):
    """Yields (end_offset, [records]) chunk by chunk from offset on."""
    for end, _, recs in read_records(path, offset, st):
        yield end, recs


def _pending(buf) -> int:
    """Bytes the torn record at the start of buf needs in all (0 if unknown)."""
    if len(buf) < 2:
        return 0
    n, shift = 0, 0
    for i, b in enumerate(buf[1:11], 2):
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return min(n, MAX_PACKET) + i
        shift += 7
    return 0


def _locate_bad_packet(buf: memoryview, frames, pos: int):
    """((bytes of good records, [their packets]), error) for a chunk that does not decode."""
    packets: list = []   # TracePacket messages (a class built at run time)
    for a, b in frames:
        p = TracePacket()
        try:
            p.ParseFromString(buf[a:b])
        except DecodeError:
            start = a - 1 - len(_varint(b - a))
            return ((start, packets),
                    TraceError(f"packet at byte {pos + start} does not decode: corrupted",
                               pos + start))
        packets.append(p)
    return (0, []), TraceError(f"records from byte {pos} on do not decode: corrupted", pos)


def _varint(n: int) -> bytes:
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
            return list(packets)
    except (OSError, TraceError):
        pass
    return []


def check(path: str, limit: int = 256 << 10) -> str | None:
    """Why the trace cannot be shown at all (nothing readable from its start);
    None if it can. An empty file is a capture that has not written yet; damage
    further in is reported by the reader, which keeps what comes before it."""
    try:
        for _ in read_chunks(path, 0, limit):
            break
    except TraceError as e:
        if e.offset == 0:
            return str(e)
    except OSError as e:
        return f"cannot read the trace: {e.strerror}"
    return None
