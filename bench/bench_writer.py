"""Trace writer: encoding packets by hand (collector/perfetto.py) against
perfetto's generated protobuf classes, on the same events in one run. Prints
figures; asserts nothing (these machines are shared and noisy).

Both encoders write the same packets (checked: the two files parse to equal
Trace messages) for N slices with 5 arguments (a path, ints, a float), plus a
counter every 10 slices and an instant every 50; names and argument names are
interned in both. Per slice means the whole run's time over N (the counters
and instants included); MB/s is per MB of trace written. Times are CPU time of this process. A third row is the
collector's full path: Timeline.add(Span) -> tracks -> TraceWriter; another
the general begin() + end() calls instead of slice().
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

import google.protobuf
from google.protobuf.internal import api_implementation
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from gpuscope.collector.perfetto import SEQ, TraceWriter
from gpuscope.collector.timeline import Timeline
from gpuscope.probes.events import CounterSample, Instant, Span

N = 50_000
T0 = 123_456_789_000_000        # ~1.4 days of CLOCK_MONOTONIC
NAMES = ("read", "write", "pread64", "recvmsg", "openat", "close")
TE = pb.TrackEvent


def workload(n: int = N) -> list[tuple]:
    """('s', track index, start, end, name, args) | ('c', counter index, ts, value)
    | ('i', ts, name, args), in time order."""
    ops: list[tuple] = []
    for i in range(n):
        t = T0 + i * 1_500
        args = {"path": f"/data/train/shard-{i % 37:05d}.tar", "fd": 3 + i % 29,
                "bytes": 1 << 20 if i % 3 else 4096 + i, "offset": i * 1_048_576,
                "lat_ms": 0.001 * (i % 997)}
        ops.append(("s", i % 8, t, t + 400 + i % 700, NAMES[i % len(NAMES)], args))
        if i % 10 == 0:
            ops.append(("c", i % 2, t + 1, float(i % 101)))
        if i % 50 == 0:
            ops.append(("i", t + 2, "fork", {"child": 1000 + i}))
    return ops


# -- (a) by hand: collector/perfetto.py -------------------------------------------
def declare(w) -> tuple[list[int], list[int], int]:
    proc = w.new_uuid()
    w.process_track(proc, 100, "python")
    th = w.new_uuid()
    w.thread_track(th, 100, 100, "python")
    tracks = []
    for i in range(8):
        tracks.append(w.new_uuid())
        w.child_track(tracks[-1], th, f"IO {i}", 5)
    counters = []
    for name in ("GPU util", "host memory"):
        counters.append(w.new_uuid())
        w.counter_track(counters[-1], name, "count", proc)
    return tracks, counters, th


def run_hand(ops, path: str, two_calls: bool = False) -> None:
    w = TraceWriter(path)
    if two_calls:   # the general API: as Python frames use it
        def slice_(track, start, end, name, args):
            w.begin(track, start, name, args)
            w.end(track, end)
        play(w, ops, slice_)
    else:
        play(w, ops, w.slice)


def play(w, ops, slice_) -> None:
    """The same events through either writer (same calls, same order)."""
    tracks, counters, th = declare(w)
    counter, instant, flush = w.counter, w.instant, w.maybe_flush
    for op in ops:
        k = op[0]
        if k == "s":
            slice_(tracks[op[1]], op[2], op[3], op[4], op[5])
        elif k == "c":
            counter(counters[op[1]], op[2], op[3])
        else:
            instant(th, op[1], op[2], op[3])
        flush()
    w.close()


# -- (b) perfetto's generated classes ----------------------------------------------
class PbWriter:
    """The same packets as TraceWriter, built as TracePacket messages inside a
    Trace and serialized a batch at a time (faster than one packet at a time,
    and the Trace's encoding is exactly the file's framing). Same interning,
    same sequence flags."""

    BATCH = 4096   # packets per SerializeToString

    def __init__(self, path: str):
        self.f = open(path, "wb")
        self.trace = pb.Trace()
        self.names: dict[str, int] = {}
        self.arg_names: dict[str, int] = {}
        self.next_uuid = 1
        p = self.trace.packet.add()
        p.timestamp = time.monotonic_ns()
        p.trusted_packet_sequence_id = SEQ
        p.sequence_flags = (pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
                            | pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE)
        for cid in (pb.BUILTIN_CLOCK_BOOTTIME, pb.BUILTIN_CLOCK_MONOTONIC, pb.BUILTIN_CLOCK_REALTIME):
            c = p.clock_snapshot.clocks.add()
            c.clock_id, c.timestamp = cid, 0
        p.clock_snapshot.primary_trace_clock = pb.BUILTIN_CLOCK_MONOTONIC
        p.trace_packet_defaults.timestamp_clock_id = pb.BUILTIN_CLOCK_MONOTONIC

    def new_uuid(self) -> int:
        self.next_uuid += 1
        return self.next_uuid - 1

    def _td(self, uuid: int):
        p = self.trace.packet.add()
        p.trusted_packet_sequence_id = SEQ
        p.track_descriptor.uuid = uuid
        return p.track_descriptor

    def process_track(self, uuid, pid, name):
        td = self._td(uuid)
        td.process.pid, td.process.process_name = pid, name

    def thread_track(self, uuid, pid, tid, name):
        td = self._td(uuid)
        td.thread.pid, td.thread.tid, td.thread.thread_name = pid, tid, name

    def child_track(self, uuid, parent, name, rank):
        td = self._td(uuid)
        td.parent_uuid, td.name, td.sibling_order_rank = parent, name, rank

    def counter_track(self, uuid, name, unit, parent):
        td = self._td(uuid)
        td.name, td.parent_uuid = name, parent
        td.counter.unit = pb.CounterDescriptor.UNIT_COUNT

    def _named(self, ts: int, track: int, kind: int, name: str, args: dict):
        p = self.trace.packet.add()
        p.timestamp = ts
        p.trusted_packet_sequence_id = SEQ
        p.sequence_flags = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
        te = p.track_event
        te.type = kind
        te.track_uuid = track
        iid = self.names.get(name)
        if iid is None:
            iid = self.names[name] = len(self.names) + 1
            e = p.interned_data.event_names.add()
            e.iid, e.name = iid, name
        te.name_iid = iid
        anns = te.debug_annotations
        for k, v in args.items():
            a = anns.add()
            aid = self.arg_names.get(k)
            if aid is None:
                aid = self.arg_names[k] = len(self.arg_names) + 1
                e = p.interned_data.debug_annotation_names.add()
                e.iid, e.name = aid, k
            a.name_iid = aid
            t = type(v)
            if t is int:
                a.int_value = v
            elif t is str:
                a.string_value = v
            elif t is float:
                a.double_value = v
            else:
                a.bool_value = v

    def slice(self, track, start, end, name, args):
        self._named(start, track, TE.TYPE_SLICE_BEGIN, name, args)
        p = self.trace.packet.add()
        p.timestamp = end
        p.trusted_packet_sequence_id = SEQ
        p.track_event.type = TE.TYPE_SLICE_END
        p.track_event.track_uuid = track

    def instant(self, track, ts, name, args):
        self._named(ts, track, TE.TYPE_INSTANT, name, args)

    def counter(self, track, ts, value):
        p = self.trace.packet.add()
        p.timestamp = ts
        p.trusted_packet_sequence_id = SEQ
        te = p.track_event
        te.type = TE.TYPE_COUNTER
        te.track_uuid = track
        te.double_counter_value = value

    def maybe_flush(self):
        if len(self.trace.packet) >= self.BATCH:
            self.f.write(self.trace.SerializeToString())
            self.trace = pb.Trace()

    def close(self):
        self.f.write(self.trace.SerializeToString())
        self.f.close()


def run_pb(ops, path: str) -> None:
    w = PbWriter(path)
    play(w, ops, w.slice)


# -- (c) the collector's path: events through Timeline ----------------------------
def as_events(ops) -> list:
    out = []
    for op in ops:
        if op[0] == "s":
            out.append(Span("io", op[4], 200, 200 + op[1], op[2], op[3], op[5]))
        elif op[0] == "c":
            out.append(CounterSample(("GPU util", "host memory")[op[1]], "count", op[2], op[3], 200))
        else:
            out.append(Instant("proc", op[2], 200, 0, op[1], op[3]))
    return out


def run_timeline(events, path: str) -> None:
    w = TraceWriter(path)
    tl = Timeline(w)
    add = tl.add
    for ev in events:
        add(ev)
    tl.close()
    w.close()


# -- checks and figures -------------------------------------------------------------
def parsed(path: str) -> pb.Trace:
    t = pb.Trace()
    t.ParseFromString(open(path, "rb").read())
    for c in t.packet[0].clock_snapshot.clocks:   # read at different instants
        c.timestamp = 0
    t.packet[0].timestamp = 0
    return t


def timed(fn, *a) -> float:
    """CPU seconds (user + sys) of this process: other jobs on a shared machine
    stretch wall time, and CPU per event is what the collector's budget is in."""
    t = time.process_time()
    fn(*a)
    return time.process_time() - t


