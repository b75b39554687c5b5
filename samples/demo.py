"""`make demo`: start the bundled file-reading training sample, attach
gpuscope to its PID for a few seconds, and say where the trace is."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="captures")
    ap.add_argument("--seconds", type=float, default=8)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    data = out / "demo-data"
    out.mkdir(parents=True, exist_ok=True)
    print(f"demo: preparing {data} and starting samples/file_loader.py (2 DataLoader workers)")
    job = subprocess.Popen([sys.executable, str(HERE / "file_loader.py"), "--data", str(data),
                            "--make-data", "512", "--workers", "2",
                            "--log", str(out / "demo-groundtruth.jsonl")],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid = json.loads(job.stdout.readline())["ready"]
        trace = out / "demo.pftrace"
        print(f"demo: training job running as PID {pid}; attaching gpuscope for {a.seconds:g}s")
        rc = subprocess.call([sys.executable, "-m", "gpuscope.collector.cli", "attach",
                              "-p", str(pid), "-d", str(a.seconds), "-o", str(trace)])
        if rc != 0:
            return rc
        summary = json.loads(trace.with_suffix(".summary.json").read_text())
        reads = summary["events"].get("io", 0)
        print(f"demo: {reads} IO events from {len(summary['processes'])} processes "
              f"(the job and its DataLoader workers)")
        print(f"demo: trace {trace} — open it at https://ui.perfetto.dev")
        return 0
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the job and its workers, without their shutdown noise
        job.wait()


if __name__ == "__main__":
    sys.exit(main())
