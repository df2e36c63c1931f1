"""networking.k8s.io/v1 NetworkPolicy and v1 Namespace: Kubernetes' defaulting and selector meaning."""

from __future__ import annotations

import pytest

from datamodel.resources import parse_documents
from datamodel.resources.kubernetes import (
    NAMESPACE_NAME_LABEL,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    namespace_labels,
)
from datamodel.resources.registry import kind_for_name


def _np(spec: str) -> NetworkPolicy:
    text = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: np, namespace: prod}}\nspec:\n{spec}")
    [res] = parse_documents(text)
    assert isinstance(res, NetworkPolicy)
    return res


def test_policy_types_inferred_as_kubernetes_does() -> None:
    assert _np("  podSelector: {}\n").spec.policyTypes == ["Ingress"]
    assert _np("  ingress: [{}]\n").spec.policyTypes == ["Ingress"]
    assert _np("  egress: [{}]\n").spec.policyTypes == ["Ingress", "Egress"]
    # an empty egress list adds no Egress type (len(egress) == 0 in Kubernetes' defaulting)
    assert _np("  egress: []\n").spec.policyTypes == ["Ingress"]
    assert _np("  policyTypes: []\n  egress: [{}]\n").spec.policyTypes == ["Ingress", "Egress"]
    assert _np("  policyTypes: [Egress]\n").spec.policyTypes == ["Egress"]


def test_ingress_allow_all_and_isolate_are_kept_apart() -> None:
    allow = _np("  ingress: [{}]\n")
    isolate = _np("  ingress: []\n")
    assert allow.spec.ingress is not None and len(allow.spec.ingress) == 1
    assert allow.spec.ingress[0].from_ is None and allow.spec.ingress[0].ports is None
    assert isolate.spec.ingress == []
    assert allow.to_dict()["spec"]["ingress"] == [{}]
    assert isolate.to_dict()["spec"]["ingress"] == []


def test_namespace_defaults_and_round_trip() -> None:
    res = _np("  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}],"
              " ports: [{port: 80}, {port: http, protocol: UDP}, {port: 8000, endPort: 8080, protocol: SCTP}]}]\n")
    doc = res.to_dict()
    assert doc["apiVersion"] == "networking.k8s.io/v1"
    rule = doc["spec"]["ingress"][0]
    assert rule["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": "http"},
                             {"protocol": "SCTP", "port": 8000, "endPort": 8080}]
    again = NetworkPolicy.model_validate(doc)
    assert again == res
    assert _np("  podSelector: {}\n").namespace == "prod"


#: (selector, labels, selected?): matchLabels and matchExpressions (key, operator In/NotIn/Exists/
#: DoesNotExist, values) as Kubernetes defines them.
SELECTOR_CASES = [
    ({}, {}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
    ({"matchLabels": {"app": "web"}}, {}, False),
    ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["a", "b"]}]}, {"t": "b"}, True),
    ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["a", "b"]}]}, {}, False),
    ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]}]}, {"t": "a"}, False),
    ({"matchExpressions": [{"key": "t", "operator": "Exists"}]}, {"t": ""}, True),
    ({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {"t": ""}, False),
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
     {"a": "1", "b": "2"}, True),
]


@pytest.mark.parametrize(("selector", "labels", "expected"), SELECTOR_CASES)
def test_label_selector_means_what_kubernetes_says(selector: dict, labels: dict, expected: bool) -> None:
    assert LabelSelector.model_validate(selector).to_selector().matches(labels) is expected


def test_every_namespace_carries_its_name_label() -> None:
    [ns] = parse_documents("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: a}}\n")
    assert isinstance(ns, Namespace)
    assert ns.effective_labels() == {"team": "a", NAMESPACE_NAME_LABEL: "prod"}
    assert namespace_labels("other", None) == {NAMESPACE_NAME_LABEL: "other"}
    # a document cannot fake another namespace's name label
    [ns] = parse_documents(
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{{NAMESPACE_NAME_LABEL}: b}}}}\n")
    assert ns.effective_labels()[NAMESPACE_NAME_LABEL] == "a"


def test_names_resolve_for_get_and_delete() -> None:
    for name in ("kubernetesnetworkpolicy", "knp", "netpol", "KubernetesNetworkPolicy"):
        assert kind_for_name(name) is NetworkPolicy
    from datamodel.resources.calicopolicy import CalicoNetworkPolicy

    for name in ("networkpolicy", "networkpolicies", "np", "policy", "NetworkPolicy"):  # calicoctl's names
        assert kind_for_name(name) is CalicoNetworkPolicy
    for name in ("namespace", "namespaces", "ns"):
        assert kind_for_name(name) is Namespace
