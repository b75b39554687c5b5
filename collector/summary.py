"""summary.json: the machine-readable result of a capture, beside the trace.

Versioned (SCHEMA_VERSION); fields are documented in docs/summary.md. The
verdict section is added by the stall analysis."""

from __future__ import annotations

import json
import os
import time

SCHEMA_VERSION = 1


def _aggregated(session) -> dict[str, int]:
    out: dict[str, int] = {}
    for src in getattr(session, "_started", []):
        for k, v in src.stats().items():
            if k.endswith(".aggregated"):
                out[k[:-11]] = out.get(k[:-11], 0) + v
    return out


def write_summary(session, cap, writer) -> dict:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "gpuscope": "0.1.0",
        "target": {"pid": session.pid, "command": session.command},
        "trace": os.path.basename(cap.trace),
        "trace_bytes": writer.bytes_written,
        "trace_packets": writer.packets,
        "started_unix_s": round(time.time() - cap.duration_s, 3),
        "duration_s": round(cap.duration_s, 3),
        "attach_s": round(getattr(session, "attach_s", 0.0), 3),
        "stop_reason": cap.reason,
        "processes": cap.processes,
        "events": cap.events,
        "events_written": session.counts,
        "lost": cap.lost,
        # Events counted in the kernel rather than shipped one by one, per source.
        "aggregated": _aggregated(session),
        "notices": cap.notices,
    }
    # The stall analysis: verdict, steps, stall_frames, main_wait_frames, top_files.
    doc.update(getattr(session, "result", None) or {})
    tmp = cap.summary_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    os.replace(tmp, cap.summary_path)
    return doc
