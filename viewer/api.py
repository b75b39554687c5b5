"""JSON API: what the session page's scripts fetch. Every answer is built from
the trace index; the browser never receives the whole trace (except from
/trace, which is the file itself, for download and for the Perfetto UI)."""

from __future__ import annotations

import sqlite3

from flask import Blueprint, abort, jsonify, request, send_file

from . import query, report
from .store import get_store
from .tracefile import check

bp = Blueprint("api", __name__, url_prefix="/api")
_I64 = 1 << 63


@bp.errorhandler(404)
def not_found(e):
    return jsonify(error=getattr(e, "description", "not found")), 404


@bp.errorhandler(400)
def bad_request(e):
    return jsonify(error=getattr(e, "description", "bad request")), 400


def _capture(name: str):
    cap = get_store().capture(name)
    if cap is None:
        abort(404, description="no such capture")
    return cap


def _index(cap):
    """The capture's index, built first if no request has built it yet (a
    query may come before the page's first /meta)."""
    ix = get_store().index(cap)
    if not ix.meta():
        ix.refresh()
    return ix


@bp.errorhandler(sqlite3.Error)
def index_unreadable(e):
    return jsonify(error=f"the capture's index cannot be read ({e}): it may still be "
                   "building; retry once /meta says it is built"), 503


def _int(name: str, default=None) -> int:
    v = request.args.get(name)
    if v is None:
        if default is None:
            abort(400, description=f"missing parameter {name}")
        return default
    try:
        n = int(float(v))
    except (ValueError, OverflowError):   # "x", nan; inf
        abort(400, description=f"{name} must be a finite number")
    return max(-_I64, min(n, _I64 - 1))   # SQLite's integers


def capture_json(cap) -> dict:
    v = cap.verdict
    return {"name": cap.name, "state": cap.state, "live": cap.live, "size": cap.size,
            "target": cap.target, "pid": cap.pid, "started": cap.started,
            "duration": cap.duration, "input_bound": v.get("input_bound"),
            "headline": v.get("headline")}


@bp.get("/sessions")
def sessions_list():
    return jsonify(sessions=[capture_json(c) for c in get_store().captures()])


@bp.get("/s/<name>/meta")
def meta(name):
    """Index state, time range and track tree; refreshes the index first (a
    live trace is read on from where the last request stopped)."""
    cap = _capture(name)
    err = check(cap.trace)
    if err:
        return jsonify(error=err, capture=capture_json(cap)), 422
    ix = get_store().index(cap)
    ix.refresh()
    m = ix.meta()
    building = ix.building()
    out = {"capture": capture_json(cap), "building": building,
           "progress": ix.progress if building else None,
           "size": cap.size, "indexed": m.get("offset", 0), "t_min": m.get("t_min"),
           "t_max": m.get("t_max"), "packets": m.get("packets", 0), "error": m.get("error"),
           "real0": m.get("real0"), "mono0": m.get("mono0")}
    if not building and m:
        out["tracks"] = query.tracks(ix.reader())
    return jsonify(out)


@bp.get("/s/<name>/window")
def window(name):
    cap = _capture(name)
    t0, t1 = _int("t0"), _int("t1")
    if t1 <= t0:
        abort(400, description="t1 must be after t0")
    try:
        tracks = [int(t) for t in request.args.get("tracks", "").split(",") if t]
    except ValueError:
        abort(400, description="tracks must be a comma-separated list of track ids")
    return jsonify(query.window(_index(cap).reader(), t0, t1, _int("px", 1000), tracks))


@bp.get("/s/<name>/slice/<int:sid>")
def slice_detail(name, sid):
    cap = _capture(name)
    d = query.slice_detail(_index(cap).reader(), sid) if sid < _I64 else None
    if d is None:
        abort(404, description="no such slice")
    return jsonify(d)


@bp.get("/s/<name>/search")
def search(name):
    cap = _capture(name)
    q = request.args.get("q", "")[:200]
    after = _int("after") if request.args.get("after") else None
    limit = _int("limit", 100)
    return jsonify(query.search(_index(cap).reader(), q, after, limit))


@bp.get("/s/<name>/report")
def report_data(name):
    """Verdict charts that need the trace: GPU utilisation, stall intervals."""
    cap = _capture(name)
    ix = get_store().index(cap)
    ix.refresh()
    if ix.building():
        return jsonify(building=True), 202
    return jsonify(report.from_index(ix.reader(), ix.meta()))


@bp.get("/s/<name>/trace")
def trace(name):
    cap = _capture(name)
    return send_file(cap.trace, mimetype="application/octet-stream", as_attachment=True,
                     download_name=cap.name + ".pftrace", max_age=0)
