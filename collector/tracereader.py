"""The one reader of Perfetto traces (`gpuscope report`, replay, the viewer's
index): framed TracePackets read from a byte offset in bounded chunks, and
trace-level records with interned data resolved by Perfetto's rules.

Memory stays bounded whatever the input: the file is read `CHUNK` bytes at
a time and only regular files are read at all (a FIFO would block, a device
never ends). A torn last record is not an error (a live trace may be
mid-flush); it is left for the next read. Anything else that does not decode
is a TraceError naming its byte offset.

Records are tuples, cheap to make and to consume, in file order:
  (BEGIN, ts, track, name, args)      args: ((key, value), ...) or None
  (END, ts, track)
  (INSTANT, ts, track, name, args, callstack)   callstack: (Frame, ...) or None
  (COUNTER, ts, track, value)
  (TRACK, Track)                      a track descriptor (again on rename)
  (CLOCK, {clock_id: ts})
  (SLICE, ts, track, name, args, end)  a whole slice, args a dict or None
                                      (the live index's, never read from a file)
Interning is per trusted sequence; a packet flagged
SEQ_INCREMENTAL_STATE_CLEARED empties its sequence's tables first. A name
whose iid was never interned reads as "#iid", so damage shows instead of
vanishing."""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from gpuscope.probes.events import Frame

from .perfetto import MAX_PACKET, TraceError, split_frames

__all__ = ["BEGIN", "CLOCK", "COUNTER", "END", "INSTANT", "SLICE", "TRACK", "Interning", "Track",
           "TraceError", "check", "file_size", "open_trace", "read_chunks", "read_head",
           "records"]

CHUNK = 1 << 20   # a parsed chunk takes ~25x its size in memory
BEGIN, END = pb.TrackEvent.TYPE_SLICE_BEGIN, pb.TrackEvent.TYPE_SLICE_END
INSTANT, COUNTER = pb.TrackEvent.TYPE_INSTANT, pb.TrackEvent.TYPE_COUNTER
TRACK, CLOCK, SLICE = 101, 102, 103
SEQ_CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
_UNITS = {pb.CounterDescriptor.UNIT_TIME_NS: "ns", pb.CounterDescriptor.UNIT_COUNT: "count",
          pb.CounterDescriptor.UNIT_SIZE_BYTES: "bytes"}
_SIMPLE = {"string_value", "int_value", "uint_value", "double_value", "bool_value",
           "pointer_value", "legacy_json_value"}


def _lazy_annotations():
    """perfetto's Trace and TracePacket, except that TrackEvent.debug_annotations
    are kept as their bytes (the wire format is the same): most annotations
    repeat (a path, an fd, a size), so each distinct one is decoded once."""
    fdp = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    for m in fdp.message_type:
        if m.name == "TrackEvent":
            for f in m.field:
                if f.name == "debug_annotations":
                    f.type = f.TYPE_BYTES
                    f.ClearField("type_name")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("perfetto.protos.Trace")),
            message_factory.GetMessageClass(
                pool.FindMessageTypeByName("perfetto.protos.TracePacket")))


Trace, TracePacket = _lazy_annotations()
ARG_CACHE = 100_000   # distinct annotations kept decoded, per sequence


class Track(NamedTuple):
    uuid: int
    parent: int
    kind: str        # process, thread, counter, child (under a parent), global
    name: str
    pid: int = 0
    tid: int = 0
    unit: str = ""
    rank: int = 0


# -- bytes -> packets -----------------------------------------------------------
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


def read_chunks(path: str, offset: int = 0, chunk: int = CHUNK):
    """Yields (end_offset, packets) for whole records from offset on, about
    `chunk` bytes at a time (a record longer than that is read whole, up to
    MAX_PACKET). end_offset is where the next read starts."""
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
            used, frames, err = split_frames(buf, pos)
            if frames:
                trace = Trace()
                with memoryview(buf) as view:
                    try:
                        trace.ParseFromString(view[:used])   # one C call per chunk
                    except DecodeError:
                        good, err = _locate_bad_packet(view, frames, pos)
                        yield pos + good[0], good[1]
                        raise err from None
                pos += used
                yield pos, trace.packet
                del trace
            if err is not None:
                raise err
            del buf[:used]
            if len(buf) > MAX_PACKET + 16:
                raise TraceError(f"unterminated record at byte {pos}", pos)


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


# -- packets -> records ------------------------------------------------------------
_EMPTY: dict = {}


