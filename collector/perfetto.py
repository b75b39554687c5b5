"""Streaming writer of native Perfetto protobuf traces (TrackEvent).

The file is a sequence of framed TracePackets (field 1 of Trace), appended
as the capture runs and flushed periodically, so a trace is readable up to
its last flush even if the collector is killed. Packets are encoded by hand
(about twice as fast as building protobuf objects, see bench/), but every
field number comes from perfetto's own generated descriptors, so there are
no magic numbers to drift.
"""

from __future__ import annotations

import os
import struct
import time

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb


def _fields(msg) -> dict[str, int]:
    return {f.name: f.number for f in msg.DESCRIPTOR.fields}


PKT = _fields(pb.TracePacket)
TE = _fields(pb.TrackEvent)
DA = _fields(pb.DebugAnnotation)
IDATA = _fields(pb.InternedData)
NAMED = _fields(pb.EventName)          # iid, name (DebugAnnotationName is alike)
TD = _fields(pb.TrackDescriptor)
PD = _fields(pb.ProcessDescriptor)
THD = _fields(pb.ThreadDescriptor)
CD = _fields(pb.CounterDescriptor)
CS = _fields(pb.ClockSnapshot)
PFRAME = _fields(pb.Frame)
PSTACK = _fields(pb.Callstack)
PMAP = _fields(pb.Mapping)
CLK = _fields(pb.ClockSnapshot.Clock)
TPD = _fields(pb.TracePacketDefaults)
TED = _fields(pb.TrackEventDefaults)

SLICE_BEGIN = pb.TrackEvent.TYPE_SLICE_BEGIN
SLICE_END = pb.TrackEvent.TYPE_SLICE_END
INSTANT = pb.TrackEvent.TYPE_INSTANT
COUNTER = pb.TrackEvent.TYPE_COUNTER
SEQ_CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
SEQ_NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
CLOCK_REALTIME = pb.BUILTIN_CLOCK_REALTIME
CLOCK_MONOTONIC = pb.BUILTIN_CLOCK_MONOTONIC
CLOCK_BOOTTIME = pb.BUILTIN_CLOCK_BOOTTIME
UNITS = {"ns": pb.CounterDescriptor.UNIT_TIME_NS, "count": pb.CounterDescriptor.UNIT_COUNT,
         "bytes": pb.CounterDescriptor.UNIT_SIZE_BYTES}

_pack_d = struct.Struct("<d").pack


def varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def f_varint(field: int, n: int) -> bytes:
    return varint(field << 3) + varint(n)


def f_bytes(field: int, data: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(data)) + data


def f_str(field: int, s: str) -> bytes:
    return f_bytes(field, s.encode("utf-8", "replace"))


def f_double(field: int, x: float) -> bytes:
    return varint(field << 3 | 1) + _pack_d(x)


def frame(packet: bytes) -> bytes:
    """One record of the Trace message: field 1, length-delimited."""
    return b"\x0a" + varint(len(packet)) + packet


