"""The compiled-program walker (felix_like.policy_eval) on programs the real compiler produced: verdicts
and deciding rules written by hand for each cell."""

from __future__ import annotations

from typing import Any

import pytest

from datamodel.resources.kubernetes import NetworkPolicy
from felix_like.policy import EndpointInfo, compile_program
from felix_like.policy_eval import EvalError, Packet, decide, evaluate_rule


def np(spec: dict[str, Any], name: str, ns: str = "prod") -> NetworkPolicy:
    return NetworkPolicy.model_validate({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


SRV = EndpointInfo("k/srv", "prod", (("app", "web"),), ("10.0.0.2",), (("http", "TCP", 8080),), "n1", "tabsrv")
CLI = EndpointInfo("k/cli", "prod", (("role", "client"),), ("10.0.0.1",), (), "n1", "tabcli")
FAR = EndpointInfo("k/far", "dev", (("role", "client"),), ("10.0.1.1",), (), "n2", "tabfar")
POLICIES = [
    np({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 80}, {"port": "http"}]},
        {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
         "ports": [{"protocol": "UDP", "port": 53, "endPort": 60}]},
    ]}, "allow-web"),
    np({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}, "client-egress"),
]


def program(node: str) -> Any:
    return compile_program(POLICIES, [SRV, CLI, FAR], {}, node)


@pytest.mark.parametrize(("src", "proto", "port", "verdict", "name", "index", "action"), [
    ("10.0.0.1", "tcp", 80, "allowed", "allow-web", 0, "allow"),
    ("10.0.0.1", "tcp", 8080, "allowed", "allow-web", 0, "allow"),  # the named port
    ("10.0.0.1", "tcp", 81, "denied", "default", -1, "end-of-tier-deny"),
    ("10.0.0.1", "udp", 80, "denied", "default", -1, "end-of-tier-deny"),
    ("10.0.1.1", "tcp", 80, "denied", "default", -1, "end-of-tier-deny"),  # other namespace
    ("192.168.7.7", "udp", 55, "allowed", "allow-web", 1, "allow"),
    ("192.168.1.7", "udp", 55, "denied", "default", -1, "end-of-tier-deny"),  # except
    ("192.168.7.7", "udp", 61, "denied", "default", -1, "end-of-tier-deny"),  # past endPort
    ("192.168.7.7", "icmp", None, "denied", "default", -1, "end-of-tier-deny"),
])
def test_ingress_cells(src: str, proto: str, port: int | None, verdict: str, name: str, index: int,
                       action: str) -> None:
    d = decide(program("n1"), "tabsrv", "ingress", Packet(src, "10.0.0.2", proto, port))
    assert d.verdict == verdict
    assert (d.ref.name, d.ref.index, d.ref.action) == (name, index, action)


def test_egress_and_profiles() -> None:
    p1 = program("n1")
    d = decide(p1, "tabcli", "egress", Packet("10.0.0.1", "10.0.0.2", "tcp", 80))
    assert (d.verdict, d.ref.name, d.ref.index) == ("allowed", "client-egress", 0)
    d = decide(p1, "tabcli", "egress", Packet("10.0.0.1", "8.8.8.8", "udp", 53))
    assert (d.verdict, d.ref.action) == ("denied", "end-of-tier-deny")
    # a pod no policy selects: its namespace's profile allows (a logged verdict)
    d = decide(p1, "tabsrv", "egress", Packet("10.0.0.2", "10.0.0.1", "tcp", 22))
    assert (d.verdict, d.ref.kind, d.ref.name) == ("allowed", "Profile", "kns.prod")
    # an interface the program does not know: fail-closed
    assert decide(p1, "tabnope", "ingress", Packet("10.0.0.1", "10.0.0.2")).verdict == "denied"


def test_unknown_rule_text_is_refused() -> None:
    with pytest.raises(EvalError):
        evaluate_rule(program("n1"), "iifname \"x\" accept", Packet("10.0.0.1", "10.0.0.2"))
    with pytest.raises(EvalError):
        decide_rules = ("ip saddr @nope accept",)
        from felix_like.policy_eval import walk
        walk(program("n1"), decide_rules, Packet("10.0.0.1", "10.0.0.2"))


# -- Calico kinds: tiers, Pass, Deny, Log, rule fields ---------------------------------------------------


def cdoc(kind: str, spec: dict[str, Any], name: str, ns: str | None = "prod") -> Any:
    from datamodel.resources import parse_resource

    meta: dict[str, Any] = {"name": name, **({"namespace": ns} if ns else {})}
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})


def calico_program() -> Any:
    tiers = {"security": cdoc("Tier", {"order": 100}, "security", None)}
    gnp = cdoc("GlobalNetworkPolicy", {"tier": "security", "order": 10, "selector": "app == 'web'", "ingress": [
        {"action": "Deny", "source": {"nets": ["192.168.66.0/24"]}},
        {"action": "Log", "protocol": "TCP", "destination": {"ports": [22]}},
        {"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}},
        {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 13}},
        {"action": "Pass", "source": {"selector": "role == 'client'"}},
    ]}, "sec", None)
    allow = cdoc("NetworkPolicy", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["8000:8100"]}},
        {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 13}}]}, "web")
    return compile_program([gnp, allow], [SRV, CLI, FAR], {}, "n1", tiers=tiers)


@pytest.mark.parametrize(("src", "proto", "port", "icmp", "verdict", "name", "action", "trace"), [
    ("192.168.66.5", "tcp", 8080, None, "denied", "sec", "deny", []),  # nets deny in the first tier
    ("10.0.0.1", "tcp", 22, None, "denied", "sec", "deny", ["log"]),  # Log then Deny
    ("10.0.0.1", "tcp", 8080, None, "allowed", "web", "allow", ["pass"]),  # Pass, then the default tier
    ("10.0.0.1", "tcp", 9000, None, "denied", "default", "end-of-tier-deny", ["pass"]),
    ("10.0.0.1", "icmp", None, 8, "allowed", "web", "allow", ["pass"]),  # notICMP type 13
    ("10.0.0.1", "icmp", None, 13, "denied", "sec", "deny", []),
    ("10.0.1.1", "tcp", 8080, None, "allowed", "web", "allow", ["pass"]),  # a GNP selector: every namespace
    ("10.9.9.9", "tcp", 8080, None, "denied", "security", "end-of-tier-deny", []),  # no pass: the tier ends
])
def test_calico_tiers_cells(src: str, proto: str, port: int | None, icmp: int | None, verdict: str, name: str,
                            action: str, trace: list[str]) -> None:
    pkt = Packet(src, "10.0.0.2", proto, port, icmp_type=icmp)
    d = decide(calico_program(), "tabsrv", "ingress", pkt)
    assert (d.verdict, d.ref.name, d.ref.action) == (verdict, name, action)
    assert [t.action for t in d.trace] == trace