class Interning:
    """Interned strings per trusted sequence, Perfetto's incremental state.
    `rows()`/`load()` let an index persist it and read on later."""

    def __init__(self, callstacks: bool = True):
        self.callstacks = callstacks
        self.names: dict[int, dict[int, str]] = {}
        self.args: dict[int, dict[int, str]] = {}
        self.strs: dict[int, dict[tuple[str, int], str]] = {}
        self.frames: dict[int, dict[int, Frame]] = {}
        self.stacks: dict[int, dict[int, tuple]] = {}
        self.arg_cache: dict[int, dict[bytes, tuple]] = {}   # annotation bytes -> (key, value)
        self.default_track: dict[int, int] = {}
        self.dirty = False          # names changed since rows() was last saved

    def clear(self, seq: int) -> None:
        self.dirty = True
        self.names[seq], self.args[seq], self.strs[seq] = {}, {}, {}
        self.frames[seq], self.stacks[seq], self.arg_cache[seq] = {}, {}, {}
        self.default_track.pop(seq, None)

    def defaults(self, seq: int, d) -> None:
        if d.HasField("track_event_defaults"):
            self.default_track[seq] = d.track_event_defaults.track_uuid

    def add(self, seq: int, d) -> None:
        if d.event_names or d.debug_annotation_names:
            self.dirty = True
        names = self.names.setdefault(seq, {})
        for e in d.event_names:
            names[e.iid] = e.name
        args = self.args.setdefault(seq, {})
        if d.debug_annotation_names:
            self.arg_cache[seq] = {}
        for e in d.debug_annotation_names:
            args[e.iid] = e.name
        if not self.callstacks or not (d.frames or d.callstacks or d.function_names):
            return
        strs = self.strs.setdefault(seq, {})
        for table in ("function_names", "source_paths"):
            for e in getattr(d, table):
                strs[(table, e.iid)] = e.str.decode("utf-8", "replace")
        frames = self.frames.setdefault(seq, {})
        for f in d.frames:
            frames[f.iid] = Frame(strs.get(("function_names", f.function_name_id), "?"),
                                  strs.get(("source_paths", f.source_path_iid), "?"),
                                  f.line_number)
        stacks = self.stacks.setdefault(seq, {})
        for c in d.callstacks:
            stacks[c.iid] = tuple(frames[i] for i in c.frame_ids if i in frames)

    def arg(self, seq: int, raw: bytes) -> tuple:
        """(key, value) of one annotation, decoded and kept."""
        cache = self.arg_cache.get(seq)
        if cache is None or len(cache) >= ARG_CACHE:
            cache = self.arg_cache[seq] = {}
        a = pb.DebugAnnotation.FromString(raw)
        iid = a.name_iid
        kv = cache[raw] = ((self.args.get(seq, _EMPTY).get(iid) or f"#{iid}") if iid else a.name,
                           _value(a))
        return kv

    def rows(self) -> list[tuple[int, int, int, str]]:
        """(seq, kind, iid, name): kind 1 event names, 2 argument names."""
        return ([(s, 1, i, n) for s, t in self.names.items() for i, n in t.items()] +
                [(s, 2, i, n) for s, t in self.args.items() for i, n in t.items()])

    def load(self, rows) -> None:
        for seq, kind, iid, name in rows:
            (self.names if kind == 1 else self.args).setdefault(seq, {})[iid] = name


def records(packets, st: Interning, out: list) -> list:
    """Appends the records of `packets` to out (see the module's docstring)."""
    add = out.append
    cleared = SEQ_CLEARED
    arg, arg_cache = st.arg, st.arg_cache
    for p in packets:
        seq = p.trusted_packet_sequence_id
        if p.sequence_flags & cleared:
            st.clear(seq)
            if p.HasField("trace_packet_defaults"):
                st.defaults(seq, p.trace_packet_defaults)
        which = p.WhichOneof("data")
        if p.HasField("interned_data"):
            st.add(seq, p.interned_data)
        if which == "track_event":
            ev = p.track_event
            typ = ev.type
            tr = ev.track_uuid or st.default_track.get(seq, 0)
            if typ == END:
                add((END, p.timestamp, tr))
                continue
            if typ == COUNTER:
                add((COUNTER, p.timestamp, tr, ev.double_counter_value
                     if ev.HasField("double_counter_value") else ev.counter_value))
                continue
            iid = ev.name_iid
            name = (st.names.get(seq, _EMPTY).get(iid) or f"#{iid}") if iid else ev.name
            args = None
            anns = ev.debug_annotations
            if anns:
                got = arg_cache.get(seq, _EMPTY).get
                args = tuple([got(raw) or arg(seq, raw) for raw in anns])
            if typ == BEGIN:
                add((BEGIN, p.timestamp, tr, name, args))
            elif typ == INSTANT:
                cs = ev.callstack_iid
                add((INSTANT, p.timestamp, tr, name, args,
                     st.stacks.get(seq, _EMPTY).get(cs, ()) if cs else None))
        elif which == "track_descriptor":
            add((TRACK, track(p.track_descriptor)))
        elif which == "clock_snapshot":
            add((CLOCK, {c.clock_id: c.timestamp for c in p.clock_snapshot.clocks}))
        elif which is None and p.HasField("trace_packet_defaults"):
            st.defaults(seq, p.trace_packet_defaults)
    return out


def _value(a):
    which = a.WhichOneof("value")
    if which == "string_value":
        return a.string_value
    if which in _SIMPLE:
        return getattr(a, which)
    return None if which is None else str(getattr(a, which))


def track(td) -> Track:
    if td.HasField("process"):
        return Track(td.uuid, td.parent_uuid, "process",
                     td.process.process_name or f"pid {td.process.pid}", td.process.pid,
                     rank=td.sibling_order_rank)
    if td.HasField("thread"):
        return Track(td.uuid, td.parent_uuid, "thread",
                     td.thread.thread_name or f"tid {td.thread.tid}", td.thread.pid,
                     td.thread.tid, rank=td.sibling_order_rank)
    if td.HasField("counter"):
        c = td.counter
        return Track(td.uuid, td.parent_uuid, "counter", td.name,
                     unit=c.unit_name or _UNITS.get(c.unit, ""), rank=td.sibling_order_rank)
    return Track(td.uuid, td.parent_uuid, "child" if td.parent_uuid else "global", td.name,
                 rank=td.sibling_order_rank)


def read(path: str, offset: int = 0, st: Interning | None = None):
    """Yields (end_offset, [records]) chunk by chunk from offset on."""
    st = st or Interning()
    for end, packets in read_chunks(path, offset):
        recs = records(packets, st, [])
        del packets   # before the next chunk is parsed
        yield end, recs
