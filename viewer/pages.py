"""HTML pages: the list of captures and one capture's page (verdict first,
then the timeline). Everything from a trace or a summary reaches the page
through Jinja's autoescaping or as JSON that scripts render with textContent."""

from __future__ import annotations

import time

from flask import Blueprint, abort, current_app, render_template, send_file

from . import report
from .store import get_store
from .tracefile import check

bp = Blueprint("pages", __name__, template_folder="templates")

# Scripts only from this server, no inline script: even a string that escaped
# escaping could not run.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@bp.after_app_request
def _headers(resp):
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp


@bp.app_template_filter("bytes")
def _bytes(n):
    return report.fmt_bytes(n)


@bp.app_template_filter("duration")
def _duration(s):
    return report.fmt_duration(s)


@bp.app_template_filter("when")
def _when(t):
    if not isinstance(t, (int, float)):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@bp.app_errorhandler(404)
def not_found(e):
    return render_template("pages/error.html", title="Not found",
                           message=getattr(e, "description", "Not found.")), 404


@bp.app_errorhandler(500)
def server_error(e):
    return render_template("pages/error.html", title="Something went wrong",
                           message="The viewer failed on this request; the server log has "
                                   "the details."), 500


@bp.get("/")
def index():
    return render_template("pages/sessions.html", captures=get_store().captures(),
                           directory=get_store().directory,
                           poll_ms=current_app.config["POLL_MS"])


@bp.get("/s/<name>")
def session(name):
    cap = get_store().capture(name)
    if cap is None:
        abort(404, description=f"There is no capture called “{name}” in this directory.")
    err = check(cap.trace)
    if err:
        return render_template("pages/error.html", title="This trace cannot be shown",
                               message=err, capture=cap), 422
    return render_template("pages/session.html", cap=cap, report=report.from_summary(cap.summary),
                           poll_ms=current_app.config["POLL_MS"])


@bp.get("/s/<name>/download")
def download(name):
    cap = get_store().capture(name)
    if cap is None:
        abort(404, description="no such capture")
    return send_file(cap.trace, mimetype="application/octet-stream", as_attachment=True,
                     download_name=cap.name + ".pftrace", max_age=0)
