"""The hand encoder (collector/perfetto.py) against perfetto's generated
classes: events of every kind and awkward value are written through
TraceWriter, and the file must parse to the very Trace that the generated
classes build for the same events (every field, every repeated entry in
order). tracecheck then checks the format rules and the decoded values."""

from __future__ import annotations

import math
import os

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from gpuscope.collector.perfetto import SEQ, TraceWriter
from gpuscope.probes.events import Frame

import tracecheck

TE = pb.TrackEvent
T = 123_456_789_000_000
FS_PATH = os.fsdecode(b"/data/caf\xe9-\xff.bin")   # not UTF-8 on disk: surrogateescape
ARGS = {
    "zero": 0, "one": 1, "small": 127, "two_bytes": 16383, "three": 16384, "mid": 268_435_455,
    "four": 268_435_456, "big": 2**42 + 5, "big56": 2**56 - 1, "beyond56": 2**56 + 3,
    "neg": -1, "neg_big": -(2**40), "i64_min": -(2**63), "i64_max": 2**63 - 1,
    "u64": 2**63, "u64_max": 2**64 - 1, "huge": 2**70, "huge_neg": -(2**70),
    "yes": True, "no": False, "pi": 3.25, "negf": -0.0, "inf": float("inf"), "nan": float("nan"),
    "empty": "", "unicode": "ünïcødé ✓ 読み込み 🚀", "path": FS_PATH, "lone": "x\ud800y",
    "long": "é" * 200, "none": None,
}
# What each value reads back as, through the generated classes.
EXPECTED = {
    **{k: ("int_value", v) for k, v in ARGS.items() if type(v) is int and -(2**63) <= v < 2**63},
    "u64": ("uint_value", 2**63), "u64_max": ("uint_value", 2**64 - 1),
    "huge": ("string_value", str(2**70)), "huge_neg": ("string_value", str(-(2**70))),
    "yes": ("bool_value", True), "no": ("bool_value", False),
    **{k: ("double_value", ARGS[k]) for k in ("pi", "negf", "inf", "nan")},
    "empty": ("string_value", ""), "unicode": ("string_value", ARGS["unicode"]),
    "path": ("string_value", "/data/caf\ufffd-\ufffd.bin"), "lone": ("string_value", "x?y"),
    "long": ("string_value", "é" * 200), "none": ("string_value", "None"),
}
STACK = (Frame("main", "train.py", 40), Frame("step", "módel.py", 12))


def write(path: str) -> TraceWriter:
    w = TraceWriter(path)
    proc, th, io, ctr, ns, glob = (w.new_uuid() for _ in range(6))
    w.process_track(proc, 100, "python ✓", ["python", "train.py", "--lr=0.1"])
    w.thread_track(th, 100, 101, "pt_data_worker")
    w.child_track(io, th, "IO", 5)
    w.counter_track(ctr, "GPU util", "MiB/s", proc)
    w.counter_track(ns, "wait", "ns")
    w.named_track(glob, "verdict")
    w.slice(io, T, T + 500, "read", ARGS)
    w.slice(io, T + 600, T + 700, "read", {"zero": 0, "one": 2})   # names already interned
    w.slice(io, T + 800, T + 20_000_000, "読み込み", {})
    w.slice(io, 5, 16383, "", None)                               # tiny timestamps
    w.slice(io, 16384, 2**56 + 7, "read", {"new_arg": "x"})        # a name new mid-trace
    w.begin(io, T + 1_000, "outer", {"pi": 1.0})
    w.begin(io, T + 1_001, "inner")
    w.end(io, T + 1_002)
    w.end(io, T + 1_003)
    w.instant(th, T + 2_000, "fork", {"child": 4242})
    w.instant(glob, T + 2_001, "flag")
    w.counter(ctr, T + 3_000, 42)
    w.counter(ctr, T + 3_001, -1.5)
    w.counter(ns, T + 3_002, 2.0**60)
    w.sample(th, T + 4_000, "running", STACK)
    w.sample(th, T + 4_001, "running", STACK[:1])
    w.close()
    return w


