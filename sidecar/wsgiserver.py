"""The sidecar's HTTP server: waitress, a production WSGI server (werkzeug's
development server stays for `gpuscope view`).

Quiet, as a sidecar beside a job should be: no line per request; a line per
4xx/5xx answer except /healthz (kubelet probes); waitress' own warnings and
errors through the sidecar's log. A `token=` in a query string (the viewer's
one-time login) is never written out as it was: every line is redacted.

The same small interface as werkzeug's server (serve_forever, shutdown from
another thread, server_close, server_port), so the sidecar's run() and its
signal handling do not depend on which server it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from urllib.parse import parse_qsl, quote, urlencode

from waitress import wasyncore
from waitress.server import create_server

from gpuscope.viewer.auth import TOKEN_IN_TEXT, redact

THREADS = 4                    # /metrics, /healthz, a trace download, and one spare
MAX_BODY = 1 << 20             # the API accepts 64 KiB bodies (api.py); nothing needs more


def redact_query(query: str) -> str:
    """`query` with the value of every token parameter replaced (as werkzeug
    decodes it: `tok%65n=` is a token too)."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() == "token" for k, _v in pairs):
        return TOKEN_IN_TEXT.sub(r"\1[redacted]", query)
    return urlencode([(k, "[redacted]" if k.lower() == "token" else v) for k, v in pairs],
                     safe="[]")


def request_line(environ: dict) -> str:
    path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
    query = redact_query(environ.get("QUERY_STRING", ""))
    return (f"{environ.get('REQUEST_METHOD', '-')} {path}{'?' + query if query else ''} "
            f"{environ.get('SERVER_PROTOCOL', '-')}")


def error_log(app, log: Callable[[str], None]):
    """WSGI middleware: one line for each 4xx/5xx answer, /healthz excepted."""

    def logged(environ, start_response):
        def start(status, headers, exc_info=None):
            if status[:1] in ("4", "5") and \
                    not environ.get("PATH_INFO", "").startswith("/healthz"):
                log(f'{environ.get("REMOTE_ADDR", "-")} "{request_line(environ)}" '
                    f'{status.split(" ", 1)[0]}')
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return logged


class _ToLog(logging.Handler):
    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log(redact(f"waitress: {record.getMessage()}"))
        except Exception:
            self.handleError(record)


def route_waitress_logs(log: Callable[[str], None]) -> None:
    """waitress' logger (and its children) to the sidecar's log, warnings and up."""
    logger = logging.getLogger("waitress")
    for h in [h for h in logger.handlers if isinstance(h, _ToLog)]:
        logger.removeHandler(h)
    logger.addHandler(_ToLog(log))
    logger.setLevel(logging.WARNING)
    logger.propagate = False


class Server:
    def __init__(self, app, host: str, port: int, log: Callable[[str], None]):
        route_waitress_logs(log)
        self._lock, self._stopping = threading.Lock(), False
        self._map: dict = {}
        self._server = create_server(
            error_log(app, log), map=self._map, host=host, port=port, threads=THREADS,
            ident="gpuscope", max_request_body_size=MAX_BODY, expose_tracebacks=False,
            asyncore_use_poll=True)   # select() fails on descriptors >= 1024; BPF holds many
        # A host name with several addresses gives one listener each, in one loop.
        self._one = next(d for d in [self._server, *self._map.values()]
                         if hasattr(d, "trigger"))
        self.server_port = self._one.effective_port

    def serve_forever(self) -> None:
        """Until shutdown(): waitress' loop ends when its map is empty."""
        self._server.run()

    def shutdown(self) -> None:
        """From another thread (not a signal handler: the trigger takes a lock
        the loop may hold): closes every socket inside the loop, which ends it.
        A second call (a second SIGTERM) does nothing."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._one.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))

    def server_close(self) -> None:
        self._stopping = True
        wasyncore.close_all(self._map)
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)


def make_server(host: str, port: int, app, log: Callable[[str], None]) -> Server:
    """Raises OSError when host:port cannot be bound."""
    return Server(app, host, port, log)
