"""summary.json: the machine-readable result of a capture, beside the trace.

Versioned (SCHEMA_VERSION); fields are documented in docs/summary.md. The
verdict section is added by the stall analysis."""

from __future__ import annotations

import json
import os
import time

SCHEMA_VERSION = 1


def write_summary(cap, *, pid: int, command: list[str], writer, attach_s: float,
                  counts: dict[str, int], result: dict, overhead: dict | None = None,
                  gpu: dict | None = None) -> dict:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "gpuscope": "0.1.0",
        "target": {"pid": pid, "command": command},
        "trace": os.path.basename(cap.trace),
        "trace_bytes": writer.bytes_written,
        "trace_packets": writer.packets,
        "started_unix_s": round(time.time() - cap.duration_s, 3),
        "duration_s": round(cap.duration_s, 3),
        "attach_s": round(attach_s, 3),
        "stop_reason": cap.reason,
        "processes": cap.processes,
        "events": cap.events,
        "events_written": counts,
        "lost": cap.lost,
        # Events counted in the kernel rather than shipped one by one, per source.
        "aggregated": cap.aggregated,
        "notices": cap.notices,
        # gpuscope's own cost and the detail it gave up to stay within --max-overhead.
        "overhead": overhead,
        # GPU libraries probed, device memory, graphs, estimated busy time (gpusummary).
        "gpu": gpu,
    }
    # The stall analysis: verdict, steps, stall_frames, main_wait_frames, top_files.
    doc.update(result or {})
    tmp = cap.summary_path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        os.replace(tmp, cap.summary_path)
    except OSError:
        try:
            os.unlink(tmp)   # half a summary helps no one, and holds the space
        except OSError:
            pass
        raise
    return doc