def expected(first: pb.TracePacket) -> pb.Trace:
    """The same events, built with the generated classes."""
    t = pb.Trace()
    t.packet.add().CopyFrom(first)   # the clock snapshot (times read at run time)
    names, arg_names = {}, {}

    def packet(ts=None):
        p = t.packet.add()
        if ts is not None:
            p.timestamp = ts
        p.trusted_packet_sequence_id = SEQ
        return p

    def td(uuid):
        d = packet().track_descriptor
        d.uuid = uuid
        return d

    d = td(1)
    d.process.pid, d.process.process_name = 100, "python ✓"
    d.process.cmdline.extend(["python", "train.py", "--lr=0.1"])
    d = td(2)
    d.thread.pid, d.thread.tid, d.thread.thread_name = 100, 101, "pt_data_worker"
    d = td(3)
    d.parent_uuid, d.name, d.sibling_order_rank = 2, "IO", 5
    d = td(4)
    d.name, d.parent_uuid, d.counter.unit_name = "GPU util", 1, "MiB/s"
    d = td(5)
    d.name, d.counter.unit = "wait", pb.CounterDescriptor.UNIT_TIME_NS
    td(6).name = "verdict"

    def named(ts, track, kind, name, args=None):
        p = packet(ts)
        p.sequence_flags = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
        te = p.track_event
        te.type, te.track_uuid = kind, track
        if name not in names:
            names[name] = len(names) + 1
            e = p.interned_data.event_names.add()
            e.iid, e.name = names[name], name
        te.name_iid = names[name]
        for k, v in (args or {}).items():
            if k not in arg_names:
                arg_names[k] = len(arg_names) + 1
                e = p.interned_data.debug_annotation_names.add()
                e.iid, e.name = arg_names[k], k
            a = te.debug_annotations.add()
            a.name_iid = arg_names[k]
            if args is ARGS:
                field, value = EXPECTED[k]
            else:
                field = {int: "int_value", str: "string_value", float: "double_value"}[type(v)]
                value = v
            setattr(a, field, value)
        return p

    def end(ts, track):
        p = packet(ts)
        p.track_event.type, p.track_event.track_uuid = TE.TYPE_SLICE_END, track

    def counter(ts, track, v):
        p = packet(ts)
        te = p.track_event
        te.type, te.track_uuid, te.double_counter_value = TE.TYPE_COUNTER, track, v

    for s, e, name, args in ((T, T + 500, "read", ARGS), (T + 600, T + 700, "read", {"zero": 0, "one": 2}),
                             (T + 800, T + 20_000_000, "読み込み", {}), (5, 16383, "", None),
                             (16384, 2**56 + 7, "read", {"new_arg": "x"})):
        named(s, 3, TE.TYPE_SLICE_BEGIN, name, args)
        end(e, 3)
    named(T + 1_000, 3, TE.TYPE_SLICE_BEGIN, "outer", {"pi": 1.0})
    named(T + 1_001, 3, TE.TYPE_SLICE_BEGIN, "inner")
    end(T + 1_002, 3)
    end(T + 1_003, 3)
    named(T + 2_000, 2, TE.TYPE_INSTANT, "fork", {"child": 4242})
    named(T + 2_001, 6, TE.TYPE_INSTANT, "flag")
    counter(T + 3_000, 4, 42.0)
    counter(T + 3_001, 4, -1.5)
    counter(T + 3_002, 5, 2.0**60)

    p = named(T + 4_000, 2, TE.TYPE_INSTANT, "running")
    i = p.interned_data
    for n, f in enumerate(STACK, 1):
        i.function_names.add(iid=n, str=f.function.encode())
        i.source_paths.add(iid=n, str=f.file.encode())
        i.frames.add(iid=n, function_name_id=n, mapping_id=1, source_path_iid=n, line_number=f.line)
        if n == 1:
            i.mapping_paths.add(iid=1, str=b"python")
            i.mappings.add(iid=1, path_string_ids=[1])
    i.callstacks.add(iid=1, frame_ids=[1, 2])
    p.track_event.callstack_iid = 1
    p = named(T + 4_001, 2, TE.TYPE_INSTANT, "running")
    p.interned_data.callstacks.add(iid=2, frame_ids=[1])
    p.track_event.callstack_iid = 2
    return t


