"""Viewer on a 1M-event trace. Prints, asserting nothing:
- the live index's cost per event: in the collector (TraceWriter alone vs
  with the LiveIndex child, side by side, alternated, best of 3) and in the
  idle-priority indexer child itself;
- time to first paint of the timeline in headless Chromium for a capture
  gpuscope made (its live index, the viewer indexes nothing);
- the index build rate for a foreign trace (the same trace without a live
  index: the viewer reads it), and first paint on its first visit;
- windowed query times, and first paint once the viewer's index exists.
Traces are written by the real writer (TraceWriter + Timeline) from
synthetic events (tests/test_viewer_support.py)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_viewer_support import Server, Synth, launch_chromium, write_trace  # noqa: E402

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
    page = browser.new_page(viewport={"width": 1600, "height": 1000},
                            bypass_csp=True)   # wait_for_function evaluates a string
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


def cpu_s(children: bool = False) -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_cost(path: str, events: int, indexed: bool, offsets: bool) -> tuple[float, float, float, int]:
    """(wall µs, this process's CPU µs, the indexer child's CPU µs per event, events)
    to write a trace of about `events` events."""
    n_io = 33
    t, c = time.perf_counter(), cpu_s()
    syn = Synth(path, offsets=offsets, indexed=indexed)
    for _ in range(max(1, events // (3 * n_io + 1))):
        syn.step(n_io)
        if syn.events % 25_000 < 3 * n_io + 1:   # a capture flushes as it goes
            syn.w.flush()
    syn.tl.close()
    syn.w.close()
    wall, mine = time.perf_counter() - t, cpu_s() - c
    child = 0.0
    if syn.index is not None:
        syn.index.close(wait_s=600)
        child = syn.index.cpu_s or 0.0
    return wall / syn.events * 1e6, mine / syn.events * 1e6, child / syn.events * 1e6, syn.events


def live_cost(d: Path, events: int) -> None:
    """The live index is written by an idle-priority child that follows the
    trace: what it costs the collector, and what the child spends itself."""
    for offsets in (False, True):
        best: dict[bool, tuple] = {}
        for _ in range(3):
            for indexed in (False, True):
                wall, cpu, child, n = write_cost(str(d / "cost.pftrace"), events, indexed, offsets)
                old = best.get(indexed, (wall, cpu, child))
                best[indexed] = (min(old[0], wall), min(old[1], cpu), min(old[2], child))
        what = "every IO read with its own offset" if offsets else "arguments repeating"
        (w0, c0, _), (w1, c1, k1) = best[False], best[True]
        print(f"live index cost ({what}, {n:,} events, best of 3), CPU µs/event: writer alone "
              f"{c0:.2f}, writer with the live index {c1:.2f} in the collector ({c1 - c0:+.2f}); "
              f"the idle-priority indexer child {k1:.2f}; wall µs/event {w0:.2f} vs {w1:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--cost-events", type=int, default=200_000)
    ap.add_argument("--keep", help="directory to keep the traces in")
    args = ap.parse_args()
    d = Path(args.keep or tempfile.mkdtemp(prefix="gpuscope-bench-viewer-"))
    d.mkdir(parents=True, exist_ok=True)
    live_cost(d, args.cost_events)
    (d / "cost.pftrace").unlink()
    shutil.rmtree(d / ".gpuscope-index", ignore_errors=True)

    made, foreign = d / "made", d / "foreign"
    made.mkdir(exist_ok=True)
    foreign.mkdir(exist_ok=True)
    trace = foreign / "big.pftrace"
    n_io = 33                       # events per step = 2 * n_io + n_io + 1 (+ a stall every 5)
    steps = max(1, args.events // (3 * n_io + 1))
    t = time.perf_counter()
    s = write_trace(str(made / "big.pftrace"), steps=steps, n_io=n_io, indexed=True)
    print(f"capture: {s.events:,} events (slices + counter samples), "
          f"{os.path.getsize(made / 'big.pftrace') / 1e6:.1f} MB, written with its live index in "
          f"{time.perf_counter() - t:.1f} s")
    shutil.copyfile(made / "big.pftrace", trace)   # the same trace, without its index

    cache = d / "cache"
    t, c, cc = time.perf_counter(), cpu_s(), cpu_s(children=True)
    ix = Index(str(trace), str(cache / "big.sqlite"))
    ix.refresh(wait=True)
    build = time.perf_counter() - t
    cpu, child = cpu_s() - c, cpu_s(children=True) - cc
    m = ix.meta()
    print(f"index build, foreign trace: {build:.2f} s = {s.events / build:,.0f} events/s "
          f"({m['packets'] / build:,.0f} packets/s; {m['packets']:,} packets, "
          f"{os.path.getsize(cache / 'big.sqlite') / 1e6:.0f} MB index); CPU: "
          f"{cpu:.2f} s viewer + {child:.2f} s reader process = "
          f"{s.events / max(cpu, child):,.0f} events/s if each had a core of its own")
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

    warm = Server(create_app({"DATA_DIR": str(foreign), "CACHE_DIR": str(cache)}))
    cold = Server(create_app({"DATA_DIR": str(foreign), "CACHE_DIR": str(d / "cache-cold")}))
    live = Server(create_app({"DATA_DIR": str(made), "CACHE_DIR": str(d / "cache-made")}))
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            first_paint(browser, warm.url + "/s/big")   # browser warm-up
            ms, drawn = first_paint(browser, live.url + "/s/big")
            built = os.listdir(d / "cache-made") if (d / "cache-made").exists() else []
            print(f"first paint of the timeline, capture made by gpuscope (its live index): "
                  f"{ms:.0f} ms after navigation ({drawn:,} slices/blocks drawn; "
                  f"the viewer indexed {'nothing' if not built else built})")
            ms, drawn = first_paint(browser, warm.url + "/s/big")
            print(f"first paint of the timeline, foreign trace, index built: {ms:.0f} ms "
                  f"({drawn:,} slices/blocks drawn)")
            ms, _ = first_paint(browser, cold.url + "/s/big")
            print(f"first paint of the timeline, foreign trace, first visit (builds the index): "
                  f"{ms:.0f} ms")
            lat = zoom_latency(browser, warm.url + "/s/big")
            print("W held 0.3 s, release to redrawn data (ms): " + ", ".join(f"{x:.0f}" for x in lat))
            browser.close()
    finally:
        warm.close()
        cold.close()
        live.close()
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
