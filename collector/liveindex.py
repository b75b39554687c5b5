"""The viewer's index of a capture, written while the capture runs, so that
opening a capture gpuscope made needs no indexing at all.

It is written by a child process at idle priority (SCHED_IDLE) that follows
the trace file as the collector flushes it, with the same TraceIndexer the
viewer uses on any trace, so the two indexes agree row for row. Indexing in
the collector's own pipeline thread was the largest item of its CPU on
bench_overhead job a (about 30% of py-spy's samples of the collector, ~20 µs
per event including SQLite): that CPU was taken from the job. At idle
priority the indexer only runs when a core has nothing else to do; on a
machine the job saturates it falls behind and catches up when the capture
ends (or later, on its own: the viewer uses an unfinished index while its
writer is alive and indexes the trace itself otherwise).

The child's stdin is a pipe from the collector: b"done" means the trace is
finished (index the rest, mark the index complete); end of file without it
means the collector died (index what is there, leave it unfinished)."""

from __future__ import annotations

import os
import select
import sqlite3
import subprocess
import sys
import time

INDEX_DIR = ".gpuscope-index"
TRACE_EXT = ".pftrace"
POLL_S = 1.0   # the live view lags up to 1 s; each update has fixed costs (0.25 s: 0.70-0.73 s of CPU per 20 s on job a, 1 s: 0.42-0.60)

# The child sets its own policy first (Popen's preexec_fn is unsafe once the
# collector has threads), and ignores the terminal's Ctrl-C: the collector
# decides when the trace is finished.
_BOOT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
         "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); "
         "from gpuscope.collector.liveindex import follow; sys.exit(follow(*sys.argv[1:3]))")


def index_path(trace_path: str) -> str:
    """Where the viewer looks for a trace's index: DIR/.gpuscope-index/NAME.sqlite."""
    d, base = os.path.split(os.path.abspath(trace_path))
    name = base[: -len(TRACE_EXT)] if base.endswith(TRACE_EXT) else base
    return os.path.join(d, INDEX_DIR, name + ".sqlite")


class LiveIndex:
    """The indexer child of one trace. Never harms the capture: if it cannot
    run, the viewer indexes the trace itself (`index_error` says why)."""

    def __init__(self, trace_path: str, path: str | None = None):
        self.trace = trace_path
        self.path = path or index_path(trace_path)
        self.index_error: str | None = None
        self.cpu_s: float | None = None   # the child's CPU, once it has exited
        self.child: subprocess.Popen | None = None
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.child = subprocess.Popen(
                [sys.executable, "-c", _BOOT, self.trace, self.path], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self.index_error = f"viewer index not written ({self.path}): {e}"

    def close(self, wait_s: float = 10.0) -> None:
        """Tells the child the trace is finished; waits up to wait_s for it to
        catch up (past that it finishes on its own, in the background)."""
        child, self.child = self.child, None
        if child is None or child.stdin is None:
            return
        try:
            child.stdin.write(b"done")
            child.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                self.cpu_s = usage.ru_utime + usage.ru_stime
                if child.returncode != 0:
                    self.index_error = (f"viewer index not written ({self.path}): its indexer "
                                        f"exited with status {child.returncode}")
                return
            time.sleep(0.02)
        # still catching up: it completes the index by itself


def follow(trace: str, path: str) -> int:
    """The child: indexes the trace as it grows, until told it is finished."""
    from .fileindex import TraceIndexer
    from .traceindex import connect
    try:
        ix = TraceIndexer(connect(path), trace)
        ix.reset()
        ix.meta.update(live=1, complete=0, writer_pid=os.getpid())
        ix.save_meta()
        ix.db.commit()
        done = eof = False
        while not eof:
            if select.select([0], [], [], POLL_S)[0]:
                data = os.read(0, 64)
                done, eof = done or b"done" in data, not data
            ix.update()
        if done and not ix.meta.get("error"):
            ix.meta["complete"] = 1
        ix.save_meta()
        ix.db.commit()
        ix.db.close()
        return 0
    except (OSError, sqlite3.Error):
        for suffix in ("", "-wal", "-shm"):   # the viewer will index the trace itself
            try:
                os.unlink(path + suffix)
            except OSError:
                pass
        return 1