def nan_free(t: pb.Trace) -> pb.Trace:
    """NaN != NaN: replace it (after checking it is one) so == compares the rest."""
    for p in t.packet:
        for a in p.track_event.debug_annotations:
            if a.HasField("double_value") and math.isnan(a.double_value):
                a.double_value = 12345.0
    return t


def test_every_field_matches_the_generated_classes(tmp_path):
    path = str(tmp_path / "w.pftrace")
    w = write(path)
    got = pb.Trace()
    got.ParseFromString(open(path, "rb").read())
    want = expected(got.packet[0])
    assert len(got.packet) == len(want.packet) == w.packets
    assert w.bytes_written == os.path.getsize(path)
    for i, (g, e) in enumerate(zip(nan_free(got).packet, nan_free(want).packet, strict=True)):
        assert g == e, f"packet {i} differs:\n--- written\n{g}\n--- generated classes\n{e}"


def test_values_read_back_through_tracecheck(tmp_path):
    path = str(tmp_path / "w.pftrace")
    write(path)
    d = tracecheck.load(path)   # the format rules: clock first, interning flags, tracks, nesting
    at = {s.start: s for s in d.slices}   # replayed in time order, as the trace processor does
    first = at[T]
    assert (first.name, first.start, first.end) == ("read", T, T + 500)
    assert list(first.args) == list(ARGS)
    for k, (_, v) in EXPECTED.items():
        got = first.args[k]
        assert (math.isnan(got) and math.isnan(v)) if k == "nan" else (got == v and type(got) is type(v)), k
    assert [(s.name, s.start, s.end, s.args) for s in (at[T + 600], at[T + 800], at[5], at[16384])] == [
        ("read", T + 600, T + 700, {"zero": 0, "one": 2}), ("読み込み", T + 800, T + 20_000_000, {}),
        ("", 5, 16383, {}), ("read", 16384, 2**56 + 7, {"new_arg": "x"})]
    outer, inner = at[T + 1_000], at[T + 1_001]
    assert (outer.name, outer.end, inner.name, inner.depth) == ("outer", T + 1_003, "inner", 3)
    assert [(n, ts, a) for n, _, ts, a in d.instants] == [
        ("fork", T + 2_000, {"child": 4242}), ("flag", T + 2_001, {}),
        ("running", T + 4_000, {}), ("running", T + 4_001, {})]
    assert d.counter_named("GPU util") == [(T + 3_000, 42.0), (T + 3_001, -1.5)]
    assert d.counter_named("wait") == [(T + 3_002, 2.0**60)]
    assert [s[3] for s in d.samples] == [[("main", "train.py", 40), ("step", "módel.py", 12)],
                                         [("main", "train.py", 40)]]
    assert d.processes[1] == (100, "python ✓") and d.threads[2] == (100, 101, "pt_data_worker")


def test_timestamps_across_many_windows(tmp_path):
    """Timestamps reuse the encoding of their high bits: jumps back and forth,
    and more windows than that cache holds, must still read back exactly."""
    path = str(tmp_path / "ts.pftrace")
    w = TraceWriter(path)
    track = w.new_uuid()
    w.named_track(track, "t")
    want = []
    for i in range(3000):
        s = T + i * 20_011 + (i % 3) * 2**30   # forward, and back by a window now and then
        e = s + (i * 7919) % 70_000
        w.slice(track, s, e, "x")
        w.begin(track, s + 1, "y")
        w.end(track, e + 1)
        want += [s, e, s + 1, e + 1]
    w.close()
    got = [p.timestamp for p in tracecheck.read_packets(path) if p.HasField("track_event")]
    assert got == want
