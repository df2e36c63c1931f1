"""No field accepted and ignored: every field of every model is consumed, refused at apply, or warned.

Walks the pydantic models of every registered kind and checks that each leaf field of `spec` has
exactly one entry in controller.support_policy.FIELDS; a consumed field names a test that exists
and mentions the field; a refused or warned field, set to its sample value on an otherwise valid
document, produces exactly its message from support_policy.check().
"""

from __future__ import annotations

import ast
import copy
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from controller.support_policy import FIELDS, Consumed, Refused, Warned, check
from datamodel.resources import all_kinds, parse_resource

ROOT = Path(__file__).resolve().parents[3]

#: An otherwise valid document per kind, to which each sample field value is added.
BASE: dict[str, dict[str, Any]] = {
    "IPPool": {"metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16"}},
    "BGPFilter": {"metadata": {"name": "f"}, "spec": {
        family: [{"action": "Accept"}] for family in ("exportV4", "importV4", "exportV6", "importV6")
    }},
    "IPAMConfiguration": {"metadata": {"name": "default"}, "spec": {}},
    "Node": {"metadata": {"name": "n1"}, "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}}},
    "BGPConfiguration": {"metadata": {"name": "default"}, "spec": {}},
    "BGPPeer": {"metadata": {"name": "p"}, "spec": {"peerIP": "192.0.2.1", "asNumber": 65001}},
    "WorkloadEndpoint": {"metadata": {"name": "w", "namespace": "default"}, "spec": {}},
    "FelixConfiguration": {"metadata": {"name": "default"}, "spec": {}},
    "ClusterInformation": {"metadata": {"name": "default"}, "spec": {}},
    "NetworkPolicy": {"metadata": {"name": "p", "namespace": "default"}, "spec": {}},
    "GlobalNetworkPolicy": {"metadata": {"name": "p"}, "spec": {}},
    "Profile": {"metadata": {"name": "p"}, "spec": {}},
    "Tier": {"metadata": {"name": "t"}, "spec": {}},
    "NetworkSet": {"metadata": {"name": "s", "namespace": "default"}, "spec": {}},
    "GlobalNetworkSet": {"metadata": {"name": "s"}, "spec": {}},
    "KubeControllersConfiguration": {"metadata": {"name": "default"}, "spec": {}},
}
#: Calico rule lists: a sample inside a rule goes into one rule (with an action).
RULE_LISTS = ("ingress", "egress")
#: Sample values that need company to be valid (Calico's cross-field rules).
COMPANIONS: dict[str, dict[str, Any]] = {
    "BGPPeer.spec.localWorkloadSelector": {"peerIP": None},
    "WorkloadEndpoint.spec.ports.name": {"ports": [{"name": "http", "port": 80}]},
}


