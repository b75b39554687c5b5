"""The viewer's token guard, for the sidecar's /viewer/ and `gpuscope view`
on a non-loopback address: the token as a bearer header, or once as
?token=, which sets a cookie and redirects to the same URL without it.

The cookie holds a key derived from the token (HMAC-SHA256), never the
token itself: a leaked cookie opens the viewer only, not the sidecar's API,
and cannot be turned back into the token."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re

COOKIE = "gpuscope_viewer"
TOKEN_IN_TEXT = re.compile(r"(?i)(token(?:=|%3D))[^&;\s\"']*")


def redact(text: str) -> str:
    """Any `token=...` in a line of text replaced: request lines are logged."""
    return TOKEN_IN_TEXT.sub(r"\1[redacted]", text)


def quiet_handler():
    """werkzeug's request handler (`gpuscope view`) with tokens redacted from its log."""
    from werkzeug.serving import WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        def log(self, type: str, message: str, *args) -> None:
            super().log(type, "%s", redact(message % args))

    return Handler


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"gpuscope viewer cookie v1", hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def guard(wsgi, token: str | None):
    """`wsgi`, answering 401 unless the request carries `token` (None: no guard)."""
    if token is None:
        return wsgi
    from werkzeug.wrappers import Request, Response

    key = cookie_value(token)

    def app(environ, start_response):
        req = Request(environ)
        given = req.args.get("token")
        if given and _same(given, token):
            resp = Response(status=303, headers={"Location": req.base_url})
            resp.set_cookie(COOKIE, key, httponly=True, samesite="Strict",
                            path=environ.get("SCRIPT_NAME", "/") or "/")
            return resp(environ, start_response)
        auth = req.headers.get("Authorization", "")
        cookie = req.cookies.get(COOKIE, "")
        if (auth.startswith("Bearer ") and _same(auth[7:].strip(), token)) or \
                (cookie and _same(cookie, key)):
            return wsgi(environ, start_response)
        resp = Response("viewer: open this URL once with ?token=<token> added, or send "
                        "Authorization: Bearer <token>\n", status=401,
                        headers={"WWW-Authenticate": 'Bearer realm="gpuscope"'})
        return resp(environ, start_response)

    return app


def read_token(token_file: str | None) -> str | None:
    """The token from token_file, else from GPUSCOPE_TOKEN; None if neither.
    OSError for an unreadable file, ValueError for an empty one."""
    if token_file:
        with open(token_file) as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f"{token_file} is empty")
        return token
    return os.environ.get("GPUSCOPE_TOKEN", "").strip() or None


def is_loopback(host: str) -> bool:
    """Only this machine can reach host (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False   # a name: it may resolve to any address


def given_token(token_file: str | None) -> str | None:
    """read_token, with a bad --token-file as a one-line usage error (`view` and
    the sidecar say the same)."""
    from gpuscope.collector.errors import EXIT_USAGE, CliError

    try:
        return read_token(token_file)
    except OSError as e:
        raise CliError(f"cannot read --token-file {token_file}: {e.strerror}",
                       EXIT_USAGE) from None
    except ValueError:
        raise CliError(f"--token-file {token_file} is empty", EXIT_USAGE) from None
