"""Staged policies evaluated against flows: the inputs with the staged policies enforced (Set adds or
replaces, Delete removes), and the verdict a flow would get."""

from __future__ import annotations

from typing import Any

from controller.cli.policy_cmd import PolicyInputs, explain_packet
from datamodel.resources import parse_resource
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from felix_like.policy_eval import Packet


def wep(name: str, labels: dict[str, str], ip: str) -> WorkloadEndpoint:
    return WorkloadEndpoint.model_validate({
        "metadata": {"name": f"n1-k8s-{name}-eth0", "namespace": "prod", "labels": labels},
        "spec": {"node": "n1", "pod": name, "ipNetworks": [f"{ip}/32"], "interfaceName": f"tab{name}"}})


def doc(kind: str, name: str, spec: dict[str, Any], api: str = "projectcalico.org/v3") -> Any:
    return parse_resource({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "prod"},
                           "spec": spec})


def inputs() -> PolicyInputs:
    i = PolicyInputs()
    i.add("/w/srv", wep("srv", {"app": "web"}, "10.0.0.2"))
    i.add("/w/cli", wep("cli", {"role": "client"}, "10.0.0.1"))
    return i


PKT = Packet("10.0.0.1", "10.0.0.2", "tcp", 80)


def test_nothing_staged() -> None:
    assert inputs().with_staged() is None


def test_staged_set_would_deny() -> None:
    i = inputs()
    i.add("/s/deny", doc("StagedNetworkPolicy", "deny-web", {"selector": "app == 'web'", "stagedAction": "Set",
                                                             "ingress": [{"action": "Deny"}]}))
    now = explain_packet(i, PKT)[1]
    assert now is not None and now.verdict == "allowed"  # enforced: nothing selects srv, the profile allows
    staged = i.with_staged()
    assert staged is not None
    would = explain_packet(staged, PKT)[1]
    assert would is not None and would.verdict == "denied" and would.ref.name == "deny-web"
    assert would.ref.action == "deny" and would.ref.index == 0


def test_staged_kubernetes_and_delete() -> None:
    i = inputs()
    i.add("resources/v3/kubernetesnetworkpolicies/prod/iso", doc(  # the key as the datastore lists it
        "NetworkPolicy", "iso", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []},
        api="networking.k8s.io/v1"))
    assert explain_packet(i, PKT)[1].verdict == "denied"  # type: ignore[union-attr]
    i.add("/s/iso", doc("StagedKubernetesNetworkPolicy", "iso", {"stagedAction": "Delete",
                                                                 "podSelector": {}}))
    staged = i.with_staged()
    assert staged is not None and explain_packet(staged, PKT)[1].verdict == "allowed"  # type: ignore[union-attr]
