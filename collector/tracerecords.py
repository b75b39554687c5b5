"""Trace packets to records, the one decoding of gpuscope's reader
(collector/tracereader.py frames the file): TracePackets in perfetto's
generated classes (upb, in C), interned data resolved by Perfetto's rules.

Records are tuples, cheap to make and to consume, in file order:
  (BEGIN, ts, track, name, args)      args: ((key, value), ...) or None
  (END, ts, track)
  (INSTANT, ts, track, name, args, callstack)   callstack: (Frame, ...) or None
  (COUNTER, ts, track, value)
  (TRACK, Track)                      a track descriptor (again on rename)
  (CLOCK, {clock_id: ts})
Interning is per trusted sequence; a packet flagged
SEQ_INCREMENTAL_STATE_CLEARED empties its sequence's tables first. A name
whose iid was never interned reads as "#iid", so damage shows instead of
vanishing.

Most packets of a trace are track events alone (timestamp, sequence, event),
and most events repeat byte for byte but for their timestamp (an END on a
track, a read of the same file). `columns` decodes a run of such packets in
one C call into three lists, and each distinct event's bytes are decoded
once per sequence; a run holding anything else (interned data, a descriptor,
a cleared sequence, a field it does not know) is decoded packet by packet
instead (`records`), with the same result."""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from gpuscope.probes.events import Frame

BEGIN, END = pb.TrackEvent.TYPE_SLICE_BEGIN, pb.TrackEvent.TYPE_SLICE_END
INSTANT, COUNTER = pb.TrackEvent.TYPE_INSTANT, pb.TrackEvent.TYPE_COUNTER
TRACK, CLOCK, SLICE = 101, 102, 103  # SLICE: the live index's, never read from a file
SEQ_CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
_UNITS = {pb.CounterDescriptor.UNIT_TIME_NS: "ns", pb.CounterDescriptor.UNIT_COUNT: "count",
          pb.CounterDescriptor.UNIT_SIZE_BYTES: "bytes"}
_SIMPLE = {"string_value", "int_value", "uint_value", "double_value", "bool_value",
           "pointer_value", "legacy_json_value"}
ARG_CACHE = 100_000   # distinct annotations kept decoded, per sequence
EVENT_CACHE = 50_000  # distinct track events kept decoded, per sequence


def _classes():
    """perfetto's Trace, TracePacket and TrackEvent, except that
    TrackEvent.debug_annotations are kept as their bytes (the wire format is
    the same): most annotations repeat (a path, an fd, a size), so each
    distinct one is decoded once. And the columns view of a Trace (see the
    module's docstring): its packets declared as one message, so that they
    merge and each field below collects every packet's value in file order."""
    fdp = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    for m in fdp.message_type:
        if m.name == "TrackEvent":
            for f in m.field:
                if f.name == "debug_annotations":
                    f.type = f.TYPE_BYTES
                    f.ClearField("type_name")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    F = descriptor_pb2.FieldDescriptorProto
    cols = descriptor_pb2.FileDescriptorProto(name="gpuscope/trace_columns.proto",
                                              package="gpuscope", syntax="proto2")
    m = cols.message_type.add(name="PacketColumns")
    for name, number, typ in (("timestamp", 8, F.TYPE_UINT64),
                              ("trusted_packet_sequence_id", 10, F.TYPE_UINT32),
                              ("track_event", 11, F.TYPE_BYTES),
                              ("sequence_flags", 13, F.TYPE_UINT32)):
        m.field.add(name=name, number=number, type=typ, label=F.LABEL_REPEATED)
    cols.message_type.add(name="TraceColumns").field.add(
        name="packet", number=1, type=F.TYPE_MESSAGE, type_name=".gpuscope.PacketColumns",
        label=F.LABEL_OPTIONAL)
    pool.Add(cols)
    get = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))  # noqa: E731
    return (get("perfetto.protos.Trace"), get("perfetto.protos.TracePacket"),
            get("perfetto.protos.TrackEvent"), get("gpuscope.TraceColumns"))


Trace, TracePacket, TrackEvent, TraceColumns = _classes()


