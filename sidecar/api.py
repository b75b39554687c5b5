"""The sidecar's HTTP API (Flask; served by waitress, see wsgiserver.py).

    POST /v1/captures            {"duration_s": N, "include_flight_recorder": bool} -> 201 {id}
    GET  /v1/captures            the captures kept
    GET  /v1/captures/<id>       state (running/done/failed), verdict
    GET  /v1/captures/<id>/trace    the Perfetto trace (409 while running)
    GET  /v1/captures/<id>/summary  summary.json (409 while running)
    GET  /healthz                liveness + what is attached (no token: for the kubelet)
    GET  /metrics                Prometheus text or OpenMetrics, as asked (no token unless metrics_auth)

/v1 needs `Authorization: Bearer <token>`; errors are JSON {"error": ...}
with a 4xx status that says what was wrong.
"""

from __future__ import annotations

import hmac
import json
import os
import re

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file

bp = Blueprint("sidecar_api", __name__)
ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


def _err(status: int, message: str, **extra):
    resp = jsonify({"error": message, **extra})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="gpuscope"'
    return resp


def token_ok(token: str | None) -> bool:
    if token is None:
        return True
    got = request.headers.get("Authorization", "")
    if not got.startswith("Bearer "):
        return False
    return hmac.compare_digest(got[7:].strip().encode(), token.encode())


def _sidecar():
    return current_app.config["SIDECAR"]


@bp.before_request
def _auth():
    if request.endpoint in ("sidecar_api.healthz",):
        return None
    if request.endpoint == "sidecar_api.metrics" and not current_app.config["METRICS_AUTH"]:
        return None
    token = current_app.config["TOKEN"]
    if not token_ok(token):
        if "Authorization" not in request.headers:
            return _err(401, "missing bearer token (Authorization: Bearer <token>)")
        return _err(401, "bad bearer token")
    return None


@bp.get("/healthz")
def healthz():
    s = _sidecar()
    m = s.monitor
    return jsonify({"status": "ok", "attached": m.target is not None, "target_pid": m.target,
                    "processes": sorted(m.processes), "restarts": m.restarts,
                    "error": m.error, "pid_namespace": s.pidns_note})


@bp.get("/metrics")
def metrics():
    s = _sidecar()
    s.monitor._publish()
    body, content_type = s.metrics.exposition(request.headers.get("Accept"))
    return Response(body, mimetype=None, content_type=content_type)


@bp.get("/v1/target")
def target():
    m = _sidecar().monitor
    st = m.stats()
    return jsonify({"pid": m.target, "command": m.command, "processes": sorted(m.processes),
                    "attached_unix_s": m.attached_at, "restarts": m.restarts,
                    "error": m.error, "stats": {"events": st.events, "lost": st.lost},
                    "notices": m.notices()})


@bp.post("/v1/captures")
def create_capture():
    from .captures import CaptureError

    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _err(400, 'body must be a JSON object: {"duration_s": N, '
                    '"include_flight_recorder": false}')
    unknown = set(body) - {"duration_s", "include_flight_recorder"}
    if unknown:
        return _err(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    if "duration_s" not in body:
        return _err(400, "duration_s is required")
    flight = body.get("include_flight_recorder", False)
    if not isinstance(flight, bool):
        return _err(400, "include_flight_recorder must be true or false")
    try:
        job = _sidecar().captures.start(body["duration_s"], flight)
    except CaptureError as e:
        return _err(e.status, str(e))
    resp = jsonify(job.describe())
    resp.status_code = 201
    resp.headers["Location"] = f"/v1/captures/{job.id}"
    return resp


@bp.get("/v1/captures")
def list_captures():
    jobs = sorted(_sidecar().captures.jobs.values(), key=lambda j: j.created_unix_s)
    return jsonify({"captures": [j.describe() for j in jobs]})


def _job(cid: str):
    if not ID.match(cid):
        return None, _err(404, f"no capture {cid!r} (ids look like 20250101-120000-abc123)")
    job = _sidecar().captures.get(cid)
    if job is None:
        return None, _err(404, f"no capture {cid!r} (it never existed or was expired)")
    return job, None


@bp.get("/v1/captures/<cid>")
def get_capture(cid: str):
    job, err = _job(cid)
    return err or jsonify(job.describe())


def _finished(job):
    if job.state == "running":
        return _err(409, f"capture {job.id} is still running", state=job.state)
    if job.state == "failed" and not os.path.exists(job.summary_path):
        return _err(410, f"capture {job.id} failed: {job.error}", state=job.state)
    return None


@bp.get("/v1/captures/<cid>/trace")
def get_trace(cid: str):
    job, err = _job(cid)
    err = err or _finished(job)
    if err:
        return err
    if not os.path.exists(job.trace):
        return _err(410, f"the trace of capture {cid} is gone from disk")
    return send_file(job.trace, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"gpuscope-{cid}.pftrace")


@bp.get("/v1/captures/<cid>/summary")
def get_summary(cid: str):
    job, err = _job(cid)
    err = err or _finished(job)
    if err:
        return err
    try:
        with open(job.summary_path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return _err(410, f"the summary of capture {cid} is gone from disk")
    return jsonify(doc)


@bp.app_errorhandler(404)
def _not_found(e):
    return _err(404, f"no such endpoint: {request.method} {request.path}")


@bp.app_errorhandler(405)
def _not_allowed(e):
    return _err(405, f"{request.method} is not allowed on {request.path}")


def create_app(sidecar, token: str | None, metrics_auth: bool = False) -> Flask:
    """The API app. token None means authentication was explicitly disabled."""
    app = Flask(__name__)
    app.config.update(SIDECAR=sidecar, TOKEN=token, METRICS_AUTH=metrics_auth,
                      MAX_CONTENT_LENGTH=64 * 1024)
    app.register_blueprint(bp)
    return app


def with_viewer(app: Flask, captures_dir: str, token: str | None, log) -> object:
    """Mounts gpuscope's web viewer under /viewer/ when it can be imported; the
    same token is required (header, or ?token= once, which sets a cookie; viewer/auth.py)."""
    try:
        from werkzeug.middleware.dispatcher import DispatcherMiddleware

        from gpuscope.viewer import create_app as viewer_app
        from gpuscope.viewer.auth import guard

        viewer = viewer_app({"DATA_DIR": captures_dir,
                             "CACHE_DIR": os.path.join(captures_dir, ".viewer-cache")})
    except Exception as e:  # not finished, or broken: the API still runs
        log(f"viewer not mounted: {type(e).__name__}: {e}")
        return app.wsgi_app
    return DispatcherMiddleware(app.wsgi_app, {"/viewer": guard(viewer.wsgi_app, token)})
