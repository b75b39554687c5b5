"""Reads a finished gpuscope trace back into events, in the order they were
written, so the stall analysis can be re-run on it (`gpuscope report`)."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from gpuscope.probes.events import Frame, Instant, Span, StackSample, ThreadName

from .perfetto import TraceError, split_frames

__all__ = ["TraceError", "events", "packets", "target_pid"]

# Track titles (timeline.CATEGORY_TITLE) back to event categories.
_CATS = {"IO": "io", "Off-CPU": "sched", "CUDA": "cuda", "NCCL": "nccl"}
TE = pb.TrackEvent


def packets(path: str):
    """Framed TracePackets in file order; a torn last record is dropped, as
    Perfetto does."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from None
    if data[:1] != b"\x0a":
        raise TraceError(f"{path} is not a Perfetto protobuf trace")
    _, frames, err = split_frames(data, 0)
    for start, end in frames:
        p = pb.TracePacket()
        try:
            p.ParseFromString(data[start:end])
        except Exception:
            raise TraceError(f"{path}: corrupt packet at byte {start}") from None
        yield p
    if err is not None:
        raise TraceError(f"{path}: {err}")


def events(path: str):
    """Yields the analysable events of a trace (spans, samples, names, process
    instants) in file order."""
    tracks: dict[int, pb.TrackDescriptor] = {}
    threads: dict[int, tuple[int, int]] = {}
    procs: dict[int, int] = {}
    names, arg_names, strs, frames, stacks = {}, {}, {}, {}, {}
    open_: dict[int, list] = {}
    for p in packets(path):
        if p.HasField("track_descriptor"):
            td = p.track_descriptor
            tracks[td.uuid] = td
            if td.HasField("thread"):
                threads[td.uuid] = (td.thread.pid, td.thread.tid)
                yield ThreadName(td.thread.pid, td.thread.tid, 0, td.thread.thread_name)
            elif td.HasField("process"):
                procs[td.uuid] = td.process.pid
        if p.HasField("interned_data"):
            d = p.interned_data
            names.update({e.iid: e.name for e in d.event_names})
            arg_names.update({e.iid: e.name for e in d.debug_annotation_names})
            for table in ("function_names", "source_paths"):
                strs.update({(table, e.iid): e.str.decode() for e in getattr(d, table)})
            for f in d.frames:
                frames[f.iid] = Frame(strs[("function_names", f.function_name_id)],
                                      strs[("source_paths", f.source_path_iid)], f.line_number)
            for c in d.callstacks:
                stacks[c.iid] = tuple(frames[i] for i in c.frame_ids)
        if not p.HasField("track_event"):
            continue
        ev = p.track_event
        track = tracks.get(ev.track_uuid)
        if track is None:
            continue
        owner = threads.get(track.parent_uuid) or threads.get(ev.track_uuid)
        if ev.type == TE.TYPE_SLICE_BEGIN:
            cat = _CATS.get(track.name)
            if cat and owner:
                args = {arg_names.get(a.name_iid, a.name): getattr(a, a.WhichOneof("value"))
                        for a in ev.debug_annotations}
                open_.setdefault(ev.track_uuid, []).append(
                    Span(cat, names.get(ev.name_iid, ev.name), owner[0], owner[1], p.timestamp, 0, args))
            else:
                open_.setdefault(ev.track_uuid, []).append(None)
        elif ev.type == TE.TYPE_SLICE_END:
            stack = open_.get(ev.track_uuid)
            if stack:
                span = stack.pop()
                if span is not None:
                    span.end = p.timestamp
                    yield span
        elif ev.type == TE.TYPE_INSTANT:
            name = names.get(ev.name_iid, ev.name)
            if ev.HasField("callstack_iid") and owner:
                state, _, gil = name.partition(" +")
                yield StackSample(owner[0], owner[1], p.timestamp, state, gil == "GIL",
                                  stacks.get(ev.callstack_iid, ()))
            elif ev.track_uuid in procs or owner:
                pid = procs.get(ev.track_uuid) or owner[0]
                args = {arg_names.get(a.name_iid, a.name): getattr(a, a.WhichOneof("value"))
                        for a in ev.debug_annotations}
                yield Instant("proc", name, pid, owner[1] if owner else 0, p.timestamp, args)


def target_pid(path: str) -> int | None:
    """The attached process: the first process track written."""
    for p in packets(path):
        if p.HasField("track_descriptor") and p.track_descriptor.HasField("process"):
            return p.track_descriptor.process.pid
    return None
