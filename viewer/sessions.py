"""The captures in the viewer's directory: NAME.pftrace, with NAME.summary.json
once the capture has finished. A capture is only ever found by a name that
listing the directory produced, so no request can reach another file."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from .tracefile import read_head

TRACE_EXT = ".pftrace"
NAME_RE = re.compile(r"^[\w.\-+@= ]{1,200}$")


@dataclass
class Capture:
    name: str                      # the file name without .pftrace
    trace: str                     # absolute path
    size: int
    mtime: float
    summary_path: str
    summary: dict | None = None
    summary_error: str | None = None
    live: bool = False
    target: str = ""
    pid: int | None = None
    started: float | None = None   # unix seconds
    duration: float | None = None
    notes: list = field(default_factory=list)

    @property
    def verdict(self) -> dict:
        v = (self.summary or {}).get("verdict")
        return v if isinstance(v, dict) else {}

    @property
    def state(self) -> str:
        if self.summary:
            return "finished"
        return "live" if self.live else "incomplete"


def _summary(path: str) -> tuple[dict | None, str | None]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"summary unreadable: {e}"
    if not isinstance(doc, dict):
        return None, "summary is not a JSON object"
    return doc, None


def _from_head(c: Capture) -> None:
    """Target and start time of a capture without summary, from the trace's
    first packets (clock snapshot, first process track)."""
    for p in read_head(c.trace):
        if p.HasField("clock_snapshot") and c.started is None:
            for clk in p.clock_snapshot.clocks:
                if clk.clock_id == pb.BUILTIN_CLOCK_REALTIME:
                    c.started = clk.timestamp / 1e9
        if p.HasField("track_descriptor") and p.track_descriptor.HasField("process"):
            if not c.target:
                c.target = p.track_descriptor.process.process_name
                c.pid = p.track_descriptor.process.pid


def _inside(directory: str, file_name: str) -> bool:
    """True if the file is a regular file in directory itself (a symlink out is not)."""
    full = os.path.realpath(os.path.join(directory, file_name))
    return os.path.dirname(full) == os.path.realpath(directory) and os.path.isfile(full)


def load(directory: str, file_name: str, live_s: float = 30.0) -> Capture | None:
    path = os.path.join(directory, file_name)
    try:
        st = os.stat(path)
    except OSError:
        return None
    name = file_name[: -len(TRACE_EXT)]
    c = Capture(name=name, trace=path, size=st.st_size, mtime=st.st_mtime,
                summary_path=os.path.join(directory, name + ".summary.json"))
    if os.path.lexists(c.summary_path) and not _inside(directory, name + ".summary.json"):
        c.summary_error = "summary is not a file in the capture directory: ignored"
    else:
        c.summary, c.summary_error = _summary(c.summary_path)
    s = c.summary or {}
    target = s.get("target")
    if not isinstance(target, dict):
        target = {}
    cmd = target.get("command")
    if isinstance(cmd, list) and cmd:
        c.target = " ".join(str(a) for a in cmd)
    c.pid = target.get("pid") if isinstance(target.get("pid"), int) else None
    if isinstance(s.get("started_unix_s"), (int, float)):
        c.started = float(s["started_unix_s"])
    if isinstance(s.get("duration_s"), (int, float)):
        c.duration = float(s["duration_s"])
    if not c.summary:
        c.live = time.time() - st.st_mtime < live_s
        _from_head(c)
        if c.started is not None:
            c.duration = max(0.0, st.st_mtime - c.started)
    return c


def list_captures(directory: str, live_s: float = 30.0) -> list[Capture]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    out = []
    for n in names:
        if n.endswith(TRACE_EXT) and NAME_RE.match(n) and _inside(directory, n):
            c = load(directory, n, live_s)
            if c is not None:
                out.append(c)
    out.sort(key=lambda c: (c.started or c.mtime), reverse=True)
    return out


def find(directory: str, name: str, live_s: float = 30.0) -> Capture | None:
    """The capture called `name`, only if listing the directory shows it."""
    if not NAME_RE.match(name) or "/" in name or name.startswith("."):
        return None
    file_name = name + TRACE_EXT
    try:
        if file_name not in os.listdir(directory):
            return None
    except OSError:
        return None
    if not _inside(directory, file_name):
        return None   # a symlink leading out of the directory
    return load(directory, file_name, live_s)