def _models(annotation: Any) -> list[type[BaseModel]]:
    if typing.get_origin(annotation) is typing.Annotated:
        return _models(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _leaves(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for name, info in model.model_fields.items():
        inner = _models(info.annotation)
        if inner:
            for sub in inner:
                yield from _leaves(sub, f"{prefix}.{name}")
        else:
            yield f"{prefix}.{name}"


def all_fields() -> list[str]:
    out: list[str] = []
    for cls in all_kinds():
        specs = _models(cls.model_fields["spec"].annotation)
        for spec in specs:
            out.extend(_leaves(spec, f"{cls.KIND}.spec"))
    return out


FIELD_PATHS = all_fields()


def test_every_field_has_exactly_one_policy() -> None:
    assert len(FIELD_PATHS) == len(set(FIELD_PATHS))
    missing = [p for p in FIELD_PATHS if p not in FIELDS]
    stale = [p for p in FIELDS if p not in FIELD_PATHS]
    assert not missing, f"fields with no support policy (consumed/refused/warned): {missing}"
    assert not stale, f"policy entries for fields no model has: {stale}"


def _test_body(ref: str) -> str | None:
    """The test function's source plus its module's top level (fixtures built there count)."""
    path, _, name = ref.partition("::")
    file = ROOT / path
    if not file.exists():
        return None
    src = file.read_text()
    tree = ast.parse(src)
    top = "\n".join(
        ast.get_source_segment(src, n) or ""
        for n in tree.body
        if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return (ast.get_source_segment(src, node) or "") + "\n" + top
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


CONSUMED = [p for p, pol in FIELDS.items() if isinstance(pol, Consumed)]
POLICED = [p for p, pol in FIELDS.items() if not isinstance(pol, Consumed)]


@pytest.mark.parametrize("path", CONSUMED)
def test_consumed_field_names_a_test_of_its_behaviour(path: str) -> None:
    policy = FIELDS[path]
    assert isinstance(policy, Consumed)
    body = _test_body(policy.test)
    assert body is not None, f"{path}: test {policy.test} does not exist"
    leaf = path.rsplit(".", 1)[-1]
    parent = path.split(".")[-2]
    words = {leaf, _snake(leaf), parent, _snake(parent)}
    assert any(re.search(rf"\b{re.escape(w)}\b", body) for w in words), f"{policy.test} never mentions {leaf}"


def _with_sample(path: str, sample: Any) -> dict[str, Any]:
    kind, _, rest = path.partition(".")
    doc = {"apiVersion": "projectcalico.org/v3", "kind": kind, **copy.deepcopy(BASE[kind])}
    parts = rest.split(".")[1:]
    target = doc["spec"]
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if isinstance(target, list):
            target = target[0]
    target[parts[-1]] = sample
    for key, value in COMPANIONS.get(path, {}).items():
        if value is None:
            doc["spec"].pop(key, None)
        elif key not in doc["spec"] or not isinstance(doc["spec"][key], list):
            doc["spec"][key] = value
    # A field inside a list (ports.name, addresses.type, ...) is set on one list item.
    for key, value in list(doc["spec"].items()):
        if isinstance(value, dict) and key in (
            "ports",
            "addresses",
            "orchRefs",
            "failsafeInboundHostPorts",
            "failsafeOutboundHostPorts",
        ):
            doc["spec"][key] = [value]
    for key in RULE_LISTS:
        if kind in ("NetworkPolicy", "GlobalNetworkPolicy", "Profile") and isinstance(doc["spec"].get(key), dict):
            rule = doc["spec"][key]
            rule.setdefault("action", "Allow")
            for side in ("source", "destination"):
                if "services" in rule.get(side, {}):
                    rule[side]["services"].setdefault("name", "svc")
            if isinstance(rule.get("http", {}).get("paths"), dict):
                rule["http"]["paths"] = [rule["http"]["paths"]]
            doc["spec"][key] = [rule]
    if kind == "BGPPeer" and "localWorkloadSelector" in doc["spec"]:
        doc["spec"].pop("peerIP", None)
    if kind == "BGPPeer" and "reachableBy" in doc["spec"]:
        doc["spec"]["peerIP"] = "10.0.0.10"
    if path.startswith("WorkloadEndpoint.spec.ports."):
        item = doc["spec"]["ports"][0]
        item.setdefault("name", "http")
        item.setdefault("port", 80)
    if ".failsafe" in path:
        next(iter(v for k, v in doc["spec"].items() if k.startswith("failsafe")))[0].setdefault("port", 22)
    if path.startswith("Node.spec.orchRefs."):
        doc["spec"]["orchRefs"][0].setdefault("orchestrator", "k8s")
    if path.startswith("Node.spec.addresses."):
        doc["spec"]["addresses"][0].setdefault("address", "10.0.0.1")
    return doc


@pytest.mark.parametrize("path", POLICED)
def test_refused_or_warned_field_gives_its_message(path: str) -> None:
    policy = FIELDS[path]
    assert isinstance(policy, Refused | Warned)
    assert policy.sample is not None, f"{path}: needs a sample value"
    res = parse_resource(_with_sample(path, policy.sample), "sample")
    report = check([res])
    lines = report.refused if isinstance(policy, Refused) else report.warnings
    assert any(policy.message in line for line in lines), (path, report)
    if isinstance(policy, Warned):
        assert not report.refused, report


def test_untouched_documents_pass_the_policy() -> None:
    resources = [
        parse_resource({"apiVersion": "projectcalico.org/v3", "kind": k, **v}, "base") for k, v in BASE.items()
    ]
    report = check(resources)
    assert report.refused == [] and report.warnings == []


def test_peer_ip_without_as_number_is_refused_at_apply_not_at_parse() -> None:
    res = parse_resource(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "tor"},
            "spec": {"peerIP": "192.0.2.1"},
        }
    )
    assert check([res]).refused == [
        "BGPPeer tor: spec.asNumber: Tabby does not support this yet: a peerIP without asNumber (Calico takes the AS"
        " of the node with that address); give the peer's asNumber"
    ]


def test_unmodelled_felix_field_is_refused_at_apply() -> None:
    res = parse_resource(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "FelixConfiguration",
            "metadata": {"name": "default"},
            "spec": {"bpfKubeProxyIptablesCleanupEnabled": False},
        }
    )
    assert check([res]).refused == [
        "FelixConfiguration default: spec.bpfKubeProxyIptablesCleanupEnabled: a FelixConfiguration field Tabby does"
        " not model; Tabby cannot check or honour it"
    ]
