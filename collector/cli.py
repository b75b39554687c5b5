"""The `gpuscope` command. Every expected failure ends in one line saying
what to do and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time

from gpuscope.probes import procfs
from gpuscope.probes.source import SourceError

from .checks import check_command, check_output, check_target
from .errors import EXIT_USAGE, CliError, check_privileges
from .options import CaptureOptions, Parser, add_capture_flags, build_sources, port

_HOLD = ("import os, sys\nfd = int(sys.argv[1])\nos.read(fd, 1)\nos.close(fd)\n"
         "os.execvp(sys.argv[2], sys.argv[2:])")


def default_output(pid: int) -> str:
    return f"gpuscope-{pid}-{time.strftime('%Y%m%d-%H%M%S')}.pftrace"


def capture(opts: CaptureOptions, pid: int, on_attached=None, command=None):
    from .session import Session
    from .status import StatusLine

    if opts.ebpf:
        for src in build_sources(opts):
            if hasattr(src, "expanded_source"):  # the eBPF source; others load nothing
                print(src.expanded_source())
        return None
    output = opts.output or default_output(pid)
    check_output(output)
    from .budget import PipelineBudget
    from .ranks import RankAnalysis

    session = Session(pid, build_sources(opts), output, duration=opts.duration,
                      subprocesses=opts.subprocesses,
                      status=None if opts.quiet else StatusLine(), command=command,
                      analysis=RankAnalysis(pid, rate_hz=opts.rate) if opts.python else None,
                      budget=PipelineBudget(opts.max_overhead / 100))
    session.install_signal_handlers()

    def attached(s):
        if s.stop_reason:
            return
        sys.stderr.write(f"gpuscope: attached to PID {pid} ({len(s.processes)} process(es)) in "
                         f"{s.attach_s:.1f}s; writing {output}; Ctrl-C to stop\n")
        sys.stderr.flush()
        if on_attached:
            on_attached(s)

    try:
        cap = session.run(on_attached=attached)
    except SourceError as e:
        if os.path.exists(output) and os.path.getsize(output) <= 200:
            os.unlink(output)  # nothing but the clock snapshot
        raise CliError(str(e)) from None
    report(cap)
    if cap.error:
        if "deleted" in cap.error:
            raise CliError(f"{cap.error}: the capture stopped (keep the output directory "
                           "while capturing, or choose another path with -o)")
        if not cap.error.startswith("cannot write"):
            raise CliError(f"{cap.error}: the capture stopped early (a gpuscope bug: please "
                           "report it with the summary)")
        raise CliError(f"{cap.error}: the capture stopped early; the trace is readable up to "
                       "there (free some space, or choose another path with -o)")
    return cap


def report(cap) -> None:
    size = os.path.getsize(cap.trace) if os.path.exists(cap.trace) else 0
    err = sys.stderr
    err.write(f"gpuscope: captured {cap.duration_s:.1f}s ({cap.reason}), "
              f"{len(cap.processes)} process(es)\n")
    for src, n in sorted(cap.events.items()):
        lost = cap.lost.get(src, 0)
        err.write(f"  {src:<8} {n:>9} events" + (f"  LOST {lost}" if lost else "") + "\n")
    for src, lost in sorted(cap.lost.items()):
        if src not in cap.events and lost:
            err.write(f"  {src:<8} LOST {lost}\n")
    ov = cap.summary.get("overhead")
    if ov:
        lowered = sum(1 for c in ov["changes"] if c["reason"] == "over budget")
        err.write(f"  overhead: gpuscope took {ov['mean_own_cpu_pct']:.1f}% of the machine "
                  f"(peak {ov['peak_own_cpu_pct']:.1f}%, limit {ov['limit_pct']:g}%)"
                  + (f"; detail lowered {lowered}x, ended at level {ov['level']} ({ov['detail']})"
                     if lowered else "") + "\n")
    for note in cap.notices:
        err.write(f"  note: {note}\n")
    if cap.summary.get("verdict"):
        from .verdict import render

        err.write(render(cap.summary))
    err.write(f"  trace:   {cap.trace} ({size / 1e6:.1f} MB) — open in ui.perfetto.dev\n")
    err.write(f"  summary: {cap.summary_path or 'not written'}\n")


# -- commands ----------------------------------------------------------------

def cmd_attach(args) -> int:
    pid = args.pid
    if not procfs.alive(pid):
        raise CliError(f"no running process with PID {pid} (check `ps -ef`, or start the "
                       "job under gpuscope with `gpuscope run -- CMD`)", EXIT_USAGE)
    if not args.ebpf:   # --ebpf only prints the program: any PID will do
        check_target(pid, args.subprocesses)
    check_privileges()
    cap = capture(CaptureOptions.from_args(args), pid)
    if cap is not None and cap.reason == "target exited during attach":
        raise CliError(f"process {pid} exited while gpuscope was attaching; "
                       f"what was captured is in {cap.trace}")
    return 0


def cmd_run(args) -> int:
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise CliError("nothing to run: gpuscope run [-o FILE] -- CMD ARGS...", EXIT_USAGE)
    check_privileges()
    if args.output:
        check_output(args.output)
    check_command(cmd[0])
    # The child waits on a pipe until the probes are live, then execs CMD (same
    # PID), so the capture sees the job from its first instruction.
    r, w = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(r), *cmd], pass_fds=(r,))
    os.close(r)

    def release(_session):
        os.write(w, b"x")
        os.close(w)

    try:
        opts = dataclasses.replace(CaptureOptions.from_args(args), launch=tuple(cmd))
        capture(opts, child.pid, on_attached=release, command=cmd)
    finally:
        try:
            os.close(w)
        except OSError:
            pass
        rc = child.wait()  # the job outlives a --duration capture; wait for it as a shell would
    return rc if rc >= 0 else 128 - rc


def cmd_report(args) -> int:
    import json

    from .ranks import RankAnalysis
    from .replay import TraceError, events, target_pid, truncation
    from .verdict import render

    summary_path = os.path.splitext(args.trace)[0] + ".summary.json"
    summary = None
    try:
        with open(summary_path) as f:
            summary = json.load(f)
        pid = summary["target"]["pid"]
        if not isinstance(pid, int):
            raise ValueError(pid)
    except (OSError, ValueError, KeyError, TypeError):
        pid = None
    seen: dict = {}
    try:
        pid = pid or target_pid(args.trace)
        if pid is None:
            raise CliError(f"{args.trace} holds no process: not a gpuscope trace?", EXIT_USAGE)
        analysis = RankAnalysis(pid, environ=None)   # the ranks are named by the trace
        batch = []
        for ev in events(args.trace, seen):
            batch.append(ev)
            if len(batch) >= 4096:
                analysis.feed(batch)
                batch = []
        analysis.feed(batch)
    except TraceError as e:
        raise CliError(f"{e} (give the .pftrace written by gpuscope attach/run)", EXIT_USAGE) from None
    result = analysis.result()
    cut = truncation(args.trace, seen, summary if isinstance(summary, dict) else None)
    if cut:
        result = {**result, "truncated": cut}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(render(result))
    if cut:
        sys.stderr.write(f"gpuscope: note: {args.trace} is truncated: {cut}; the verdict "
                         "covers only what it holds\n")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import run_doctor

    return run_doctor(args.pid)


def cmd_sidecar(argv: list[str]) -> int:
    """The sidecar is its own package on top of the collector; only this
    dispatch reaches it (the collector never imports it otherwise)."""
    from gpuscope.sidecar.cli import main as sidecar_main

    return sidecar_main(argv)


def cmd_view(args) -> int:
    import urllib.parse

    from gpuscope.viewer import create_app
    from gpuscope.viewer.auth import guard, is_loopback, quiet_handler

    path = os.path.abspath(args.path)
    if os.path.isfile(path):
        directory, name = os.path.dirname(path), os.path.basename(path)
        if not name.endswith(".pftrace"):
            raise CliError(f"{args.path} is not a .pftrace file", EXIT_USAGE)
        page = "/s/" + urllib.parse.quote(name[: -len(".pftrace")])
    elif os.path.isdir(path):
        directory, page = path, "/"
    else:
        raise CliError(f"no such file or directory: {args.path}", EXIT_USAGE)
    token = view_token(args)
    app = create_app({"DATA_DIR": directory})
    try:
        from werkzeug.serving import make_server

        sock = listen(args.host, args.port)
        server = make_server(args.host, args.port, guard(app.wsgi_app, token), threaded=True,
                             fd=sock.fileno(), request_handler=quiet_handler())
    except OSError as e:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e} "
                       "(choose another port with --port, or free this one)", EXIT_USAGE) from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    if token is None and not is_loopback(args.host):
        sys.stderr.write(f"gpuscope: warning: --no-auth: anyone who can reach {args.host} "
                         "sees these captures' command lines, paths and stacks\n")
    print(f"gpuscope: serving {directory} at http://{host}:{server.port}{page}"
          + (" (open it once with ?token=<token> added)" if token else "")
          + " (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def view_token(args) -> str | None:
    """A token is needed to serve beyond this machine: traces hold command
    lines, paths and stacks. On loopback one is used only if given."""
    from gpuscope.viewer.auth import given_token, is_loopback

    token = given_token(args.token_file)
    if args.no_auth:
        if token and args.token_file:
            raise CliError("--no-auth given together with --token-file: choose one", EXIT_USAGE)
        return None
    if token is None and not is_loopback(args.host):
        raise CliError(f"refusing to serve captures on {args.host} without a token (they hold "
                       "command lines, paths and stacks): set GPUSCOPE_TOKEN or --token-file, "
                       "or pass --no-auth to serve them to anyone who can reach it", EXIT_USAGE)
    return token


def listen(host: str, port: int):
    """A listening socket bound here: werkzeug's own bind exits 1 in its own words."""
    import socket

    from werkzeug.serving import get_sockaddr, select_address_family

    family = select_address_family(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="gpuscope", description="Live eBPF profiler for GPU "
                                 "training jobs: attach by PID, get a Perfetto timeline.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("attach", help="attach to a running process")
    p.add_argument("-p", "--pid", type=int, required=True)
    add_capture_flags(p)
    p.set_defaults(func=cmd_attach)
    p = sub.add_parser("run", help="run a command under gpuscope")
    add_capture_flags(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="re-run the data-loading analysis on a saved trace")
    p.add_argument("trace", help="a .pftrace written by gpuscope")
    p.add_argument("--json", action="store_true", help="print the verdict, steps and evidence as JSON")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("doctor", help="check that this machine can capture")
    p.add_argument("-p", "--pid", type=int, help="also check this target process")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("view", help="serve the web viewer for a directory of captures or a trace")
    p.add_argument("path", nargs="?", default=".", help="directory or .pftrace file (default: .)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--token-file", metavar="FILE", help="require this token (default: the "
                   "GPUSCOPE_TOKEN environment variable; needed unless --host is loopback)")
    p.add_argument("--no-auth", action="store_true", help="serve a non-loopback --host "
                   "without a token (anyone who can reach it sees the captures)")
    p.set_defaults(func=cmd_view)
    p = sub.add_parser("sidecar", add_help=False, help="run beside a training job (Kubernetes "
                       "pod): metrics, flight recorder, captures on request over HTTP")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="see gpuscope sidecar --help")
    p.set_defaults(func=lambda a: cmd_sidecar(a.argv))
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["sidecar"]:  # its flags are the sidecar package's own
            return cmd_sidecar(argv[1:])
        args = parser().parse_args(argv)
        return args.func(args)
    except CliError as e:
        sys.stderr.write(f"gpuscope: {e}\n")
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
