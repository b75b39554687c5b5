"""The viewer in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright) against the real Flask app on 127.0.0.1: captures list, verdict,
tracks drawn (DOM and pixels), zoom/pan/selection/search, a live capture
growing, hostile names. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from test_viewer_support import (
    HOSTILE,
    LiveWriter,
    Server,
    canvas_ink,
    launch_chromium,
    write_summary,
    write_trace,
)

from gpuscope.viewer import create_app

pytest.importorskip("playwright")
if not os.path.exists("/usr/bin/chromium"):
    pytest.skip("Debian chromium is not installed (scripts/setup.sh installs it)",
                allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LABEL_W = 240   # timeline.js: the label column; tracks are drawn right of it
JOB = """
import os, time
def load_batch(paths):
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            n += len(f.read())
    return n
def train(d):
    paths = []
    for i in range(6):
        p = os.path.join(d, f"shard{i}.bin")
        with open(p, "wb") as f:
            f.write(os.urandom(65536))
        paths.append(p)
    end = time.time() + 1.5
    while time.time() < end:
        load_batch(paths)
        time.sleep(0.01)
train(os.path.dirname(os.path.abspath(__file__)))
"""


@pytest.fixture(scope="module")
def capdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("browse")
    write_trace(str(d / "synth.pftrace"), steps=80, n_io=20)
    write_summary(str(d / "synth.pftrace"))
    write_trace(str(d / "evil.pftrace"), steps=5, hostile=True)
    write_summary(str(d / "evil.pftrace"), hostile=True)
    return d


@pytest.fixture(scope="module")
def real_capture(capdir, tmp_path_factory):
    """A real capture: `gpuscope run` of a small Python job that reads files."""
    work = tmp_path_factory.mktemp("job")
    (work / "job.py").write_text(JOB)
    import subprocess

    r = subprocess.run([sys.executable, "-m", "gpuscope.collector.cli", "run", "-q",
                        "-o", str(capdir / "real.pftrace"), "--", "/usr/bin/python3",
                        str(work / "job.py")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (capdir / "real.summary.json").exists()
    return "real"


@pytest.fixture(scope="module")
def server(capdir, tmp_path_factory):
    app = create_app({"DATA_DIR": str(capdir), "CACHE_DIR": str(tmp_path_factory.mktemp("c")),
                      "POLL_MS": 250})
    s = Server(app)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    # bypass_csp: Playwright's wait_for_function needs eval; it also means the
    # hostile-name test checks the escaping itself, without the CSP safety net.
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    pg = ctx.new_page()
    pg.dialogs = []
    pg.errors = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    ctx.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_session(page, server, name: str) -> None:
    page.goto(f"{server.url}/s/{name}")
    page.wait_for_selector("body[data-timeline-painted]", timeout=30000)
    page.wait_for_function("document.querySelector('#tl-canvas').dataset.drawn > 0")


def view(page) -> dict:
    return page.evaluate("({t0: gpuscopeTimeline.view.t0, t1: gpuscopeTimeline.view.t1})")


def test_sessions_page_lists_captures(page, server, real_capture):
    page.goto(server.url + "/")
    rows = page.locator("#sessions tbody tr")
    names = {rows.nth(i).get_attribute("data-name") for i in range(rows.count())}
    assert {"synth", "evil", real_capture} <= names
    synth = page.locator('tr[data-name="synth"]')
    assert "input-bound" in synth.inner_text()
    assert "finished" in synth.inner_text()
    assert "/usr/bin/python3" in page.locator(f'tr[data-name="{real_capture}"]').inner_text()
    shot(page, "sessions")
    page.click('tr[data-name="synth"] a')
    page.wait_for_url("**/s/synth")


def test_session_shows_verdict_then_timeline(page, server):
    open_session(page, server, "synth")
    assert "42%" in page.inner_text("#data-wait-share")
    assert "GPU waits for data" in page.inner_text("#headline")
    assert page.locator(".finding").count() == 1
    assert "Raise num_workers to 8" in page.inner_text(".finding .fix")
    assert page.get_attribute("#steps-chart", "data-bars") == "20"
    assert canvas_ink(page, "#steps-chart") > 0.05
    page.wait_for_selector("#gpu-chart[data-series='1']")
    assert int(page.get_attribute("#gpu-chart", "data-stalls")) == 16
    assert canvas_ink(page, "#gpu-chart") > 0.02
    assert page.locator("#flame .fnode").count() == 5
    assert "/data/shard-1.bin" in page.inner_text("#top-files")
    # verdict above timeline
    vy = page.locator("#verdict").bounding_box()["y"]
    assert vy < page.locator("#tl-canvas").bounding_box()["y"]
    # tracks: DOM (track count) and pixels right of the labels
    tracks = page.evaluate("gpuscopeTimeline.rows.map(r => [r.t.kind, r.t.name])")
    kinds = {k for k, _ in tracks}
    names = {n for _, n in tracks}
    assert {"process", "thread", "child", "counter", "global"} <= kinds
    assert {"verdict", "IO", "CUDA", "Python", "GPU0 utilization", "pt_data_worker"} <= names
    assert tracks[0] == ["global", "verdict"]
    assert canvas_ink(page, "#tl-canvas", LABEL_W + 1, 30) > 0.03
    page.locator("#timeline-section").scroll_into_view_if_needed()
    shot(page, "session-synth")
    assert not page.errors


def test_real_capture_page(page, server, real_capture):
    open_session(page, server, real_capture)
    names = set(page.evaluate("gpuscopeTimeline.rows.map(r => r.t.name)"))
    assert {"IO", "python3"} <= names
    assert canvas_ink(page, "#tl-canvas", LABEL_W + 1, 30) > 0.01
    # find the shard reads by search and open one
    page.fill("#search", "read")
    page.press("#search", "Enter")
    page.wait_for_selector("#details-table")
    args = page.inner_text("#details-args")
    assert "path" in args and "bytes" in args
    shot(page, "session-real")
    assert not page.errors


def slice_point(page, name: str | None = None, min_w: float = 6):
    """Canvas-relative centre of a drawn slice (from the data the page holds)."""
    return page.evaluate("""([name, minW]) => {
        const tl = gpuscopeTimeline, top = tl.scroll.scrollTop;
        for (const row of tl.rows) {
            const d = tl.data.tracks[String(row.t.uuid)];
            if (!d || !d.s) continue;
            for (const s of d.s) {
                const nm = tl.names.get(s[4]);
                if (name && nm !== name) continue;
                const a = tl.data.base + s[1], b = s[2] == null ? tl.tMax : a + s[2];
                const x0 = Math.max(tl.x(a), 241), x1 = Math.min(tl.x(b), tl.size.w - 2);
                const y = row.y - top + 3 + s[3] * 16 + 8;
                if (x1 - x0 >= minW && y > 30 && y < tl.size.h - 10)
                    return {x: (x0 + x1) / 2, y: y, id: s[0], name: nm};
            }
        }
        return null;
    }""", [name, min_w])


def test_zoom_pan_select_search(page, server):
    open_session(page, server, "synth")
    page.evaluate("document.querySelector('#timeline-section').scrollIntoView()")
    canvas = page.locator("#tl-canvas")
    box = canvas.bounding_box()
    page.locator("#tl-scroll").focus()
    v0 = view(page)
    page.mouse.move(box["x"] + 700, box["y"] + 200)
    page.keyboard.down("w")
    time.sleep(0.4)
    page.keyboard.up("w")
    v1 = view(page)
    assert v1["t1"] - v1["t0"] < (v0["t1"] - v0["t0"]) * 0.6
    page.keyboard.press("s")
    v2 = view(page)
    assert v2["t1"] - v2["t0"] > v1["t1"] - v1["t0"]
    page.keyboard.press("d")
    v3 = view(page)
    assert v3["t0"] > v2["t0"] and abs((v3["t1"] - v3["t0"]) - (v2["t1"] - v2["t0"])) < 10
    page.keyboard.press("a")
    assert view(page)["t0"] < v3["t0"]
    # Ctrl+wheel zooms in around the pointer; a drag pans
    before = view(page)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -400)
    page.keyboard.up("Control")
    page.wait_for_function(f"gpuscopeTimeline.view.t1 - gpuscopeTimeline.view.t0 < "
                           f"{(before['t1'] - before['t0']) * 0.9}")
    before = view(page)
    page.mouse.move(box["x"] + 800, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 600, box["y"] + 300, steps=5)
    page.mouse.up()
    after = view(page)
    assert after["t0"] > before["t0"]
    assert abs((after["t1"] - after["t0"]) - (before["t1"] - before["t0"])) < 10
    # zoom in on the data until CUDA slices are drawn one by one, then click one
    page.click("#zoom-reset")
    for _ in range(40):
        page.wait_for_timeout(60)
        p = slice_point(page, "cudaLaunchKernel")
        if p:
            break
        page.keyboard.press("w")
    assert p, "no cudaLaunchKernel slice wide enough to click"
    page.wait_for_timeout(150)
    p = slice_point(page, "cudaLaunchKernel")
    page.mouse.click(box["x"] + p["x"], box["y"] + p["y"])
    page.wait_for_selector("#details-name")
    assert page.inner_text("#details-name") == "cudaLaunchKernel"
    assert page.get_attribute("#tl-canvas", "data-selected") == str(p["id"])
    assert "train_step (train.py:12)" in page.inner_text("#details-table")
    assert "gemm" in page.inner_text("#details-args")
    shot(page, "selected")
    # search by name goes to the first match and selects it
    page.fill("#search", "train_step")
    page.press("#search", "Enter")
    page.wait_for_function("document.querySelector('#search-status').textContent.includes('/')")
    assert page.inner_text("#search-status").startswith("1 / ")
    page.wait_for_function("document.querySelector('#details-name') && "
                           "document.querySelector('#details-name').textContent === 'train_step'")
    assert "train.py:12" in page.inner_text("#details-table")
    page.click("#search-next")
    page.wait_for_function("document.querySelector('#search-status').textContent.startsWith('2 / ')")
    assert not page.errors


def test_hostile_names_not_executed(page, server):
    open_session(page, server, "evil")
    page.wait_for_selector("#gpu-chart[data-series='1']")
    assert page.locator("img[src=x]").count() == 0
    assert HOSTILE in page.inner_text("#headline")          # shown as text
    assert HOSTILE in page.inner_text("#flame")
    assert HOSTILE in page.inner_text("#top-files")
    assert HOSTILE in page.evaluate("gpuscopeTimeline.tracks.map(t => t.name)")
    page.fill("#search", "<img")
    page.press("#search", "Enter")
    page.wait_for_selector("#details-name")
    assert page.inner_text("#details-name") == HOSTILE
    page.goto(server.url + "/")
    page.wait_for_timeout(2500)   # the list refreshes itself through the DOM too
    assert page.locator("img[src=x]").count() == 0
    assert HOSTILE in page.inner_text('tr[data-name="evil"]')
    assert page.dialogs == [] and not page.errors


def test_live_capture_grows(page, server, capdir):
    writer = LiveWriter(str(capdir / "live.pftrace"), seconds=8, steps_per_s=10)
    writer.start()
    try:
        time.sleep(0.5)
        page.goto(server.url + "/")
        assert "live" in page.inner_text('tr[data-name="live"]')
        open_session(page, server, "live")
        assert page.is_visible("#state-badge")
        first = page.evaluate("[gpuscopeTimeline.tMax, gpuscopeTimeline.view.t1]")
        ink0 = canvas_ink(page, "#tl-canvas", LABEL_W + 1, 30)
        shot(page, "live-1")
        time.sleep(2.5)
        later = page.evaluate("[gpuscopeTimeline.tMax, gpuscopeTimeline.view.t1]")
        assert later[0] > first[0], "the page did not follow the growing trace"
        assert later[1] == later[0], "the view did not follow the end of the trace"
        t = time.monotonic()   # new data shows within about a second
        page.wait_for_function(f"gpuscopeTimeline.tMax > {later[0]}", timeout=3000)
        assert time.monotonic() - t < 1.5
        assert canvas_ink(page, "#tl-canvas", LABEL_W + 1, 30) > 0.5 * ink0
        shot(page, "live-2")
    finally:
        writer.stop.set()
        writer.join()
    assert not page.errors
