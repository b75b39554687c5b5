"""Viewer on a 1M-event trace: index build time, windowed query times, and
time to first paint of the timeline in headless Chromium (index already
built, and cold: first visit builds the index). Prints figures; asserts
nothing. The trace is written by the real writer (TraceWriter + Timeline)
from synthetic events (tests/test_viewer_support.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_viewer_support import Server, launch_chromium, write_trace  # noqa: E402

from gpuscope.viewer import create_app, query  # noqa: E402
from gpuscope.viewer.index import Index  # noqa: E402


def first_paint(browser, url: str) -> tuple[float, int]:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url)
    page.wait_for_selector("body[data-timeline-painted]", timeout=300_000)
    ms = float(page.get_attribute("body", "data-timeline-painted"))
    drawn = int(page.get_attribute("#tl-canvas", "data-drawn") or 0)
    page.close()
    return ms, drawn


def zoom_latency(browser, url: str, presses: int = 6) -> list[float]:
    """ms from releasing W (held 0.3 s: the window shrinks ~2x) until the canvas
    shows data fetched for the new window."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url)
    page.wait_for_selector("body[data-timeline-painted]", timeout=300_000)
    page.evaluate("document.querySelector('#timeline-section').scrollIntoView()")
    out = []
    for _ in range(presses):
        seq = page.evaluate("gpuscopeTimeline.appliedSeq")
        page.keyboard.down("w")
        time.sleep(0.3)
        page.keyboard.up("w")
        t = time.perf_counter()
        page.wait_for_function(f"gpuscopeTimeline.appliedSeq > {seq}", timeout=60_000)
        out.append((time.perf_counter() - t) * 1000)
    page.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", help="directory to keep the trace in")
    args = ap.parse_args()
    d = Path(args.keep or tempfile.mkdtemp(prefix="gpuscope-bench-viewer-"))
    d.mkdir(parents=True, exist_ok=True)
    trace = d / "big.pftrace"
    n_io = 33                       # events per step = 2 * n_io + n_io + 1 (+ a stall every 5)
    steps = max(1, args.events // (3 * n_io + 1))
    t = time.perf_counter()
    s = write_trace(str(trace), steps=steps, n_io=n_io)
    print(f"trace: {s.events:,} events (slices + counter samples), {os.path.getsize(trace) / 1e6:.1f} MB, "
          f"written in {time.perf_counter() - t:.1f} s")

    cache = d / "cache"
    t = time.perf_counter()
    ix = Index(str(trace), str(cache / "big.sqlite"))
    ix.refresh(wait=True)
    build = time.perf_counter() - t
    m = ix.meta()
    print(f"index build: {build:.2f} s ({m['packets']:,} packets, "
          f"{os.path.getsize(cache / 'big.sqlite') / 1e6:.0f} MB index)")

    db = ix.reader()
    tracks = [t["uuid"] for t in query.tracks(db)]
    span = m["t_max"] - m["t_min"]
    for frac in (1.0, 0.1, 0.01, 0.001):
        t0 = m["t_min"] + int(span * (0.5 - frac / 2))
        t1 = t0 + int(span * frac)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            w = query.window(db, t0, t1, 3000, tracks)
            times.append(time.perf_counter() - t)
        items = sum(len(x.get("s", [])) + len(x.get("b", [])) for x in w["tracks"].values())
        print(f"window query {frac * 100:6.1f}% of trace at 3000 px: {min(times) * 1000:6.1f} ms, "
              f"{items:,} items, {len(json.dumps(w)) / 1e3:.0f} KB")

    from playwright.sync_api import sync_playwright

    warm = Server(create_app({"DATA_DIR": str(d), "CACHE_DIR": str(cache)}))
    cold = Server(create_app({"DATA_DIR": str(d), "CACHE_DIR": str(d / "cache-cold")}))
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            first_paint(browser, warm.url + "/s/big")   # browser warm-up
            ms, drawn = first_paint(browser, warm.url + "/s/big")
            print(f"first paint of the timeline, index built: {ms:.0f} ms after navigation "
                  f"({drawn:,} slices/blocks drawn)")
            ms, _ = first_paint(browser, cold.url + "/s/big")
            print(f"first paint of the timeline, first visit (builds the index): {ms:.0f} ms")
            lat = zoom_latency(browser, warm.url + "/s/big")
            print("W held 0.3 s, release to redrawn data (ms): " + ", ".join(f"{x:.0f}" for x in lat))
            browser.close()
    finally:
        warm.close()
        cold.close()
    if not args.keep:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
