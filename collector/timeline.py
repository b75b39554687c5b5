"""Lays events out on Perfetto tracks: a process track per process, a thread
track per thread lifetime, a child track per category under each thread,
counter tracks, and gpuscope's own tracks (losses, verdict)."""

from __future__ import annotations

from gpuscope.probes.events import (
    CounterSample,
    Event,
    Instant,
    Loss,
    Span,
    StackSample,
    ThreadName,
)
from gpuscope.probes.summed import IO_SUMMED, IPC, OFFCPU_SUMMED, TITLES

from .perfetto import TraceWriter
from .pystacks import PythonTracks

# Order of per-thread child tracks in the UI.
CATEGORY_RANK = {"python": 1, "pysamples": 2, "cuda": 3, "nccl": 4, "io": 5, "sched": 6,
                 IPC: 7, IO_SUMMED: 8, OFFCPU_SUMMED: 9}
CATEGORY_TITLE = {"python": "Python", "pysamples": "Python samples", "cuda": "CUDA",
                  "nccl": "NCCL", "io": "IO", "sched": "Off-CPU", "torch": "PyTorch", "verdict": "Verdict", **TITLES}


class Timeline:
    def __init__(self, writer: TraceWriter):
        self.w = writer
        self.processes: dict[int, int] = {}                 # pid -> uuid
        self.process_names: dict[int, str] = {}
        self.threads: dict[int, tuple[int, int]] = {}        # tid -> (pid, uuid) current lifetime
        self.thread_names: dict[int, str] = {}
        self.children: dict[tuple[int, str], int] = {}      # (thread uuid, cat) -> uuid
        self.counters: dict[tuple[int, str], int] = {}      # (pid, name) -> uuid
        self.globals: dict[str, int] = {}
        self.lost: dict[str, int] = {}
        self.python = PythonTracks(self)
        self._spans: dict[tuple[int, str], tuple[int, int]] = {}   # (tid, cat) -> (pid, uuid)

    # -- tracks ------------------------------------------------------------
    def process(self, pid: int) -> int:
        u = self.processes.get(pid)
        if u is None:
            u = self.processes[pid] = self.w.new_uuid()
            self.w.process_track(u, pid, self.process_names.get(pid, f"pid {pid}"))
        return u

    def thread(self, pid: int, tid: int) -> int:
        cur = self.threads.get(tid)
        if cur is not None and cur[0] == pid:
            return cur[1]
        self.process(pid)
        u = self.w.new_uuid()
        self.threads[tid] = (pid, u)
        self.w.thread_track(u, pid, tid, self.thread_names.get(tid, f"tid {tid}"))
        return u

    def child(self, pid: int, tid: int, cat: str) -> int:
        parent = self.thread(pid, tid)
        u = self.children.get((parent, cat))
        if u is None:
            u = self.children[(parent, cat)] = self.w.new_uuid()
            self.w.child_track(u, parent, CATEGORY_TITLE.get(cat, cat), CATEGORY_RANK.get(cat, 9))
        return u

    def counter_track(self, pid: int, name: str, unit: str) -> int:
        u = self.counters.get((pid, name))
        if u is None:
            u = self.counters[(pid, name)] = self.w.new_uuid()
            self.w.counter_track(u, name, unit, self.process(pid) if pid else 0)
        return u

    def global_track(self, name: str) -> int:
        u = self.globals.get(name)
        if u is None:
            u = self.globals[name] = self.w.new_uuid()
            self.w.named_track(u, name)
        return u

    # -- events ------------------------------------------------------------
    def add_many(self, events: list[Event]) -> None:
        """add() for each event, with a thread's span track looked up once
        (and the writer's flush checked every 1024 events): the hot path."""
        known, add, slice_, maybe_flush = self._spans, self.add, self.w.slice, self.w.maybe_flush
        n = 0
        for ev in events:
            if type(ev) is Span and ev.pid:
                hit = known.get((ev.tid, ev.cat))
                if hit is None or hit[0] != ev.pid:
                    track = self.child(ev.pid, ev.tid, ev.cat)
                    known[(ev.tid, ev.cat)] = (ev.pid, track)
                else:
                    track = hit[1]
                slice_(track, ev.start, ev.end, ev.name, ev.args)
                n += 1
                if not n & 1023:
                    maybe_flush()
            else:
                add(ev)
        maybe_flush()

    def add(self, ev: Event) -> None:
        # Commonest first; direct type(ev) tests, which mypy narrows on.
        if type(ev) is Span:
            track = (self.global_track(CATEGORY_TITLE.get(ev.cat, ev.cat)) if ev.pid == 0
                     else self.child(ev.pid, ev.tid, ev.cat))
            self.w.slice(track, ev.start, ev.end, ev.name, ev.args)
        elif type(ev) is StackSample:
            self.python.add(ev)
        elif type(ev) is Instant:
            if ev.pid == 0:
                track = self.global_track(CATEGORY_TITLE.get(ev.cat, ev.cat))
            elif ev.tid == 0:
                track = self.process(ev.pid)
            else:
                track = self.thread(ev.pid, ev.tid)
            self.w.instant(track, ev.ts, ev.name, ev.args)
            if ev.name == "exit" and ev.tid:
                self.python.thread_exited(ev.tid, ev.ts)
                self.threads.pop(ev.tid, None)  # a reused tid gets a new track
                self._spans.clear()
        elif type(ev) is CounterSample:
            self.w.counter(self.counter_track(ev.pid, ev.track, ev.unit), ev.ts, ev.value)
        elif type(ev) is ThreadName:
            self._rename(ev)
        elif type(ev) is Loss:
            total = self.lost[ev.source] = self.lost.get(ev.source, 0) + ev.count
            self.w.counter(self.counter_track(0, f"lost events: {ev.source}", "count"), ev.ts, total)
        self.w.maybe_flush()

    def close(self) -> None:
        """Ends what is still open (Python frames) at its last sample."""
        self.python.close()

    def _rename(self, ev: ThreadName) -> None:
        if ev.is_process:
            self.process_names[ev.pid] = ev.name
            u = self.processes.get(ev.pid)
            if u is None:
                self.process(ev.pid)
            else:
                self.w.process_track(u, ev.pid, ev.name)
            if ev.tid != ev.pid:
                return
        self.thread_names[ev.tid] = ev.name
        cur = self.threads.get(ev.tid)
        if cur is not None and cur[0] == ev.pid:
            self.w.thread_track(cur[1], ev.pid, ev.tid, ev.name)
        else:
            self.thread(ev.pid, ev.tid)
