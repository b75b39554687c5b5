"""The sidecar end to end, on real eBPF: the sidecar and a stand-in trainer
share their own PID namespace (`unshare --pid --fork --mount-proc`), as two
containers of a pod with shareProcessNamespace do; the host's procfs is
bind-mounted into it as a pod's hostPath /proc -> /host/proc would be."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tracecheck

TARGETS = Path(__file__).resolve().parent / "targets"
CUDART = (Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" /
          "site-packages" / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")
TOKEN = "s3cret-token-for-tests"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(method: str, url: str, body=None, token: str | None = TOKEN):
    """(status, body, headers) of one request to the sidecar's API; `body` is JSON
    (or bytes as they are), `token` a bearer token (None: no header)."""
    data = None if body is None else (body if isinstance(body, bytes)
                                      else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


class Pod:
    """A PID namespace holding the trainer (restarted once when killed) and the sidecar."""

    def __init__(self, tmp: Path):
        if not CUDART.exists():
            pytest.skip("libcudart.so.12 missing: pip install -e '.[test]'")
        self.tmp = tmp
        self.port = free_port()
        self.hostproc = tmp / "hostproc"
        self.hostproc.mkdir()
        self.captures = tmp / "captures"
        data = tmp / "data.bin"
        data.write_bytes(os.urandom(1 << 20))
        py = sys.executable
        trainer = (f"for gen in 1 2; do {py} {TARGETS / 'sidecar_trainer.py'} {CUDART} {data} "
                   f"{tmp}/info-$gen.json; done")
        sidecar = (f"{py} -m gpuscope.collector.cli sidecar --listen 127.0.0.1:{self.port} "
                   f"--captures {self.captures} --host-proc {self.hostproc} "
                   f"--flight-seconds 30 --no-nvml")
        inner = f"({trainer}) & {sidecar}"  # siblings, as two containers of a pod
        outer = (f"mount --bind /proc {self.hostproc} && "
                 f"exec unshare --pid --fork --mount-proc sh -c '{inner}'")
        self.logpath = tmp / "sidecar.log"
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", outer],
            env={**os.environ, "GPUSCOPE_TOKEN": TOKEN}, stdout=self.log, stderr=self.log,
            start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, body=None, token: str | None = TOKEN):
        return http_request(method, self.url(path), body, token)

    def json(self, method: str, path: str, body=None, token: str | None = TOKEN):
        status, raw, _ = self.request(method, path, body, token)
        return status, json.loads(raw)

    def info(self, gen: int) -> dict:
        path = self.tmp / f"info-{gen}.json"
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline, "trainer did not start"
            time.sleep(0.05)
        return json.loads(path.read_text())

    def wait_attached(self, pid: int, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        health = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "sidecar exited:\n" + self.logs()
            try:
                status, health = self.json("GET", "/healthz", token=None)
                if status == 200 and health["target_pid"] == pid:
                    return health
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"sidecar did not attach to {pid}: {health}\n{self.logs()}")

    def wait_capture(self, cid: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, doc = self.json("GET", f"/v1/captures/{cid}")
            assert status == 200, doc
            if doc["state"] != "running":
                return doc
            time.sleep(0.2)
        raise AssertionError(f"capture {cid} did not finish")

    def metrics(self) -> dict:
        status, raw, headers = self.request("GET", "/metrics", token=None)
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        out = {}
        for fam in text_string_to_metric_families(raw.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def logs(self) -> str:
        return self.logpath.read_text()[-6000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole namespace goes with its init
            self.proc.wait(timeout=30)
        self.log.close()


def kernel_pid_of(ns_pid: int, ns_ino: int) -> int:
    """The kernel PID of the task that is `ns_pid` in namespace `ns_ino` (seen from the host)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino != ns_ino:
                continue
            for line in open(f"/proc/{name}/status"):
                if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                    return int(name)
        except OSError:
            continue
    raise AssertionError(f"no task {ns_pid} in namespace {ns_ino}")


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    p = Pod(tmp_path_factory.mktemp("pod"))
    try:
        info = p.info(1)
        p.health = p.wait_attached(info["pid"])
        p.trainer = info
        p.ns_ino = os.stat(f"/proc/{kernel_pid_of_any(p)}/ns/pid").st_ino
        yield p
    finally:
        p.close()


