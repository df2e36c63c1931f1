"""Calico's policy kinds as documents: defaulting (types, tiers), names for get/delete, staged kinds."""

from __future__ import annotations

from typing import Any

import pytest

from datamodel.resources import ResourceError, kind_for_name, parse_documents, parse_resource
from datamodel.resources.calicopolicy import (
    CalicoNetworkPolicy,
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    NetworkSet,
    Profile,
    StagedGlobalNetworkPolicy,
    StagedKubernetesNetworkPolicy,
    StagedNetworkPolicy,
    Tier,
)

#: A staged document with every field of the kinds it stages (the walk test checks each is named).
STAGED = """
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: s, namespace: prod}
spec:
  stagedAction: Set
  tier: default
  order: 10
  selector: app == 'web'
  types: [Ingress, Egress]
  serviceAccountSelector: role == 'x'
  performanceHints: [AssumeNeededOnEveryNode]
  ingress:
  - action: Allow
    protocol: TCP
    notProtocol: UDP
    ipVersion: 4
    source: {nets: [10.0.0.0/8], notNets: [10.1.0.0/16], selector: a == 'b', notSelector: c == 'd',
             namespaceSelector: team == 'a', ports: [80], notPorts: [81],
             serviceAccounts: {names: [sa], selector: x == 'y'}, services: {name: svc, namespace: prod}}
    destination: {ports: [http]}
    http: {methods: [GET], paths: [{exact: /a}, {prefix: /b}]}
    metadata: {annotations: {a: b}}
  - action: Deny
    protocol: ICMP
    icmp: {type: 8, code: 0}
    notICMP: {type: 3, code: 1}
  egress:
  - action: Pass
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: g}
spec: {stagedAction: Delete, namespaceSelector: all(), doNotTrack: false, preDNAT: false, applyOnForward: false}
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: k, namespace: prod}
spec:
  stagedAction: Learn
  podSelector: {matchLabels: {app: web}, matchExpressions: [{key: x, operator: In, values: [y]}]}
  policyTypes: [Ingress, Egress]
  ingress:
  - ports: [{protocol: TCP, port: 80, endPort: 90}]
    from: [{podSelector: {}, namespaceSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
  egress:
  - to: [{podSelector: {}}]
"""


def calico(kind: str, spec: dict[str, Any], name: str = "p", ns: str | None = "prod") -> Any:
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": kind,
                           "metadata": {"name": name, **({"namespace": ns} if ns else {})}, "spec": spec})


def test_types_inferred_as_calico_does() -> None:
    """types omitted: Ingress when there are no egress rules, Egress for egress rules only, both
    for both; stored defaulted, as Calico's client stores it."""
    allow = [{"action": "Allow"}]
    assert calico("NetworkPolicy", {}).spec.types == ["Ingress"]
    assert calico("NetworkPolicy", {"ingress": allow}).spec.types == ["Ingress"]
    assert calico("NetworkPolicy", {"egress": allow}).spec.types == ["Egress"]
    assert calico("GlobalNetworkPolicy", {"ingress": allow, "egress": allow}, ns=None).spec.types == ["Ingress",
                                                                                                      "Egress"]
    assert calico("NetworkPolicy", {"types": ["Egress"]}).spec.types == ["Egress"]
    with pytest.raises(ResourceError, match=r"spec\.ingress: ingress rules are given but types does not include"):
        calico("NetworkPolicy", {"types": ["Egress"], "ingress": allow})
    stored = calico("NetworkPolicy", {"egress": allow}).to_dict()
    assert stored["spec"]["types"] == ["Egress"] and stored["spec"]["tier"] == "default"


def test_fixed_tiers_and_defaults() -> None:
    assert calico("Tier", {}, name="default", ns=None).spec.order == 1_000_000
    assert calico("Tier", {}, name="default", ns=None).spec.defaultAction == "Deny"
    assert calico("Tier", {}, name="adminnetworkpolicy", ns=None).spec.defaultAction == "Pass"
    assert calico("Tier", {}, name="baselineadminnetworkpolicy", ns=None).spec.order == 10_000_000
    assert calico("Tier", {"order": 5}, name="mine", ns=None).spec.defaultAction == "Deny"
    with pytest.raises(ResourceError, match=r"spec\.order: the default tier's order is fixed at 1e"):
        calico("Tier", {"order": 5}, name="default", ns=None)
    assert calico("Tier", {"order": 5}, name="mine", ns=None).ps_row() == {"NAME": "mine", "ORDER": "5"}


def test_calicoctl_names_and_columns() -> None:
    for names, cls in ((("networkpolicy", "networkpolicies", "policy", "np", "pol"), CalicoNetworkPolicy),
                       (("globalnetworkpolicy", "gnp", "gnps"), GlobalNetworkPolicy),
                       (("tier", "tiers"), Tier), (("profile", "pro", "pros"), Profile),
                       (("networkset", "netsets"), NetworkSet), (("globalnetworkset", "gnetsets"), GlobalNetworkSet),
                       (("stagednetworkpolicy", "snp"), StagedNetworkPolicy),
                       (("stagedglobalnetworkpolicy", "sgnp"), StagedGlobalNetworkPolicy),
                       (("stagedkubernetesnetworkpolicy", "sknp"), StagedKubernetesNetworkPolicy)):
        for name in names:
            assert kind_for_name(name) is cls, name
    pol = calico("NetworkPolicy", {"order": 100, "selector": "app == 'x'", "tier": "security"})
    assert pol.ps_row() == {"NAMESPACE": "prod", "NAME": "p", "TIER": "security"}
    assert pol.wide_row() == {"NAMESPACE": "prod", "NAME": "p", "TIER": "security", "ORDER": "100",
                              "SELECTOR": "app == 'x'"}
    assert calico("GlobalNetworkPolicy", {}, ns=None).ps_row() == {"NAME": "p", "TIER": "default"}
    nset = calico("GlobalNetworkSet", {"nets": ["10.0.0.0/8", "fd00::/64"]}, ns=None)
    assert nset.wide_row() == {"NAME": "p", "NETS": "10.0.0.0/8,fd00::/64"}


def test_staged_policies_are_validated_never_enforced() -> None:
    """Staged kinds parse with every field of their twins (stagedAction too) and are refused when
    malformed like their twins; the policy calculator never registers them: nothing is enforced."""
    from controller.node.graph import CalcGraph

    docs = parse_documents(STAGED, "staged.yaml")
    assert [type(d) for d in docs] == [StagedNetworkPolicy, StagedGlobalNetworkPolicy, StagedKubernetesNetworkPolicy]
    assert docs[0].spec.stagedAction == "Set" and docs[2].spec.policyTypes == ["Ingress", "Egress"]
    with pytest.raises(ResourceError, match=r"spec.ingress\[0\].action"):
        parse_documents("apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata: {name: s}\n"
                        "spec: {ingress: [{action: Maybe}]}\n", "bad.yaml")
    graph = CalcGraph("n1", "vxlan")
    registered = set(graph.dispatcher._handlers)
    assert not registered & {"StagedNetworkPolicy", "StagedGlobalNetworkPolicy", "StagedKubernetesNetworkPolicy"}
    assert {"NetworkPolicy", "GlobalNetworkPolicy", "Tier", "Profile", "NetworkSet"} <= registered
