"""The sidecar's /metrics as Prometheus itself sees it: Debian's real
Prometheus server scrapes a sidecar attached to a real PyTorch DataLoader job
(samples/train.py, so the always-on stall analysis finds steps), with the
bearer token (--metrics-auth); its query API answers with gpuscope's series,
the verdict's among them. promtool checks the exposition, and SIGTERM still
finishes a running capture and detaches on the production server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_sidecar import TOKEN, free_port, http_request

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which(PROMETHEUS) or not shutil.which(PROMTOOL),
                                 reason="prometheus/promtool missing: make setup "
                                        "(Debian package prometheus)")]

VERDICT = ("gpuscope_data_wait_ratio", "gpuscope_step_seconds", "gpuscope_stall_cause")


class Sidecar:
    """samples/train.py (one slow worker: data-bound) and a sidecar following it."""

    def __init__(self, tmp: Path):
        pytest.importorskip("torch")
        self.tmp, self.port = tmp, free_port()
        self.captures = tmp / "captures"
        self.logpath = tmp / "sidecar.log"
        self.log = open(self.logpath, "w")
        self.trainer = subprocess.Popen(
            [sys.executable, str(ROOT / "samples" / "train.py"), "--data", str(tmp / "data"),
             "--make-data", "64", "--workers", "1", "--batch", "4", "--transform-ms", "15",
             "--compute-ms", "20"], stdout=self.log, stderr=self.log)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpuscope.collector.cli", "sidecar", "--match",
             "samples/train.py", "--listen", f"127.0.0.1:{self.port}", "--captures",
             str(self.captures), "--no-nvml", "--metrics-auth", "--analyze-every", "1",
             "--flight-seconds", "10"],
            env={**os.environ, "GPUSCOPE_TOKEN": TOKEN}, stdout=self.log, stderr=self.log)

    def request(self, method: str, path: str, body=None, token: str | None = TOKEN):
        return http_request(method, f"http://127.0.0.1:{self.port}{path}", body, token)

    def wait_attached(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "sidecar exited:\n" + self.logs()
            assert self.trainer.poll() is None, "trainer exited:\n" + self.logs()
            try:
                status, raw, _ = self.request("GET", "/healthz", token=None)
                if status == 200 and json.loads(raw)["target_pid"] == self.trainer.pid:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError("sidecar did not attach:\n" + self.logs())

    def wait_for_verdict(self, timeout: float = 90) -> bytes:
        """/metrics once the always-on stall analysis has published a verdict."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, raw, _ = self.request("GET", "/metrics")
            assert status == 200, raw
            if all(f"# TYPE {name} ".encode() in raw for name in VERDICT):
                return raw
            time.sleep(0.5)
        raise AssertionError("no verdict metrics from the stall analysis:\n" + raw.decode()
                             + self.logs())

    def logs(self) -> str:
        return self.logpath.read_text()[-6000:]

    def close(self) -> None:
        for p in (self.proc, self.trainer):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    s = Sidecar(tmp_path_factory.mktemp("sidecar"))
    try:
        s.wait_attached()
        s.wait_for_verdict()
        yield s
    finally:
        s.close()


def test_metrics_auth_refuses_a_scrape_without_the_token(sidecar):
    status, raw, headers = sidecar.request("GET", "/metrics", token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), raw


def promtool(text: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          timeout=30)


def test_promtool_accepts_the_exposition(sidecar):
    # promtool does fail on what it should: a counter without _total, no HELP.
    bad = promtool(b"# TYPE gpuscope_bad counter\ngpuscope_bad 1\n")
    assert bad.returncode != 0 and b"_total" in bad.stdout + bad.stderr
    status, raw, headers = sidecar.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    r = promtool(raw)
    assert r.returncode == 0, (r.stdout + r.stderr).decode() + "\n" + raw.decode()
    for name in ("gpuscope_up", "gpuscope_probe_events_total", "gpuscope_target_info",
                 "gpuscope_io_read_bytes_total", *VERDICT):
        assert f"# TYPE {name} ".encode() in raw, name