class TraceWriter:
    """Appends packets to a trace file on one trusted sequence, interning
    event and argument names. Not thread-safe: the collector owns it."""

    SEQ = 1

    def __init__(self, path: str, flush_bytes: int = 1 << 20):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.buf = bytearray()
        self.flush_bytes = flush_bytes
        self.bytes_written = 0
        self.packets = 0
        self._names: dict[str, int] = {}
        self._arg_names: dict[str, int] = {}
        self._functions: dict[str, int] = {}
        self._sources: dict[str, int] = {}
        self._frames: dict[tuple, int] = {}
        self._stacks: dict[tuple, int] = {}
        self._next_uuid = 1
        self._first = True
        self._clock_snapshot()

    # -- low level ---------------------------------------------------------
    def _packet(self, body: bytes, ts: int | None = None, needs_state: bool = False) -> None:
        head = bytearray()
        if ts is not None:
            head += f_varint(PKT["timestamp"], ts)
        head += f_varint(PKT["trusted_packet_sequence_id"], self.SEQ)
        if self._first:
            head += f_varint(PKT["sequence_flags"], SEQ_CLEARED | SEQ_NEEDS)
            self._first = False
        elif needs_state:
            head += f_varint(PKT["sequence_flags"], SEQ_NEEDS)
        self.buf += frame(bytes(head) + body)
        self.packets += 1

    def maybe_flush(self) -> None:
        """Called between events, so a slice's BEGIN and END land together."""
        if len(self.buf) >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        """Write whole packets only, in as few write() calls as the kernel allows."""
        view = memoryview(self.buf)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.bytes_written += n
        self.buf = bytearray()  # no fsync: the page cache survives a killed collector

    def close(self) -> None:
        if self.fd >= 0:
            self.flush()
            os.close(self.fd)
            self.fd = -1

    def _clock_snapshot(self) -> None:
        """Ties MONOTONIC (our timestamps) to BOOTTIME and REALTIME, and makes
        MONOTONIC the trace clock, so raw bpf_ktime_get_ns() values need no
        conversion. Read back to back."""
        boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        mono = time.monotonic_ns()
        real = time.time_ns()
        clocks = b"".join(
            f_bytes(CS["clocks"], f_varint(CLK["clock_id"], cid) + f_varint(CLK["timestamp"], ts))
            for cid, ts in ((CLOCK_BOOTTIME, boot), (CLOCK_MONOTONIC, mono), (CLOCK_REALTIME, real)))
        snap = clocks + f_varint(CS["primary_trace_clock"], CLOCK_MONOTONIC)
        # Defaults make every timestamp on this sequence MONOTONIC.
        defaults = f_varint(TPD["timestamp_clock_id"], CLOCK_MONOTONIC)
        self._packet(f_bytes(PKT["clock_snapshot"], snap) +
                     f_bytes(PKT["trace_packet_defaults"], defaults), ts=mono)

    # -- tracks ------------------------------------------------------------
    def new_uuid(self) -> int:
        u = self._next_uuid
        self._next_uuid += 1
        return u

    def _descriptor(self, body: bytes) -> None:
        self._packet(f_bytes(PKT["track_descriptor"], body))

    def process_track(self, uuid: int, pid: int, name: str, cmdline: list[str] = ()) -> None:
        proc = f_varint(PD["pid"], pid) + f_str(PD["process_name"], name)
        proc += b"".join(f_str(PD["cmdline"], a) for a in cmdline)
        self._descriptor(f_varint(TD["uuid"], uuid) + f_bytes(TD["process"], proc))

    def thread_track(self, uuid: int, pid: int, tid: int, name: str) -> None:
        th = f_varint(THD["pid"], pid) + f_varint(THD["tid"], tid) + f_str(THD["thread_name"], name)
        self._descriptor(f_varint(TD["uuid"], uuid) + f_bytes(TD["thread"], th))

    def named_track(self, uuid: int, name: str) -> None:
        """A top-level track of gpuscope's own (losses, verdict)."""
        self._descriptor(f_varint(TD["uuid"], uuid) + f_str(TD["name"], name))

    def child_track(self, uuid: int, parent: int, name: str, rank: int = 0) -> None:
        body = f_varint(TD["uuid"], uuid) + f_varint(TD["parent_uuid"], parent) + f_str(TD["name"], name)
        if rank:
            body += f_varint(TD["sibling_order_rank"], rank)
        self._descriptor(body)

    def counter_track(self, uuid: int, name: str, unit: str, parent: int = 0) -> None:
        body = f_varint(TD["uuid"], uuid) + f_str(TD["name"], name)
        if parent:
            body += f_varint(TD["parent_uuid"], parent)
        counter = f_varint(CD["unit"], UNITS[unit]) if unit in UNITS else f_str(CD["unit_name"], unit)
        self._descriptor(body + f_bytes(TD["counter"], counter))

    # -- events ------------------------------------------------------------
    def _intern(self, table: dict[str, int], s: str, new: list[tuple[int, str]]) -> int:
        iid = table.get(s)
        if iid is None:
            iid = table[s] = len(table) + 1
            new.append((iid, s))
        return iid

    def _event(self, ts: int, track: int, kind: int, name: str | None = None,
               args: dict | None = None, extra: bytes = b"", interned: bytes = b"") -> None:
        body = bytearray(f_varint(TE["type"], kind) + f_varint(TE["track_uuid"], track))
        new_names: list[tuple[int, str]] = []
        new_args: list[tuple[int, str]] = []
        if name is not None:
            body += f_varint(TE["name_iid"], self._intern(self._names, name, new_names))
        if args:
            for k, v in args.items():
                body += f_bytes(TE["debug_annotations"],
                                f_varint(DA["name_iid"], self._intern(self._arg_names, k, new_args))
                                + _value(v))
        body += extra
        packet = f_bytes(PKT["track_event"], bytes(body))
        if new_names or new_args or interned:
            interned += b"".join(f_bytes(IDATA["event_names"],
                                        f_varint(NAMED["iid"], i) + f_str(NAMED["name"], s))
                                for i, s in new_names)
            interned += b"".join(f_bytes(IDATA["debug_annotation_names"],
                                         f_varint(NAMED["iid"], i) + f_str(NAMED["name"], s))
                                 for i, s in new_args)
            packet += f_bytes(PKT["interned_data"], interned)
        self._packet(packet, ts=ts, needs_state=name is not None or bool(args) or bool(extra))

    def begin(self, track: int, ts: int, name: str, args: dict | None = None) -> None:
        self._event(ts, track, SLICE_BEGIN, name, args)

    def end(self, track: int, ts: int) -> None:
        self._event(ts, track, SLICE_END)

    def instant(self, track: int, ts: int, name: str, args: dict | None = None) -> None:
        self._event(ts, track, INSTANT, name, args)

    def sample(self, track: int, ts: int, name: str, frames) -> None:
        """A sampled stack as an instant with an interned callstack (frames
        outermost first, each a function, a source file and a line), so a
        flame graph can be built from the trace and the analysis re-run."""
        interned = bytearray()
        ids = []
        for f in frames:
            key = (f.function, f.file, f.line)
            fid = self._frames.get(key)
            if fid is None:
                fid = self._frames[key] = len(self._frames) + 1
                fn = self._intern_str(self._functions, f.function, IDATA["function_names"], interned)
                src = self._intern_str(self._sources, f.file, IDATA["source_paths"], interned)
                interned += f_bytes(IDATA["frames"], f_varint(PFRAME["iid"], fid)
                                    + f_varint(PFRAME["function_name_id"], fn)
                                    + f_varint(PFRAME["mapping_id"], 1)
                                    + f_varint(PFRAME["source_path_iid"], src)
                                    + f_varint(PFRAME["line_number"], f.line))
                if fid == 1:  # one mapping stands for "Python code"
                    interned += f_bytes(IDATA["mapping_paths"], f_varint(NAMED["iid"], 1) + f_str(2, "python"))
                    interned += f_bytes(IDATA["mappings"], f_varint(PMAP["iid"], 1)
                                        + f_varint(PMAP["path_string_ids"], 1))
            ids.append(fid)
        key = tuple(ids)
        sid = self._stacks.get(key)
        if sid is None:
            sid = self._stacks[key] = len(self._stacks) + 1
            interned += f_bytes(IDATA["callstacks"], f_varint(PSTACK["iid"], sid)
                                + b"".join(f_varint(PSTACK["frame_ids"], i) for i in ids))
        self._event(ts, track, INSTANT, name, extra=f_varint(TE["callstack_iid"], sid),
                    interned=bytes(interned))

    def _intern_str(self, table: dict[str, int], s: str, field: int, out: bytearray) -> int:
        iid = table.get(s)
        if iid is None:
            iid = table[s] = len(table) + 1
            out += f_bytes(field, f_varint(1, iid) + f_str(2, s))  # InternedString {iid, str}
        return iid

    def counter(self, track: int, ts: int, value: float) -> None:
        self._event(ts, track, COUNTER, extra=f_double(TE["double_counter_value"], float(value)))


