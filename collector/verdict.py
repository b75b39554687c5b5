"""The verdict in words and on the timeline: the terminal report and the
Verdict track's events, both from the stall analysis' result."""

from __future__ import annotations

from gpuscope.probes.events import VERDICT, Instant, Span


def verdict_events(analysis, result: dict) -> list:
    """Stall intervals as slices, findings as instants, on the global Verdict track;
    each DDP rank's identity on its process track."""
    from .ranks import rank_events

    v = result.get("verdict", {})
    out: list[Span | Instant] = [Span(VERDICT, "waiting for data", 0, 0, a, b)
                                 for a, b in analysis.stall_intervals()]
    window = v.get("window_ns") or [analysis.first_ts, analysis.last_ts]
    for f in v.get("findings", []):
        args = {"title": f["title"], "severity": f["severity"], "fix": f["fix"]}
        args.update({k: v for k, v in f["numbers"].items() if isinstance(v, (int, float, str))})
        out.append(Instant(VERDICT, f["kind"], 0, 0, window[0], args))
    out += rank_events(result)
    out.sort(key=lambda e: e.ts)
    return out


def render(summary: dict) -> str:
    """The report printed at the end of a capture and by `gpuscope report`."""
    v = summary.get("verdict")
    if not v:
        return "verdict: no analysis in this summary\n"
    lines = [f"verdict: {v['headline']}"]
    if v.get("data_wait_share") is not None:
        b = v.get("breakdown", {})
        parts = ", ".join(f"{k.replace('_', ' ')} {x:.0%}" for k, x in sorted(b.items(), key=lambda kv: -kv[1]))
        lines.append(f"  {len(summary.get('steps', []))} steps, median {v['step_ms_median']} ms; "
                     f"step time: {parts} (step model confidence: {v['confidence']})")
        if v.get("confidence_basis"):
            lines.append(f"  steps from {v['steps_from']}; {v['confidence_basis']}")
        lines.append(f"  DataLoader workers seen: {v['workers']}, CPU cores: {v['cores']}")
    for f in v.get("findings", []):
        lines.append(f"  [{f['severity']}] {f['title']}")
        for e in f["evidence"]:
            lines.append(f"      - {e}")
        lines.append(f"      fix: {f['fix']}")
    ranks = summary.get("ranks") or []
    if ranks:
        lines.append(f"  ranks ({len(ranks)}):")
    for r in ranks:
        rv = r["verdict"]
        who = f"rank {r['rank']}" if r["rank"] is not None else "rank ?"
        if rv["data_wait_share"] is None:
            lines.append(f"      - {who} (PID {r['pid']}): {rv['headline']}")
            continue
        lines.append(f"      - {who} (PID {r['pid']}): {rv['steps']} steps, median {rv['step_ms_median']} ms; "
                     f"data wait {rv['data_wait_share']:.0%}, compute {rv['compute_share']:.0%}, "
                     f"collectives {rv['comm_share'] + rv['sync_share']:.0%} — {rv['headline']}")
    sz = v.get("sizing")
    if sz:
        lines.append("  sizing:")
        lines += [f"      - {x}" for x in sz["lines"]]
    files = summary.get("top_files") or []
    if files and v.get("input_bound") not in (None, "no", "unknown"):
        lines.append("  top files by read time: " + ", ".join(
            f"{f['path']} ({f['latency_ms']} ms)" for f in files[:3]))
    return "\n".join(lines) + "\n"