class Track(NamedTuple):
    uuid: int
    parent: int
    kind: str        # process, thread, counter, child (under a parent), global
    name: str
    pid: int = 0
    tid: int = 0
    unit: str = ""
    rank: int = 0


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
        self.events: dict[int, dict[bytes, tuple]] = {}      # track event bytes -> _event()
        self.default_track: dict[int, int] = {}
        self.dirty = False          # names changed since rows() was last saved

    def clear(self, seq: int) -> None:
        self.dirty = True
        self.names[seq], self.args[seq], self.strs[seq] = {}, {}, {}
        self.frames[seq], self.stacks[seq], self.arg_cache[seq] = {}, {}, {}
        self.events.pop(seq, None)
        self.default_track.pop(seq, None)

    def defaults(self, seq: int, d) -> None:
        self.events.pop(seq, None)
        if d.HasField("track_event_defaults"):
            self.default_track[seq] = d.track_event_defaults.track_uuid

    def add(self, seq: int, d) -> None:
        self.events.pop(seq, None)   # names and stacks its events were decoded with
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
        self.events.clear()
        for seq, kind, iid, name in rows:
            (self.names if kind == 1 else self.args).setdefault(seq, {})[iid] = name


def records(packets, st: Interning, out: list) -> list:
    """Appends the records of `packets` (TracePacket messages) to out."""
    add = out.append
    cleared = SEQ_CLEARED
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
            e = _event(st, seq, p.track_event)
            k, t = e[0], p.timestamp
            if k == END:
                add((END, t, e[1]))
            elif k == BEGIN:
                add((BEGIN, t, e[1], e[2], e[3]))
            elif k == COUNTER:
                add((COUNTER, t, e[1], e[2]))
            elif k == INSTANT:
                add((INSTANT, t, e[1], e[2], e[3], e[4]))
        elif which == "track_descriptor":
            add((TRACK, track(p.track_descriptor)))
        elif which == "clock_snapshot":
            add((CLOCK, {c.clock_id: c.timestamp for c in p.clock_snapshot.clocks}))
        elif which is None and p.HasField("trace_packet_defaults"):
            st.defaults(seq, p.trace_packet_defaults)
    return out


def columns(data, n: int, st: Interning, out: list) -> bool:
    """Appends the records of `data`, n whole framed packets, to out if they
    are all plain track events (see the module's docstring); False, and out
    as it was, if not."""
    c = TraceColumns()
    try:
        c.ParseFromString(data)
    except DecodeError:
        return False
    cols = c.packet
    ts, seqs, evs = cols.timestamp, cols.trusted_packet_sequence_id, cols.track_event
    if (len(ts) != n or len(seqs) != n or len(evs) != n
            or any(f & SEQ_CLEARED for f in set(cols.sequence_flags))
            or len(unknown_fields.UnknownFieldSet(cols))):
        return False
    start = len(out)
    add = out.append
    caches = st.events
    last, cache = None, _EMPTY
    try:
        for t, seq, raw in zip(ts, seqs, evs, strict=True):
            if seq != last:
                last = seq
                cache = caches.setdefault(seq, {})
            e = cache.get(raw)
            if e is None:
                e = _event(st, seq, TrackEvent.FromString(raw))
                if e[0] != COUNTER:
                    if len(cache) >= EVENT_CACHE:
                        cache.clear()
                    cache[raw] = e
            k = e[0]
            if k == END:
                add((END, t, e[1]))
            elif k == BEGIN:
                add((BEGIN, t, e[1], e[2], e[3]))
            elif k == COUNTER:
                add((COUNTER, t, e[1], e[2]))
            elif k == INSTANT:
                add((INSTANT, t, e[1], e[2], e[3], e[4]))
    except DecodeError:
        del out[start:]
        return False
    return True


def _event(st: Interning, seq: int, ev) -> tuple:
    """One track event without its timestamp: (type, track, name, args,
    callstack) as far as its type has them; a counter is (COUNTER, track, value)."""
    typ = ev.type
    tr = ev.track_uuid or st.default_track.get(seq, 0)
    if typ == END:
        return (END, tr)
    if typ == COUNTER:
        return (COUNTER, tr, ev.double_counter_value
                if ev.HasField("double_counter_value") else ev.counter_value)
    iid = ev.name_iid
    name = (st.names.get(seq, _EMPTY).get(iid) or f"#{iid}") if iid else ev.name
    args = None
    anns = ev.debug_annotations
    if anns:
        got = st.arg_cache.get(seq, _EMPTY).get
        args = tuple([got(raw) or st.arg(seq, raw) for raw in anns])
    if typ == INSTANT:
        cs = ev.callstack_iid
        return (INSTANT, tr, name, args, st.stacks.get(seq, _EMPTY).get(cs, ()) if cs else None)
    return (typ, tr, name, args)


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