def _value(v) -> bytes:
    if isinstance(v, bool):
        return f_varint(DA["bool_value"], int(v))
    if isinstance(v, int):
        return f_varint(DA["int_value"], v)
    if isinstance(v, float):
        return f_double(DA["double_value"], v)
    return f_str(DA["string_value"], str(v))


# -- reading back ---------------------------------------------------------------
MAX_PACKET = 64 << 20   # a longer length prefix means garbage, not a packet


class TraceError(Exception):
    """The file is not a readable Perfetto trace (from `offset` on)."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


def split_frames(data: bytes, base: int) -> tuple[int, list[tuple[int, int]], TraceError | None]:
    """Complete records in data: (bytes consumed, [(start, end)] of payloads,
    the framing error that stopped the scan, if any)."""
    out, i, n = [], 0, len(data)
    while i < n:
        if data[i] != 0x0A:
            return i, out, TraceError(f"bad record framing at byte {base + i} (0x{data[i]:02x}, "
                                      "expected 0x0a): corrupted", base + i)
        length, shift, j = 0, 0, i + 1
        while j < n:
            b = data[j]
            length |= (b & 0x7F) << shift
            j += 1
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                return i, out, TraceError(f"bad record length at byte {base + i}", base + i)
        else:
            break  # the length itself is torn
        if length > MAX_PACKET:
            return i, out, TraceError(f"record at byte {base + i} claims {length} bytes: "
                                      "corrupted", base + i)
        if j + length > n:
            break  # torn tail
        out.append((j, j + length))
        i = j + length
    return i, out, None
