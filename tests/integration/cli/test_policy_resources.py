"""tabbyctl with Kubernetes NetworkPolicy and Namespace documents against a real etcd."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

DOCS = """\
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 80}]
"""


def test_apply_get_delete_networkpolicy_and_namespace(ctl: Any, write: Callable[[str, str], str]) -> None:
    res = ctl("apply", "-f", write("p.yaml", DOCS))
    assert res.rc == 0, res.err
    res = ctl("get", "netpol", "--namespace", "prod", "-o", "json")
    assert res.rc == 0, res.err
    [item] = json.loads(res.out)["items"]
    assert item["apiVersion"] == "networking.k8s.io/v1"
    assert item["spec"]["policyTypes"] == ["Ingress"]  # defaulted and stored, as the API server does
    res = ctl("get", "networkpolicy", "--namespace", "prod")
    assert res.rc == 0 and "allow-web" in res.out and 'app == "web"' in res.out, res.out + res.err
    res = ctl("get", "ns", "prod", "-o", "yaml")
    assert res.rc == 0 and "team: a" in res.out, res.err
    res = ctl("delete", "networkpolicy", "allow-web", "--namespace", "prod")
    assert res.rc == 0, res.err
    assert json.loads(ctl("get", "netpol", "--namespace", "prod", "-o", "json").out)["items"] == []


def test_bad_policy_refused_naming_the_field_and_nothing_written(ctl: Any, write: Callable[[str, str], str]) -> None:
    bad = DOCS.replace("ports: [{port: 80}]", "ports: [{port: 80, endPort: 70}]")
    res = ctl("apply", "-f", write("bad.yaml", bad))
    assert res.rc != 0
    assert any("spec.ingress[0].ports[0].endPort: must be greater than or equal to port" in line
               for line in res.err_lines), res.err
    # all or nothing: the valid Namespace in the same file was not written either
    assert json.loads(ctl("get", "ns", "-o", "json").out)["items"] == []