def test_discovery_finds_the_trainer_in_the_namespace(pod):
    h = pod.health
    assert h["attached"] and h["target_pid"] == pod.trainer["pid"]
    assert "pod namespace" in h["pid_namespace"]
    # The same task has another PID in the kernel: the API shows the namespace's.
    assert pod.ns_ino != os.stat("/proc/self/ns/pid").st_ino
    kpid = kernel_pid_of(pod.trainer["pid"], pod.ns_ino)
    assert kpid != pod.trainer["pid"]
    status, target = pod.json("GET", "/v1/target")
    assert status == 200 and target["pid"] == pod.trainer["pid"]
    assert pod.trainer["worker"] in target["processes"]
    assert "sidecar_trainer.py" in " ".join(target["command"])


def kernel_pid_of_any(pod) -> int:
    """A kernel PID inside the pod's namespace: the child of `unshare --fork`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    cmd = open(f"/proc/{name}/cmdline", "rb").read().split(b"\0")
                except OSError:
                    continue
                if any(a.endswith(b"sidecar_trainer.py") for a in cmd):
                    return int(name)
        time.sleep(0.1)
    raise AssertionError("trainer not found from the host")


def test_api_needs_the_token(pod):
    assert pod.request("GET", "/v1/captures", token=None)[0] == 401
    status, raw, headers = pod.request("GET", "/v1/captures", token="wrong")
    assert status == 401 and b"bad bearer token" in raw
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert pod.request("POST", "/v1/captures", {"duration_s": 1}, token=None)[0] == 401
    assert pod.request("GET", "/v1/captures")[0] == 200
    assert pod.request("GET", "/healthz", token=None)[0] == 200  # kubelet probes carry no token


@pytest.mark.parametrize("body,status,words", [
    ({"duration_s": 0}, 400, "duration_s must be > 0"),
    ({"duration_s": -5}, 400, "duration_s must be > 0"),
    ({"duration_s": 86400}, 400, "<= 3600"),
    ({"duration_s": "ten"}, 400, "must be a number"),
    ({"duration_s": True}, 400, "must be a number"),
    ({}, 400, "duration_s is required"),
    ({"duration_s": 1, "include_flight_recorder": "yes"}, 400, "true or false"),
    ({"duration_s": 1, "colour": "red"}, 400, "unknown field"),
    (b"not json", 400, "JSON object"),
])
def test_bad_capture_requests(pod, body, status, words):
    got, raw, _ = pod.request("POST", "/v1/captures", body)
    assert got == status and words in json.loads(raw)["error"], raw


def test_unknown_capture_ids(pod):
    for path in ("/v1/captures/20200101-000000-abcdef", "/v1/captures/nope",
                 "/v1/captures/..%2f..%2fetc/trace", "/v1/captures/20200101-000000-abcdef/summary"):
        status, doc = pod.json("GET", path)
        assert status == 404 and "error" in doc, (path, doc)


def test_capture_trace_summary_and_pids_are_the_namespaces(pod):
    t_req = time.monotonic_ns()
    status, doc = pod.json("POST", "/v1/captures", {"duration_s": 2})
    assert status == 201, doc
    cid = doc["id"]
    # One capture at a time.
    status, busy = pod.json("POST", "/v1/captures", {"duration_s": 1})
    assert status == 409 and cid in busy["error"]
    status, early = pod.json("GET", f"/v1/captures/{cid}/trace")
    assert status in (409, 200) and (status == 200 or "still running" in early["error"])
    done = pod.wait_capture(cid)
    assert done["state"] == "done", done
    assert "verdict" in done and done["target_pid"] == pod.trainer["pid"]

    status, summary = pod.json("GET", f"/v1/captures/{cid}/summary")
    assert status == 200
    ns_pids = {pod.trainer["pid"], pod.trainer["worker"]}
    assert summary["target"]["pid"] == pod.trainer["pid"]
    assert ns_pids <= set(summary["processes"]), summary["processes"]
    assert summary["events"].get("io", 0) > 0 and summary["events"].get("cuda", 0) > 0
    assert done["processes"] == summary["processes"]

    status, raw, headers = pod.request("GET", f"/v1/captures/{cid}/trace")
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    path = pod.tmp / f"{cid}.pftrace"
    path.write_bytes(raw)
    t = tracecheck.load(str(path))
    trace_pids = {pid for pid, _name in t.processes.values()}
    thread_pids = {pid for pid, _tid, _name in t.threads.values()}
    assert ns_pids <= trace_pids
    # Every PID in the trace is one the summary lists: no kernel PID leaked in.
    assert (trace_pids | thread_pids) <= set(summary["processes"]), (trace_pids, summary)
    kpid = kernel_pid_of(pod.trainer["pid"], pod.ns_ino)
    assert kpid not in trace_pids | thread_pids
    # Real events on the namespace's threads: the worker's reads of the data file.
    io = [s for s in t.slices_on("IO") if s.args.get("path", "").endswith("data.bin")]
    assert {t.thread_of(s.track)[0] for s in io} >= ns_pids
    names = {name for _pid, name in t.processes.values()}
    assert any("python" in n or "sidecar_trainer" in n for n in names), names
    # Live events only: nothing from long before the request.
    starts = [s.start for s in t.slices]
    assert min(starts) > t_req - 1_000_000_000


def test_flight_recorder_capture_holds_events_from_before_the_request(pod):
    time.sleep(3)  # let the recorder fill
    t_req = time.monotonic_ns()
    status, doc = pod.json("POST", "/v1/captures",
                           {"duration_s": 1, "include_flight_recorder": True})
    assert status == 201, doc
    done = pod.wait_capture(doc["id"])
    assert done["state"] == "done", done
    status, raw, _ = pod.request("GET", f"/v1/captures/{doc['id']}/trace")
    path = pod.tmp / "flight.pftrace"
    path.write_bytes(raw)
    t = tracecheck.load(str(path))
    before = [s for s in t.slices if s.end < t_req - 2_000_000_000]
    after = [s for s in t.slices if s.start > t_req]
    assert before and after, (len(before), len(after))
    assert {t.thread_of(s.track)[0] for s in before} >= {pod.trainer["pid"], pod.trainer["worker"]}
    status, summary = pod.json("GET", f"/v1/captures/{doc['id']}/summary")
    assert summary["events"].get("flightrec", 0) > 0
    assert any("flight recorder" in n for n in summary["notices"])


def test_metrics_parse_and_move_with_the_trainer(pod):
    a = pod.metrics()
    time.sleep(1.5)
    b = pod.metrics()
    read = ("gpuscope_io_read_bytes_total", ())
    launches = ("gpuscope_cuda_kernel_launches_total", ())
    assert b[read] > a[read] > 0
    assert b[launches] > a[launches] > 0
    assert b[("gpuscope_up", ())] == 1
    info = [k for k in b if k[0] == "gpuscope_target_info"]
    assert len(info) == 1 and ("pid", str(pod.trainer["pid"])) in info[0][1]
    assert b[("gpuscope_probe_events_total", (("probe", "io"),))] > 0
    assert ("gpuscope_probe_events_lost_total", (("probe", "io"),)) in b
    assert b[("gpuscope_flight_recorder_events", ())] > 0
    assert b[("gpuscope_captures_total", (("state", "done"),))] >= 1
    # The overhead budget runs in the always-on monitor too (default limit: 2% of the machine).
    assert b[("gpuscope_overhead_limit_ratio", ())] == pytest.approx(0.02)
    assert b[("gpuscope_overhead_ratio", ())] >= 0
    assert b[("gpuscope_detail_level", ())] >= 0


def test_follows_the_trainer_across_a_restart(pod):
    first = pod.trainer
    os.kill(kernel_pid_of(first["worker"], pod.ns_ino), signal.SIGKILL)
    os.kill(kernel_pid_of(first["pid"], pod.ns_ino), signal.SIGKILL)
    second = pod.info(2)
    assert second["pid"] != first["pid"]
    health = pod.wait_attached(second["pid"])
    assert health["restarts"] >= 1
    assert pod.metrics()[("gpuscope_target_restarts_total", ())] >= 1