class Prometheus:
    """Debian's Prometheus on a loopback port, scraping the sidecar every second:
    once with the token, once without (that scrape must fail, 401)."""

    def __init__(self, tmp, target_port: int):
        self.port = free_port()
        token_file = tmp / "token"
        token_file.write_text(TOKEN)
        target = f"127.0.0.1:{target_port}"
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                             "evaluation_interval": "1s"},
                  "scrape_configs": [
                      {"job_name": "gpuscope", "static_configs": [{"targets": [target]}],
                       "authorization": {"type": "Bearer",
                                         "credentials_file": str(token_file)}},
                      {"job_name": "gpuscope-no-token",
                       "static_configs": [{"targets": [target]}]}]}
        conf = tmp / "prometheus.yml"
        conf.write_text(json.dumps(config))   # JSON is YAML
        self.logpath = tmp / "prometheus.log"
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=self.log)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def wait(self, promql: str, timeout: float = 60) -> list[dict]:
        """The query's result once it is not empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited:\n" + self.logpath.read_text()
            try:
                result = self.query(promql)
                if result:
                    return result
            except OSError:
                pass   # not listening yet
            time.sleep(0.3)
        raise AssertionError(f"no result for {promql}:\n{self.logpath.read_text()[-3000:]}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus(sidecar, tmp_path):
    p = Prometheus(tmp_path, sidecar.port)
    try:
        yield p
    finally:
        p.close()


def value(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_prometheus_scrapes_gpuscopes_series(sidecar, prometheus):
    up = prometheus.wait('up{job="gpuscope"}')
    assert value(up) == 1, prometheus.api("targets")
    assert value(prometheus.wait('up{job="gpuscope-no-token"}')) == 0
    targets = {t["labels"]["job"]: t for t in prometheus.api("targets")["activeTargets"]}
    assert targets["gpuscope"]["lastError"] == "", targets["gpuscope"]
    assert "401" in targets["gpuscope-no-token"]["lastError"], targets["gpuscope-no-token"]

    assert value(prometheus.wait('gpuscope_up{job="gpuscope"}')) == 1
    info = prometheus.wait("gpuscope_target_info")
    assert info[0]["metric"]["pid"] == str(sidecar.trainer.pid)
    assert value(prometheus.wait('gpuscope_probe_events_total{probe="io"}')) > 0
    # The counters move between scrapes: a rate needs two samples.
    reads = prometheus.wait("rate(gpuscope_io_read_bytes_total[5s]) > 0")
    assert value(reads) > 0

    # The verdict's figures, from the always-on stall analysis.
    assert 0 <= value(prometheus.wait("gpuscope_data_wait_ratio")) <= 1
    assert value(prometheus.wait("gpuscope_step_seconds")) > 0
    causes = prometheus.wait("gpuscope_stall_cause")
    assert {r["metric"]["cause"] for r in causes} >= {"storage_fetch_stall", "not_input_bound"}
    assert sum(float(r["value"][1]) for r in causes) <= 1
    phases = prometheus.wait("gpuscope_step_phase_ratio")
    assert "data_wait" in {r["metric"]["phase"] for r in phases}


def test_sigterm_finishes_the_capture_and_detaches(sidecar):
    """Last: stops the sidecar. The waitress server ends, then the capture is
    finished (its summary written) and the probes detached, exit status 0."""
    status, raw, _ = sidecar.request("POST", "/v1/captures", {"duration_s": 60})
    assert status == 201, raw
    cid = json.loads(raw)["id"]
    time.sleep(1)
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=60) == 0, sidecar.logs()
    summary = json.loads((sidecar.captures / f"{cid}.summary.json").read_text())
    assert summary["stop_reason"] == "sidecar stopping", summary["stop_reason"]
    assert "SIGTERM: finishing captures and detaching" in sidecar.logs()
    assert sidecar.trainer.poll() is None   # the job runs on
