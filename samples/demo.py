"""`make demo`: the main job on a bundled sample. Starts samples/train.py
reading its dataset from slow storage (a FUSE mount adding 25 ms per read),
attaches gpuscope to its PID, prints the verdict, keeps the trace and the
summary in captures/, and serves the web viewer on them (on a terminal;
otherwise it prints the command)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import scenarios  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="captures")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--scenario", default="storage", choices=sorted(scenarios.SCENARIOS))
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    flags, latency, _ = scenarios.SCENARIOS[a.scenario]
    print(f"demo: starting samples/train.py {' '.join(flags)}"
          + (f" on a FUSE mount adding {latency} ms per read" if latency else ""), flush=True)
    print(f"demo: attaching gpuscope by PID for {a.seconds:g}s", flush=True)
    r = scenarios.run(a.scenario, str(out), a.seconds, trace_name="demo", quiet=False)
    if r["rc"] != 0:
        return r["rc"]
    print(f"demo: trace {r['trace']}\ndemo: summary {Path(r['trace']).with_suffix('.summary.json')}")
    view = [sys.executable, "-m", "gpuscope.collector.cli", "view", r["trace"], "--port", str(a.port)]
    if sys.stdin.isatty() and not os.environ.get("CI"):
        print("demo: serving the viewer (Ctrl-C to stop)", flush=True)
        try:
            return subprocess.call(view)
        except KeyboardInterrupt:
            return 0
    print("demo: to look at it: .venv/bin/gpuscope view " + r["trace"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
