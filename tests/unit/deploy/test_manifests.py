"""manifests/ validated offline against the Kubernetes OpenAPI schemas (kubernetes-validate ships them),
strict (unknown fields refused), plus what the deployment must hold to work at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
K8S_VERSION = "1.30.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


@pytest.mark.parametrize(("name", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_valid_against_the_openapi_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_refuses_a_typo() -> None:
    (ds,) = [d for _, d in documents() if d["kind"] == "DaemonSet"]
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_what_the_deployment_needs() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in documents()}
    assert {("Namespace", "tabby-system"), ("ServiceAccount", "tabby-node"), ("ServiceAccount", "tabby-controller"),
            ("ClusterRole", "tabby-node"), ("ClusterRoleBinding", "tabby-controller"), ("ConfigMap", "tabby-config"),
            ("Secret", "tabby-etcd-secrets"), ("DaemonSet", "tabby-node"),
            ("Deployment", "tabby-controller")} <= kinds
    docs = {d["kind"]: d for _, d in documents()}
    node = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert node["hostNetwork"] is True
    (init,) = node["initContainers"]
    assert init["name"] == "install-cni" and "manifests/cni/install.sh" in " ".join(init["command"])
    mounts = {m["mountPath"] for m in init["volumeMounts"]}
    assert mounts == {"/host/opt/cni/bin", "/host/etc/cni/net.d"}
    env = {e["name"]: e for e in node["containers"][0]["env"]}
    assert env["NODENAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for var in ("ETCD_ENDPOINTS", "CALICO_NETWORKING_BACKEND", "FELIX_PROMETHEUSMETRICSENABLED"):
        assert var in env
    config = docs["ConfigMap"]["data"]
    refs = [e["valueFrom"]["configMapKeyRef"]["key"] for e in env.values()
            if "configMapKeyRef" in e.get("valueFrom", {})]
    assert set(refs) <= set(config), "every configMapKeyRef names a key of tabby-config"
    assert {"/run/tabby", "/var/lib/tabby"} <= {m["mountPath"] for m in node["containers"][0]["volumeMounts"]}
    ctl = docs["Deployment"]["spec"]
    assert ctl["replicas"] >= 2  # leader election: one acts, one stands by
    assert ctl["template"]["spec"]["containers"][0]["command"] == ["tabby-controller"]
