"""Reads a gpuscope trace back with perfetto's own protos and checks the
rules of ../shared/PERFETTO.md. Reusable by every test that produces a trace:
`t = tracecheck.load(path)` checks and returns the decoded slices, instants,
counters and tracks."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

TE = pb.TrackEvent


@dataclass
class Slice:
    name: str
    track: int
    start: int
    end: int
    args: dict
    depth: int = 0


@dataclass
class Decoded:
    packets: list
    tracks: dict = field(default_factory=dict)        # uuid -> TrackDescriptor (last)
    threads: dict = field(default_factory=dict)       # uuid -> (pid, tid, name)
    processes: dict = field(default_factory=dict)     # uuid -> (pid, name)
    slices: list = field(default_factory=list)
    instants: list = field(default_factory=list)      # (name, track, ts, args)
    samples: list = field(default_factory=list)       # (track, ts, name, [(func, file, line)] outermost first)
    counters: dict = field(default_factory=lambda: defaultdict(list))  # uuid -> [(ts, v)]

    def track_name(self, uuid: int) -> str:
        return self.tracks[uuid].name

    def thread_of(self, uuid: int):
        """(pid, tid) of the thread a track belongs to (itself or its parent)."""
        while uuid:
            if uuid in self.threads:
                return self.threads[uuid][:2]
            uuid = self.tracks[uuid].parent_uuid
        return None

    def slices_on(self, category_title: str) -> list[Slice]:
        return [s for s in self.slices if self.tracks[s.track].name == category_title]

    def counter_named(self, name: str):
        for uuid, td in self.tracks.items():
            if td.HasField("counter") and td.name == name:
                return self.counters[uuid]
        return None


def read_packets(path: str) -> list:
    """Framed TracePackets; a truncated last record is dropped, as Perfetto does."""
    data = open(path, "rb").read()
    assert data[:1] == b"\x0a", "a trace must start with field 1 (0x0A)"
    packets, i = [], 0
    while i < len(data):
        assert data[i] == 0x0A, f"bad framing at byte {i}"
        n, shift, j = 0, 0, i + 1
        while j < len(data):
            b = data[j]
            n |= (b & 0x7F) << shift
            j += 1
            if not b & 0x80:
                break
            shift += 7
        if j + n > len(data):
            break  # torn tail
        p = pb.TracePacket()
        p.ParseFromString(data[j:j + n])
        packets.append(p)
        i = j + n
    return packets


def load(path: str, complete: bool = True) -> Decoded:
    """complete=False for a trace whose writer was killed: slices still open
    then (Python frames on the stack) are allowed to lack their END."""
    packets = read_packets(path)
    d = Decoded(packets)
    assert packets, "empty trace"
    first = packets[0]
    assert first.HasField("clock_snapshot"), "first packet must be a ClockSnapshot"
    ids = {c.clock_id for c in first.clock_snapshot.clocks}
    assert {pb.BUILTIN_CLOCK_MONOTONIC, pb.BUILTIN_CLOCK_BOOTTIME,
            pb.BUILTIN_CLOCK_REALTIME} <= ids
    assert first.clock_snapshot.primary_trace_clock == pb.BUILTIN_CLOCK_MONOTONIC
    assert first.sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED

    names: dict[int, dict[int, str]] = defaultdict(dict)
    arg_names: dict[int, dict[int, str]] = defaultdict(dict)
    strs: dict[tuple[int, str], dict[int, str]] = defaultdict(dict)   # (seq, table) -> iid -> str
    frames: dict[int, dict[int, tuple]] = defaultdict(dict)
    stacks: dict[int, dict[int, list]] = defaultdict(dict)
    thread_of_tid: dict[tuple[int, int], int] = {}
    events = []
    for idx, p in enumerate(packets):
        seq = p.trusted_packet_sequence_id
        if p.HasField("track_descriptor"):
            td = p.track_descriptor
            d.tracks[td.uuid] = td
            if td.HasField("thread"):
                key = (td.thread.pid, td.thread.tid)
                prev = d.threads.get(td.uuid)
                assert prev is None or prev[:2] == key, "a thread track uuid changed thread"
                d.threads[td.uuid] = (td.thread.pid, td.thread.tid, td.thread.thread_name)
                thread_of_tid[key] = td.uuid
            if td.HasField("process"):
                d.processes[td.uuid] = (td.process.pid, td.process.process_name)
        if p.HasField("interned_data"):
            assert p.sequence_flags & pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE or idx == 0
            for e in p.interned_data.event_names:
                names[seq][e.iid] = e.name
            for e in p.interned_data.debug_annotation_names:
                arg_names[seq][e.iid] = e.name
            for table in ("function_names", "source_paths"):
                for e in getattr(p.interned_data, table):
                    strs[(seq, table)][e.iid] = e.str.decode()
            for f in p.interned_data.frames:
                frames[seq][f.iid] = (strs[(seq, "function_names")][f.function_name_id],
                                      strs[(seq, "source_paths")][f.source_path_iid], f.line_number)
            for c in p.interned_data.callstacks:
                stacks[seq][c.iid] = [frames[seq][i] for i in c.frame_ids]
        if p.HasField("track_event"):
            ev = p.track_event
            assert seq, "TrackEvent without trusted_packet_sequence_id is dropped"
            assert ev.HasField("track_uuid"), "TrackEvent without track_uuid"
            assert ev.track_uuid in d.tracks, f"event on undeclared track {ev.track_uuid}"
            uses_iids = ev.HasField("name_iid") or any(a.HasField("name_iid") for a in ev.debug_annotations)
            if uses_iids:
                assert p.sequence_flags & pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE, \
                    "packet uses interned data without SEQ_NEEDS_INCREMENTAL_STATE"
            name = names[seq][ev.name_iid] if ev.HasField("name_iid") else ev.name
            args = {}
            for a in ev.debug_annotations:
                key = arg_names[seq][a.name_iid] if a.HasField("name_iid") else a.name
                args[key] = getattr(a, a.WhichOneof("value"))
            if ev.HasField("callstack_iid"):
                assert ev.callstack_iid in stacks[seq], "undefined callstack iid"
                d.samples.append((ev.track_uuid, p.timestamp, name, stacks[seq][ev.callstack_iid]))
            events.append((p.timestamp, idx, ev.type, ev.track_uuid, name, args, ev))
    # Replay in timestamp order (stable), as the trace processor does.
    events.sort(key=lambda e: (e[0], e[1]))
    open_: dict[int, list[Slice]] = defaultdict(list)
    for ts, _, typ, track, name, args, ev in events:
        is_counter_track = d.tracks[track].HasField("counter")
        if typ == TE.TYPE_COUNTER:
            assert is_counter_track, "counter value on a non-counter track"
            v = ev.double_counter_value if ev.HasField("double_counter_value") else ev.counter_value
            d.counters[track].append((ts, v))
            continue
        assert not is_counter_track, "only TYPE_COUNTER events belong on counter tracks"
        if typ == TE.TYPE_SLICE_BEGIN:
            s = Slice(name, track, ts, -1, args, depth=len(open_[track]))
            open_[track].append(s)
            d.slices.append(s)
        elif typ == TE.TYPE_SLICE_END:
            assert open_[track], f"END without BEGIN on track {d.tracks[track].name!r} at {ts}"
            s = open_[track].pop()
            s.end = ts
        elif typ == TE.TYPE_INSTANT:
            d.instants.append((name, track, ts, args))
    for track, stack in open_.items():
        assert not complete or not stack, f"unclosed slices on {d.tracks[track].name!r}: {[s.name for s in stack]}"
    return d
