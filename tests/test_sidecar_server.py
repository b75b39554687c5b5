"""The sidecar's production HTTP server (waitress) with the sidecar's own WSGI
stack (API + token-guarded viewer): quiet logging, tokens in query strings
never logged, shutdown from another thread with a keep-alive connection
open, and a one-line error when the port is taken."""

from __future__ import annotations

import http.client
import logging
import os
import socket
import subprocess
import sys
import threading

import pytest

from gpuscope.sidecar.api import create_app, with_viewer
from gpuscope.sidecar.wsgiserver import make_server, redact_query

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def server(tmp_path):
    lines: list[str] = []
    app = create_app(None, TOKEN)   # no sidecar behind it: only answers that need none
    wsgi = with_viewer(app, str(tmp_path), TOKEN, lines.append)
    srv = make_server("127.0.0.1", 0, wsgi, lines.append)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.lines, srv.thread = lines, t
    yield srv
    srv.shutdown()
    t.join(10)
    srv.server_close()


def get(srv, path: str, headers: dict | None = None) -> int:
    c = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=30)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def test_one_line_per_error_and_never_a_token(server):
    assert get(server, "/v1/captures?token=sekrit-1") == 401
    assert get(server, "/viewer/?token=sekrit-2") == 401
    assert get(server, "/viewer/?tok%65n=sekrit-3&x=1") == 401      # werkzeug decodes the key
    assert get(server, "/viewer/?token=" + TOKEN) == 303             # the one-time login
    assert get(server, "/no/such/endpoint") == 404
    assert get(server, "/healthz/nope") == 404                        # kubelet paths: quiet
    lines = list(server.lines)
    assert len(lines) == 4, lines
    assert all("token=[redacted]" in line for line in lines[:3]), lines
    assert '"GET /no/such/endpoint HTTP/1.1" 404' in lines[3]
    text = "\n".join(lines)
    for secret in ("sekrit-1", "sekrit-2", "sekrit-3", TOKEN):
        assert secret not in text


def test_waitress_warnings_reach_the_log_redacted(server):
    logging.getLogger("waitress.queue").warning("Task queue depth is %d at %s", 5,
                                                "/viewer/?token=sekrit-4")
    logging.getLogger("waitress").info("Serving on http://127.0.0.1")   # below WARNING
    assert server.lines == ["waitress: Task queue depth is 5 at /viewer/?token=[redacted]"]


def test_redact_query_keeps_the_other_parameters():
    assert redact_query("a=1&token=xyz&b=2") == "a=1&token=[redacted]&b=2"
    assert redact_query("a=1") == "a=1" and redact_query("") == ""


def test_shutdown_with_a_keepalive_connection_open(server):
    c = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    c.request("GET", "/no/such/endpoint")
    c.getresponse().read()          # HTTP/1.1: the connection stays open
    threading.Thread(target=server.shutdown).start()
    server.thread.join(10)
    assert not server.thread.is_alive()
    c.close()


def test_sidecar_says_when_the_port_is_taken(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "gpuscope.collector.cli", "sidecar",
                            "--no-auth", "--captures", str(tmp_path), "--listen",
                            f"127.0.0.1:{port}"],
                           env={k: v for k, v in os.environ.items() if k != "GPUSCOPE_TOKEN"},
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_serves_with_more_than_1024_descriptors_open(tmp_path):
    """Perf buffers and uprobes take one descriptor each: on a large node the
    sidecar's sockets are numbered past select()'s limit (FD_SETSIZE 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        lines: list[str] = []
        srv = make_server("127.0.0.1", 0, create_app(None, TOKEN), lines.append)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            assert get(srv, "/v1/captures") == 401
        finally:
            srv.shutdown()
            t.join(10)
            srv.server_close()
        assert not t.is_alive() and len(lines) == 1, lines
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
