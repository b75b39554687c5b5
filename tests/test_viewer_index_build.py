"""The viewer's own index of a trace gpuscope did not index (collector/
traceindex.py): decoded here or in the reader process (readerproc, used for
large traces) it is the same row for row, a corrupt record stops it at the
same place with the same error, and interning follows Perfetto's rule (a
sequence's SEQ_INCREMENTAL_STATE_CLEARED packet forgets its names)."""

from __future__ import annotations

import sqlite3
import sys

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from test_viewer_live_index import QUERIES, rows
from test_viewer_support import write_trace

from gpuscope.collector import replay, tracereader
from gpuscope.collector.fileindex import TraceIndexer
from gpuscope.collector.perfetto import frame
from gpuscope.collector.traceindex import connect


def build(trace: str, db: str, parallel: bool) -> dict:
    ix = TraceIndexer(connect(db), trace)
    ix.PARALLEL_BYTES = 0 if parallel else 1 << 62
    ix.update()
    return dict(sqlite3.connect(db).execute("SELECT key, value FROM meta"))


@pytest.mark.parametrize("corrupt", [False, True])
def test_reader_process_indexes_as_the_viewer_does(tmp_path, corrupt):
    path = tmp_path / "t.pftrace"
    write_trace(str(path), steps=150, n_io=20, offsets=True)
    if corrupt:
        full = path.read_bytes()
        path.write_bytes(full[: len(full) // 2] + b"\x07" * 5000 + full[len(full) // 2:])
    here = build(str(path), str(tmp_path / "here.sqlite"), parallel=False)
    there = build(str(path), str(tmp_path / "there.sqlite"), parallel=True)
    assert rows(str(tmp_path / "here.sqlite")) == rows(str(tmp_path / "there.sqlite"))
    assert here == there
    assert bool(here["error"]) == corrupt and here["packets"] > 1000
    n = len(rows(str(tmp_path / "here.sqlite"))["slices"])
    assert n > 2000 if not corrupt else 1000 < n < 6000
    assert set(QUERIES) <= set(rows(str(tmp_path / "here.sqlite")))


def packet(seq: int, cleared: bool = False, **fields) -> bytes:
    p = pb.TracePacket(trusted_packet_sequence_id=seq, **fields)
    if cleared:
        p.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    return frame(p.SerializeToString())


def test_interning_is_per_sequence_and_cleared(tmp_path):
    """Two sequences use iid 1 for different names; the second clears its state
    and reuses iid 1 for a third name. Written with perfetto's own classes."""
    td = pb.TrackDescriptor(uuid=5, name="t")
    ev = lambda iid, ts: dict(timestamp=ts, track_event=pb.TrackEvent(  # noqa: E731
        type=pb.TrackEvent.TYPE_INSTANT, track_uuid=5, name_iid=iid,
        debug_annotations=[pb.DebugAnnotation(name_iid=1, int_value=ts)]))
    names = lambda n, a: pb.InternedData(  # noqa: E731
        event_names=[pb.EventName(iid=1, name=n)],
        debug_annotation_names=[pb.DebugAnnotationName(iid=1, name=a)])
    data = (packet(1, track_descriptor=td)
            + packet(1, cleared=True, interned_data=names("first", "x"), **ev(1, 10))
            + packet(2, cleared=True, interned_data=names("second", "y"), **ev(1, 20))
            + packet(1, **ev(1, 30))
            + packet(2, cleared=True, interned_data=names("third", "z"), **ev(1, 40))
            + packet(2, **ev(1, 50))
            + packet(2, cleared=True, **ev(1, 60)))    # cleared, nothing interned again
    path = tmp_path / "seq.pftrace"
    path.write_bytes(data)
    got = [(r[1], r[3], r[4]) for _, recs in tracereader.read(str(path))
           for r in recs if r[0] == tracereader.INSTANT]
    assert got == [(10, "first", (("x", 10),)), (20, "second", (("y", 20),)),
                   (30, "first", (("x", 30),)), (40, "third", (("z", 40),)),
                   (50, "third", (("z", 50),)), (60, "#1", (("#1", 60),))]
    build(str(path), str(tmp_path / "i.sqlite"), parallel=False)
    inst = rows(str(tmp_path / "i.sqlite"))["instants"]
    assert [(r[2], r[3]) for r in inst] == [(ts, n) for ts, n, _ in got]
    # Resumed from the middle, the index keeps each sequence's names.
    half = len(data) - len(packet(2, **ev(1, 50)) + packet(2, cleared=True, **ev(1, 60)))
    path.write_bytes(data[:half])
    db = str(tmp_path / "r.sqlite")
    build(str(path), db, parallel=False)
    path.write_bytes(data)
    build(str(path), db, parallel=False)
    assert rows(db)["instants"] == inst
    assert list(replay.events(str(path))) == []   # no thread: nothing to analyse


def test_reader_process_that_cannot_run_falls_back(tmp_path, monkeypatch):
    path = tmp_path / "t.pftrace"
    write_trace(str(path), steps=40, n_io=10)
    here = build(str(path), str(tmp_path / "here.sqlite"), parallel=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    there = build(str(path), str(tmp_path / "there.sqlite"), parallel=True)
    assert here == there and here["error"] is None
    assert rows(str(tmp_path / "here.sqlite")) == rows(str(tmp_path / "there.sqlite"))
