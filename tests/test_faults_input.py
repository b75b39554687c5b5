"""The bad-input matrix: every command and every API route given what a
careless user or an attacker would give. Each answer is one line saying
what to do, the documented exit code (2 bad input; collector/errors.py) or
HTTP status, and never a traceback."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from faults import one_line, run
from test_viewer_support import write_trace

from gpuscope.sidecar.api import create_app, with_viewer
from gpuscope.sidecar.captures import Captures
from gpuscope.sidecar.cli import Sidecar
from gpuscope.sidecar.flightrec import FlightRecorder
from gpuscope.sidecar.metrics import Metrics
from gpuscope.sidecar.monitor import Monitor
from gpuscope.sidecar.wsgiserver import make_server
from gpuscope.viewer.auth import COOKIE, cookie_value

TOKEN = "t0k3n-for-the-fault-suite"


@pytest.fixture(scope="module")
def sleeper():
    p = subprocess.Popen(["sleep", "600"])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("input")
    (d / "notes.txt").write_text("not a trace\n")
    (d / "empty.pftrace").write_bytes(b"")
    (d / "text.pftrace").write_text("hello\n")
    (d / "empty-token").write_text("\n")
    (d / "script.sh").write_text("#!/bin/sh\necho hi\n")     # not executable
    return d


@pytest.fixture(scope="module")
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


# (args, exit code, words the line must hold). {pid}: a live process that is
# not ours; {d}: a directory of bad files; {busy}: a port someone listens on.
CLI = [
    (["attach"], 2, "required: -p/--pid"),
    (["attach", "-p", "abc"], 2, "invalid int value"),
    (["attach", "-p", "999999999"], 2, "no running process with PID 999999999"),
    (["attach", "-p", "-5"], 2, "no running process"),
    (["attach", "-p", "1"], 2, "PID 1 is the init process"),
    (["attach", "-p", "{self}"], 2, "is an ancestor of this gpuscope"),
    (["attach", "-p", "{pid}", "-d", "nan"], 2, "'nan' is not a duration"),
    (["attach", "-p", "{pid}", "-d", "0"], 2, "'0' is not a duration"),
    (["attach", "-p", "{pid}", "-d", "-1"], 2, "'-1' is not a duration"),
    (["attach", "-p", "{pid}", "-d", "inf"], 2, "'inf' is not a duration"),
    (["attach", "-p", "{pid}", "-d", "1e999"], 2, "is not a duration"),
    (["attach", "-p", "{pid}", "-r", "0"], 2, "--rate: '0' is not a number > 0"),
    (["attach", "-p", "{pid}", "-r", "nan"], 2, "is not a number > 0"),
    (["attach", "-p", "{pid}", "--nvml-hz", "-5"], 2, "--nvml-hz: '-5'"),
    (["attach", "-p", "{pid}", "--min-offcpu-us", "-1"], 2, "is not a whole number >= 0"),
    (["attach", "-p", "{pid}", "--max-overhead", "200"], 2, "not a percentage in (0, 100]"),
    (["attach", "-p", "{pid}", "--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    (["attach", "-p", "{pid}", "-o", "/nonexistent-dir/x.pftrace"], 2, "does not exist"),
    (["attach", "-p", "{pid}", "-o", "/dev/null"], 2, "not a regular file"),
    (["attach", "-p", "{pid}", "-o", "{d}"], 2, "not a regular file"),
    (["attach", "-p", "{pid}", "-o", "/proc/1/x.pftrace"], 2, "cannot write trace"),
    (["run"], 2, "nothing to run"),
    (["run", "--"], 2, "nothing to run"),
    (["run", "--", "no-such-command-xyz"], 2, "command not found"),
    (["run", "--", "/etc/passwd"], 2, "not executable"),
    (["run", "--", "{d}/script.sh"], 2, "not executable (chmod +x"),
    (["run", "--", "/tmp"], 2, "is a directory"),
    (["run", "--", "./no-such-file"], 2, "no such file"),
    (["run", "-d", "0", "--", "true"], 2, "is not a duration"),
    (["report"], 2, "required: trace"),
    (["report", "/nonexistent.pftrace"], 2, "cannot read /nonexistent.pftrace"),
    (["report", "/dev/zero"], 2, "is a device, not a trace file"),
    (["report", "{d}"], 2, "is a directory, not a trace file"),
    (["report", "{d}/text.pftrace"], 2, "not a Perfetto protobuf trace"),
    (["report", "{d}/empty.pftrace"], 2, "holds no process"),
    (["doctor", "-p", "abc"], 2, "invalid int value"),
    (["view", "/nonexistent"], 2, "no such file or directory"),
    (["view", "{d}/notes.txt"], 2, "is not a .pftrace file"),
    (["view", "{d}", "--port", "99999"], 2, "'99999' is not a port number"),
    (["view", "{d}", "--port", "-1"], 2, "is not a port number"),
    (["view", "{d}", "--port", "http"], 2, "is not a port number"),
    (["view", "{d}", "--port", "{busy}"], 2, "Address already in use"),
    (["view", "{d}", "--host", "0.0.0.0", "--port", "0"], 2, "without a token"),
    (["view", "{d}", "--host", "no-such-host.invalid", "--port", "0"], 2, "without a token"),
    (["view", "{d}", "--token-file", "/nonexistent"], 2, "cannot read --token-file"),
    (["view", "{d}", "--token-file", "{d}/empty-token"], 2, "is empty"),
    (["nonsense"], 2, "invalid choice: 'nonsense'"),
    ([], 2, "required: cmd"),
    (["sidecar", "--no-such-flag"], 2, "unrecognized arguments"),
    (["sidecar", "--listen", "nowhere"], 2, "expected HOST:PORT"),
    (["sidecar", "--listen", "0.0.0.0:99999"], 2, "expected HOST:PORT"),
    (["sidecar", "--max-duration", "nan"], 2, "--max-duration: 'nan'"),
    (["sidecar", "--flight-seconds", "-1"], 2, "--flight-seconds: '-1'"),
    (["sidecar", "--keep", "-3"], 2, "--keep: '-3'"),
    (["sidecar", "--match", "("], 2, "--match '('"),
    (["sidecar", "--token-file", "{d}/empty-token"], 2, "is empty"),
]
NO_TOKEN = {k: v for k, v in os.environ.items() if k != "GPUSCOPE_TOKEN"}


@pytest.mark.parametrize("args, code, words", CLI, ids=[" ".join(c[0]) or "(none)" for c in CLI])
def test_cli(args, code, words, sleeper, files, busy_port):
    args = [a.format(pid=sleeper, d=files, busy=busy_port, self=os.getpid()) for a in args]
    env = {**NO_TOKEN, "GPUSCOPE_TOKEN": TOKEN} if args[:1] == ["sidecar"] and \
        "--token-file" not in args else NO_TOKEN
    rc, _, err = run(args, timeout=60, env=env)
    assert rc == code, err
    assert words in one_line(err), err


def test_sidecar_without_a_token_is_refused():
    rc, _, err = run(["sidecar"], env=NO_TOKEN)
    assert rc == 2 and "refusing to serve the API without a token" in one_line(err)


def test_gpuscope_cannot_attach_to_itself():
    # exec keeps the PID: gpuscope is given its own
    p = subprocess.run(["sh", "-c", 'exec "$0" -m gpuscope.collector.cli attach -p $$',
                        sys.executable], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "is this gpuscope: it cannot trace itself" in one_line(p.stderr)


# -- the sidecar's API and the viewer behind it, served for real ------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    d = tmp_path_factory.mktemp("captures")
    write_trace(str(d / "t.pftrace"), steps=5)
    metrics, flight = Metrics(), FlightRecorder(10)
    monitor = Monitor(lambda: [], lambda: None, metrics, flight)   # never started: no target
    captures = Captures(monitor, str(d), metrics, max_duration_s=600)
    lines: list[str] = []
    app = create_app(Sidecar(monitor, captures, metrics, "test"), TOKEN)
    srv = make_server("127.0.0.1", 0, with_viewer(app, str(d), TOKEN, lines.append),
                      lines.append)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.lines = lines
    yield srv
    srv.shutdown()
    t.join(10)
    srv.server_close()


def request(srv, method, path, body=None, headers=None, auth=True):
    h = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    h.update(headers or {})
    c = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=60)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read(), r.getheader("Set-Cookie")
    finally:
        c.close()


J = {"Content-Type": "application/json"}
BIG = json.dumps({"duration_s": 5, "pad": "x" * (80 << 10)})
API = [
    ("GET", "/v1/captures", None, {}, False, 401, "missing bearer token"),
    ("GET", "/v1/captures", None, {"Authorization": "Bearer wrong"}, False, 401, "bad bearer token"),
    ("GET", "/v1/captures", None, {"Authorization": "Basic eDp5"}, False, 401, "bad bearer token"),
    ("GET", "/v1/captures?token=" + TOKEN, None, {}, False, 401, "missing bearer token"),
    ("POST", "/v1/captures", "not json", J, True, 400, "body must be a JSON object"),
    ("POST", "/v1/captures", "[1, 2]", J, True, 400, "body must be a JSON object"),
    ("POST", "/v1/captures", "{}", J, True, 400, "duration_s is required"),
    ("POST", "/v1/captures", '{"duration_s": "ten"}', J, True, 400, "must be a number"),
    ("POST", "/v1/captures", '{"duration_s": true}', J, True, 400, "must be a number"),
    ("POST", "/v1/captures", '{"duration_s": -1}', J, True, 400, "must be > 0"),
    ("POST", "/v1/captures", '{"duration_s": NaN}', J, True, 400, "must be > 0"),
    ("POST", "/v1/captures", '{"duration_s": Infinity}', J, True, 400, "must be > 0"),
    ("POST", "/v1/captures", '{"duration_s": 1e9}', J, True, 400, "must be > 0 and <= 600"),
    ("POST", "/v1/captures", '{"duration_s": 5, "rm": "-rf"}', J, True, 400, "unknown field(s): rm"),
    ("POST", "/v1/captures", '{"duration_s": 5, "include_flight_recorder": "yes"}', J, True,
     400, "must be true or false"),
    ("POST", "/v1/captures", BIG, J, True, 413, ""),
    ("POST", "/v1/captures", '{"duration_s": 5}', J, True, 503, "no training process attached"),
    ("GET", "/v1/captures/..%2F..%2Fetc%2Fpasswd", None, {}, True, 404, ""),
    ("GET", "/v1/captures/20250101-120000-abc123", None, {}, True, 404, "never existed"),
    ("GET", "/v1/captures/20250101-120000-abc123/trace", None, {}, True, 404, "no capture"),
    ("GET", "/v1/captures/x/summary", None, {}, True, 404, "ids look like"),
    ("DELETE", "/v1/captures", None, {}, True, 405, "DELETE is not allowed"),
    ("GET", "/v1/nothing", None, {}, True, 404, "no such endpoint"),
    ("GET", "/v1/target", None, {}, False, 401, "missing bearer token"),
    ("POST", "/healthz", "{}", J, False, 405, "POST is not allowed"),
    ("GET", "/metrics", None, {"Accept": "application/garbage;;q=x, */*;q=nan"}, False, 200, ""),
    ("PUT", "/metrics", "x", {}, False, 405, "PUT is not allowed"),
    ("GET", "/viewer/", None, {}, False, 401, "?token=<token>"),
    ("GET", "/viewer/?token=wrong", None, {}, False, 401, "?token=<token>"),
    ("GET", "/viewer/", None, {"Cookie": f"{COOKIE}={TOKEN}"}, False, 401, "?token=<token>"),
    ("GET", "/viewer/api/s/nope/meta", None, {}, True, 404, "no such capture"),
    ("GET", "/viewer/api/s/..%2F..%2Fetc%2Fpasswd/meta", None, {}, True, 404, ""),
    ("GET", "/viewer/api/s/t/window", None, {}, True, 400, "missing parameter t0"),
    ("GET", "/viewer/api/s/t/search?q=step", None, {}, True, 200, ""),   # before any /meta
    ("GET", "/viewer/api/s/t/window?t0=x&t1=5", None, {}, True, 400, "t0 must be a finite number"),
    ("GET", "/viewer/api/s/t/window?t0=0&t1=1e400", None, {}, True, 400, "t1 must be a finite"),
    ("GET", "/viewer/api/s/t/window?t0=5&t1=1", None, {}, True, 400, "t1 must be after t0"),
    ("GET", "/viewer/api/s/t/window?t0=0&t1=9&tracks=a,b", None, {}, True, 400, "comma-separated"),
    ("GET", "/viewer/api/s/t/slice/99999999999999999999999", None, {}, True, 404, "no such slice"),
    ("GET", "/viewer/api/s/t/search?q=x&limit=nan", None, {}, True, 400, "limit must be"),
    ("GET", "/viewer/api/s/t/search?q=x&after=1e400", None, {}, True, 400, "after must be"),
    ("GET", "/viewer/s/nope", None, {}, True, 404, ""),
]


@pytest.mark.parametrize("method, path, body, headers, auth, status, words", API,
                         ids=[f"{a[0]} {a[1][:60]} {(a[2] or '')[:30]}" for a in API])
def test_api(api, method, path, body, headers, auth, status, words):
    got, ctype, data, _ = request(api, method, path, body, headers, auth)
    text = data.decode("utf-8", "replace")
    assert got == status, text[:500]
    assert "Traceback" not in text
    if status < 400:
        assert not ctype.startswith("application/json") or json.loads(text) is not None
    elif ctype.startswith("application/json"):
        message = json.loads(text)["error"]
        assert "\n" not in message and words in message, message
    else:
        assert words in text, text[:500]
    assert not any(TOKEN in line for line in api.lines), api.lines   # never logged


def test_viewer_cookie_is_not_the_token(api):
    status, _, _, cookie = request(api, "GET", "/viewer/?token=" + TOKEN, auth=False)
    assert status == 303 and cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert TOKEN not in cookie and value == cookie_value(TOKEN)
    status, _, _, _ = request(api, "GET", "/viewer/", headers={"Cookie": f"{COOKIE}={value}"},
                              auth=False)
    assert status == 200
    status, _, _, _ = request(api, "GET", "/v1/captures", auth=False,
                              headers={"Authorization": f"Bearer {value}"})
    assert status == 401     # the cookie opens the viewer only, never the API
