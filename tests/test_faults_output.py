"""The trace's file failing in the middle of a capture: the disk filling up,
the output directory removed, a device given as the output. The capture
stops cleanly, keeps what was written (readable, and `report` says it is
truncated), writes the summary when it can, and says what happened in one
last line with what to do."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from faults import Ticker, last_line, one_line, run

from gpuscope.collector.tracereader import read

from conftest import Gpuscope


@pytest.fixture(scope="module")
def ticker(tmp_path_factory):
    t = Ticker(tmp_path_factory.mktemp("ticker") / "ticks.log")
    yield t
    t.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs with only ~48 KiB left free."""
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        with open(d / "filler", "wb") as f:
            f.write(b"\0" * ((1 << 20) - (48 << 10)))
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def packets(path) -> int:
    return sum(len(recs) for _, recs in read(str(path)))


def test_disk_full_stops_the_capture_and_keeps_what_was_written(ticker, small_disk):
    out = small_disk / "t.pftrace"
    rc, _, err = run(["attach", "-p", str(ticker.pid), "-d", "120", "-q", "-o", str(out)])
    assert rc == 1, err
    line = last_line(err)
    assert str(out) in line and "No space left on device" in line and "-o" in line, line
    assert "(trace not writable)" in err      # stopped for it, not at the 120 s duration
    assert ticker.proc.poll() is None, "the target must survive its profiler's full disk"
    assert packets(out) > 0                   # the clock snapshot and the tracks at least
    rc, report_out, report_err = run(["report", str(out)])
    assert rc == 0 and "truncated" in report_out + report_err, report_out + report_err
    summary = small_disk / "t.summary.json"
    if summary.exists():                      # the disk may have had room for it
        notices = json.loads(summary.read_text())["notices"]
        assert any("No space left on device" in n for n in notices), notices
    else:
        assert "summary: not written" in err and "summary not written" in err, err


def test_output_directory_removed_mid_capture(ticker, tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    g = Gpuscope(["attach", "-p", str(ticker.pid), "-d", "120", "-q", "-o", str(d / "t.pftrace")])
    g.wait_attached()
    shutil.rmtree(d)
    rc, err = g.finish(timeout=60)
    assert rc == 1, err
    line = last_line(err)
    assert "deleted during the capture" in line and "-o" in line, line
    assert "(trace not writable)" in err
    assert ticker.proc.poll() is None


@pytest.mark.parametrize("path", ["/dev/full", "/dev/null"])
def test_a_device_is_refused_as_output(ticker, path):
    rc, _, err = run(["attach", "-p", str(ticker.pid), "-q", "-o", path])
    assert rc == 2
    line = one_line(err)
    assert path in line and "not a regular file" in line and "-o" in line