def main() -> None:
    print(f"protobuf {google.protobuf.__version__}, backend {api_implementation.Type()}, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d', time.gmtime())}")
    ops = workload()
    events = as_events(ops)
    with tempfile.TemporaryDirectory() as d:
        paths = {k: os.path.join(d, f"{k}.pftrace") for k in ("hand", "pb", "timeline", "two")}
        run_hand(ops[:2000], paths["hand"])
        run_pb(ops[:2000], paths["pb"])
        same = parsed(paths["hand"]) == parsed(paths["pb"])
        print(f"hand and generated-class traces parse to equal Trace messages: {same}")
        print(f"{N} slices x 5 args, {N // 10} counters, {N // 50} instants")
        print(f"{'run':>3} {'encoder':<34} {'us/slice':>9} {'MB/s':>7} {'MB':>6}")
        for r in range(3):
            res = {}
            for k, fn, data in (("hand", run_hand, ops), ("pb", run_pb, ops),
                                ("two", lambda o, p: run_hand(o, p, True), ops),
                                ("timeline", run_timeline, events)):
                dt = timed(fn, data, paths[k])
                res[k] = (dt, os.path.getsize(paths[k]) / 1e6)
            label = {"hand": "by hand (TraceWriter.slice)", "pb": "generated classes (upb)",
                     "two": "by hand, begin() + end()", "timeline": "by hand, via Timeline.add(Span)"}
            for k, (dt, mb) in res.items():
                print(f"{r + 1:>3} {label[k]:<34} {dt / N * 1e6:>9.2f} {mb / dt:>7.1f} {mb:>6.1f}")
            print(f"{'':>3} generated / hand time: {res['pb'][0] / res['hand'][0]:.2f}x")
        same = parsed(paths["hand"]) == parsed(paths["pb"]) == parsed(paths["two"])
        print(f"full run: traces equal (hand, generated classes, begin+end): {same}")


if __name__ == "__main__":
    sys.exit(main())
