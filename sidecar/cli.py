"""`gpuscope sidecar`: runs beside a training job (a container in its pod, with
`shareProcessNamespace: true`), always on at low cost.

It wires the parts together: discovery (discover.py) and the always-on
monitor (monitor.py) with the probes translated to the pod's PIDs
(pidns.py), Prometheus metrics (metrics.py), the flight recorder
(flightrec.py), captures on request (captures.py) and the HTTP API (api.py).
See docs/sidecar.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from gpuscope.collector.errors import EXIT_USAGE, CliError, check_privileges
from gpuscope.collector.options import (
    CaptureOptions,
    Parser,
    add_probe_flags,
    build_sources,
    non_negative,
    non_negative_int,
    positive,
)

DEFAULT_LISTEN = "0.0.0.0:9400"
DEFAULT_CAPTURES = "/var/lib/gpuscope/captures"
# Probe selection as for `gpuscope attach`, with cheaper always-on defaults;
# the sidecar follows every process of the target's tree and stops on no duration.
ALWAYS_ON = CaptureOptions(min_offcpu_us=200, nvml_hz=2.0, rate=50)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--match", metavar="REGEX", help="the training process is the one whose "
                   "command line matches REGEX (default: a Python process with PyTorch/CUDA "
                   "libraries mapped)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"API address (default {DEFAULT_LISTEN})")
    p.add_argument("--token-file", metavar="FILE", help="bearer token for the API "
                   "(default: the GPUSCOPE_TOKEN environment variable)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve the API without a token (only behind another guard)")
    p.add_argument("--metrics-auth", action="store_true",
                   help="require the token on /metrics too (default: open, for scrapers)")
    p.add_argument("--captures", default=DEFAULT_CAPTURES, metavar="DIR",
                   help=f"where captures are written (default {DEFAULT_CAPTURES})")
    p.add_argument("--keep", type=non_negative_int, default=20, help="captures kept on disk (default 20)")
    p.add_argument("--flight-seconds", type=non_negative, default=60.0,
                   help="flight recorder window, seconds; 0 turns it off (default 60)")
    p.add_argument("--flight-max-events", type=non_negative_int, default=500_000,
                   help="flight recorder bound, events (default 500000)")
    p.add_argument("--flight-max-mb", type=non_negative_int, default=256,
                   help="flight recorder bound, MiB of encoded events (default 256)")
    p.add_argument("--max-duration", type=positive, default=3600.0,
                   help="longest capture accepted, seconds (default 3600)")
    p.add_argument("--host-proc", metavar="DIR", help="the host's procfs, to translate kernel "
                   "PIDs to the pod's (default /host/proc when gpuscope runs in a PID namespace)")
    p.add_argument("--viewer", action="store_true", help="serve the web viewer under /viewer/")
    add_probe_flags(p, ALWAYS_ON, cheaper="cheaper always-on")
    p.add_argument("--analyze-every", type=non_negative, default=30.0, metavar="S",
                   help="publish the always-on stall analysis (data-wait and step-time "
                   "metrics) every S seconds, each over the last max(S, 10) seconds of "
                   "events; 0: only on captures (default 30)")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="gpuscope sidecar", description="Run beside a training "
                                "job (Kubernetes pod): metrics, flight recorder, captures on "
                                "request over HTTP. See docs/sidecar.md.")
    add_arguments(p)
    return p


def main(argv: list[str]) -> int:
    """`gpuscope sidecar ARGS`; expected failures raise CliError (cli.main prints them)."""
    return run(parser().parse_args(argv))


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9400", EXIT_USAGE)
    return host.strip("[]") or "0.0.0.0", int(port)


def load_token(args) -> str | None:
    from gpuscope.viewer.auth import given_token

    token = given_token(args.token_file)
    if args.no_auth:
        if token:
            raise CliError("--no-auth given together with a token: choose one", EXIT_USAGE)
        return None
    if not token:
        raise CliError("refusing to serve the API without a token: set GPUSCOPE_TOKEN or "
                       "--token-file (a Kubernetes Secret), or pass --no-auth explicitly",
                       EXIT_USAGE)
    return token


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} gpuscope sidecar: {msg}\n")
    sys.stderr.flush()


class Sidecar:
    """What the API reaches: the monitor, the captures, the metrics."""

    def __init__(self, monitor, captures, metrics, pidns_note: str):
        self.monitor, self.captures, self.metrics = monitor, captures, metrics
        self.pidns_note = pidns_note


def run(args) -> int:
    # The always-on sidecar walks running threads from outside: in a pod it cannot use
    # the kernel walker (PID namespace), and its shutdown path with it is not proven.
    os.environ.setdefault("GPUSCOPE_PYTHON_KERNEL_WALK", "0")
    import re

    from gpuscope.collector.budget import PipelineBudget
    from gpuscope.probes.source import SourceError

    from .api import create_app, with_viewer
    from .captures import Captures
    from .discover import find_target, own_tree
    from .flightrec import FlightRecorder
    from .metrics import Metrics
    from .monitor import Monitor
    from .pidns import PidNamespace, namespaced
    from .wsgiserver import make_server

    opts = CaptureOptions.from_args(args, ALWAYS_ON)
    token = load_token(args)
    host, port = parse_listen(args.listen)
    try:
        match = re.compile(args.match) if args.match else None
    except re.error as e:
        raise CliError(f"--match {args.match!r}: {e}", EXIT_USAGE) from None
    if args.flight_seconds < 0 or args.max_duration <= 0:
        raise CliError("--flight-seconds must be >= 0 and --max-duration > 0", EXIT_USAGE)
    check_privileges()
    try:
        pidns = PidNamespace.detect(args.host_proc)
    except SourceError as e:
        raise CliError(str(e)) from None
    note = ("initial namespace: kernel PIDs used as they are" if pidns is None else
            f"pod namespace (inode {pidns.ns[1]}): kernel PIDs translated via "
            f"{pidns.host_proc}")
    try:
        os.makedirs(args.captures, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create --captures {args.captures}: {e.strerror}",
                       EXIT_USAGE) from None

    metrics = Metrics()
    flight = FlightRecorder(args.flight_seconds, args.flight_max_events,
                            args.flight_max_mb << 20)
    monitor = Monitor(lambda: namespaced(build_sources(opts), pidns),
                      lambda: find_target(match, own_tree()), metrics, flight, log,
                      budget=PipelineBudget(opts.max_overhead / 100))
    captures = Captures(monitor, args.captures, metrics, keep=args.keep,
                        max_duration_s=args.max_duration,
                        analysis_rate_hz=opts.rate if opts.python else None)
    app = create_app(Sidecar(monitor, captures, metrics, note), token, args.metrics_auth)
    wsgi = with_viewer(app, args.captures, token, log) if args.viewer else app
    try:
        server = make_server(host, port, wsgi, log)
    except OSError as e:
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None

    def shutdown(signum, _frame):
        log(f"{signal.Signals(signum).name}: finishing captures and detaching")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log(f"PID namespace: {note}")
    log(f"looking for the training process ({'--match ' + args.match if match else 'Python with torch/CUDA libraries'}); "
        f"API on http://{host}:{server.server_port} ({'token required' if token else 'NO AUTH'})")
    if args.analyze_every > 0 and opts.python:
        try:
            from .analysis import LiveAnalysis

            monitor.pipeline.add_consumer(LiveAnalysis(lambda: monitor.target, metrics,
                                                       opts.rate, args.analyze_every, log))
        except ImportError as e:
            log(f"stall analysis unavailable ({e}): data-wait metrics only from captures")
    monitor.start()
    try:
        server.serve_forever()
    finally:
        captures.stop_all("sidecar stopping")
        captures.wait_idle()
        monitor.stop()
        server.server_close()
    return 0
