"""The verdict as data for pictures: what summary.json says (verdict,
steps, stall frames, top files), normalised so a missing or odd field is
shown as absent rather than breaking the page; and what only the trace
holds (GPU utilisation counters, stall intervals on the verdict track)."""

from __future__ import annotations

import re

from . import query

GPU_UTIL = r"(?i)^gpu\s*\d+.*util"
STEP_PARTS = ("data_wait_ns", "compute_ns", "sync_ns", "comm_ns", "other_ns")
SEVERITIES = ("high", "medium", "low", "info")


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _str(v, limit: int = 2000) -> str:
    return v[:limit] if isinstance(v, str) else ""


def verdict(summary: dict) -> dict | None:
    v = summary.get("verdict")
    if not isinstance(v, dict):
        return None
    findings = []
    for f in _list(v.get("findings")):
        if not isinstance(f, dict):
            continue
        numbers = _dict(f.get("numbers"))
        findings.append({
            "kind": _str(f.get("kind"), 100), "title": _str(f.get("title")),
            "severity": f.get("severity") if f.get("severity") in SEVERITIES else "info",
            "numbers": {str(k)[:100]: (x if isinstance(x, (int, float, str)) else str(x))
                        for k, x in list(numbers.items())[:30]},
            "evidence": [_str(e) for e in _list(f.get("evidence"))[:30] if isinstance(e, str)],
            "fix": _str(f.get("fix"))})
    share = _num(v.get("data_wait_share"))
    return {"input_bound": slug(_str(v.get("input_bound"), 20)) or None,
            "data_wait_share": share, "headline": _str(v.get("headline")),
            "confidence": _str(v.get("confidence"), 20), "findings": findings}


def steps(summary: dict, limit: int = 2000) -> list[dict]:
    out = []
    for s in _list(summary.get("steps"))[:limit]:
        if not isinstance(s, dict):
            continue
        row = {"index": _num(s.get("index")), "start_ns": _num(s.get("start_ns")),
               "end_ns": _num(s.get("end_ns"))}
        row.update({k: _num(s.get(k)) or 0.0 for k in STEP_PARTS})
        out.append(row)
    return out


def flame(summary: dict, max_nodes: int = 3000) -> dict | None:
    """stall_frames as a tree {name, value, children}, outermost frame at the root."""
    frames = _list(summary.get("stall_frames"))
    if not frames:
        return None
    root: dict = {"name": "all stall samples", "value": 0, "children": {}}
    nodes = 1
    for f in frames:
        if not isinstance(f, dict) or not isinstance(f.get("stack"), list):
            continue
        n = _num(f.get("samples")) or 0
        root["value"] += n
        node = root
        for fr in f["stack"][:200]:
            key = _str(fr, 500)
            child = node["children"].get(key)
            if child is None:
                if nodes >= max_nodes:
                    break
                child = node["children"][key] = {"name": key, "value": 0, "children": {}}
                nodes += 1
            child["value"] += n
            node = child

    def lists(node):
        kids = sorted(node["children"].values(), key=lambda c: -c["value"])
        return {"name": node["name"], "value": node["value"], "children": [lists(c) for c in kids]}

    return lists(root) if root["value"] else None


def top_files(summary: dict, limit: int = 50) -> list[dict]:
    out = []
    for f in _list(summary.get("top_files"))[:limit]:
        if isinstance(f, dict):
            out.append({"path": _str(f.get("path")), "bytes": _num(f.get("bytes")),
                        "reads": _num(f.get("reads")), "latency_ms": _num(f.get("latency_ms"))})
    return out


def from_summary(summary: dict | None) -> dict:
    s = summary if isinstance(summary, dict) else {}
    lost = _dict(s.get("lost"))
    return {"verdict": verdict(s), "steps": steps(s), "flame": flame(s),
            "top_files": top_files(s), "stop_reason": _str(s.get("stop_reason"), 100),
            "lost": sum(x for x in lost.values() if _num(x)) if s else None,
            "notices": [_str(n) for n in _list(s.get("notices")) if isinstance(n, str)]}


def from_index(db, meta: dict, buckets: int = 600) -> dict:
    t_min, t_max = meta.get("t_min"), meta.get("t_max")
    out: dict = {"t_min": t_min, "t_max": t_max, "gpu": [], "stalls": []}
    if t_min is None or t_max is None or t_max <= t_min:
        return out
    npx = max(1, (t_max - t_min) // buckets)
    for uuid, name, unit in query.counter_tracks_named(db, GPU_UTIL):
        out["gpu"].append({"track": uuid, "name": name, "unit": unit,
                           "points": query.counters(db, uuid, t_min, t_max, npx)})
    out["stalls"] = query.slices_on_tracks_named(db, "verdict")
    return out


def fmt_bytes(n) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def fmt_duration(s) -> str:
    if not isinstance(s, (int, float)):
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60)} s"


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9-]", "", s.lower())[:40]
