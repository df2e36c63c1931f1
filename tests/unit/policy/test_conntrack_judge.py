"""The conntrack cutter's judge (felix_like.conntrack) on programs the real compiler produces: an
established flow is cut exactly when the program now denies it, in its original direction."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from datamodel.resources import parse_resource
from datamodel.resources.kubernetes import NetworkPolicy
from felix_like.conntrack import Flow, Unknown, flow_allowed, rule_matches
from felix_like.policy import EMPTY, EndpointInfo, compile_program, delta_commands, narrows

TCP, UDP, ICMP = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP


def np(spec: dict[str, Any], name: str = "p", ns: str = "prod") -> NetworkPolicy:
    return NetworkPolicy.model_validate({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


EPS = [
    EndpointInfo("web", "prod", (("app", "web"),), ("10.0.0.1",), (("http", "TCP", 8080),), "n1", "tabweb"),
    EndpointInfo("cli", "prod", (("role", "client"),), ("10.0.0.2",), (), "n1", "tabcli"),
    EndpointInfo("mon", "ops", (("role", "monitor"),), ("10.0.1.1",), (), "n2", "tabmon"),
]


def program(*pols: NetworkPolicy) -> Any:
    return compile_program(pols, EPS, {}, "n1")


def test_selector_port_and_named_port_verdicts() -> None:
    p = program(np({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "monitor"}}}],
         "ports": [{"port": 80}, {"port": "http"}]},
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.2/32"]}}], "ports": [{"protocol": "UDP"}]}]}))
    assert flow_allowed(p, Flow("10.0.1.1", "10.0.0.1", TCP, 1234, 80), None, "tabweb")
    assert flow_allowed(p, Flow("10.0.1.1", "10.0.0.1", TCP, 1234, 8080), None, "tabweb")
    assert not flow_allowed(p, Flow("10.0.1.1", "10.0.0.1", TCP, 1234, 81), None, "tabweb")
    assert not flow_allowed(p, Flow("10.0.1.1", "10.0.0.1", ICMP), None, "tabweb")
    assert not flow_allowed(p, Flow("10.0.0.2", "10.0.0.1", TCP, 1234, 80), "tabcli", "tabweb")
    assert not flow_allowed(p, Flow("10.0.0.2", "10.0.0.1", UDP, 1234, 53), "tabcli", "tabweb")  # excepted
    assert flow_allowed(p, Flow("10.0.0.9", "10.0.0.1", UDP, 1234, 53), None, "tabweb")
    assert flow_allowed(p, Flow("10.0.0.1", "10.0.0.2", TCP, 1234, 80), "tabweb", "tabcli")  # not isolated


def test_egress_and_fail_closed() -> None:
    p = program(np({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]}]}))
    assert flow_allowed(p, Flow("10.0.0.2", "10.0.0.1", TCP, 1, 8080), "tabcli", "tabweb")
    assert not flow_allowed(p, Flow("10.0.0.2", "10.0.0.1", TCP, 1, 80), "tabcli", "tabweb")
    assert not flow_allowed(p, Flow("10.0.0.2", "10.9.9.9", TCP, 1, 8080), "tabcli", None)
    assert not flow_allowed(p, Flow("10.0.0.9", "10.0.0.8", TCP, 1, 80), None, "tabunknown")  # not programmed


def test_narrowing_is_detected_and_unknown_syntax_is_never_judged() -> None:
    open_ = program()
    deny = program(np({"podSelector": {}, "ingress": []}))
    assert not narrows(delta_commands(EMPTY, open_))
    assert narrows(delta_commands(open_, deny))
    with pytest.raises(Unknown):
        rule_matches("ct mark 0x1 accept", Flow("10.0.0.1", "10.0.0.2", TCP, 1, 2), deny)


def cnp(spec: dict[str, Any]) -> Any:
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                           "metadata": {"name": "icmp", "namespace": "prod"}, "spec": spec})


def test_icmp_type_and_code_rules_are_judged() -> None:
    """Calico's icmp/notICMP matches (type, type + code, negated) on the original direction's type
    and code conntrack records: an echo request (8/0) allowed, other types and other protocols not."""
    echo = Flow("10.0.1.1", "10.0.0.1", ICMP, icmp_type=8, icmp_code=0)
    timestamp = Flow("10.0.1.1", "10.0.0.1", ICMP, icmp_type=13, icmp_code=0)
    tcp = Flow("10.0.1.1", "10.0.0.1", TCP, 1234, 80)
    web = "app == 'web'"
    p = program(cnp({"selector": web, "ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}]}))
    assert flow_allowed(p, echo, None, "tabweb")
    assert not flow_allowed(p, timestamp, None, "tabweb")
    assert not flow_allowed(p, tcp, None, "tabweb")
    p = program(cnp({"selector": web, "ingress": [
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 1}}]}))
    assert not flow_allowed(p, echo, None, "tabweb")  # code 0 is not code 1
    p = program(cnp({"selector": web, "ingress": [
        {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 13}}]}))
    assert flow_allowed(p, echo, None, "tabweb")
    assert not flow_allowed(p, timestamp, None, "tabweb")
    p = program(cnp({"selector": web, "ingress": [
        {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 8, "code": 0}}]}))
    assert not flow_allowed(p, echo, None, "tabweb")
    assert flow_allowed(p, timestamp, None, "tabweb")
    with pytest.raises(Unknown):
        rule_matches("icmp type echo-request accept", echo, p)
