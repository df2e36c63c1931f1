"""Golden tests of the nft the compiler renders for representative Kubernetes policies."""

from __future__ import annotations

from typing import Any

from controller.node.policy import endpoint_info
from datamodel.resources.kubernetes import NetworkPolicy
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from felix_like.policy import (
    EMPTY,
    compile_program,
    delta_commands,
    full_commands,
    peer_key,
    policy_chain,
    policy_rules,
    port_set_name,
    set_name,
    target_key,
)


def np(spec: dict[str, Any], name: str = "p", ns: str = "prod") -> NetworkPolicy:
    return NetworkPolicy.model_validate({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


def test_ingress_rules_golden() -> None:
    pol = np({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{
        "from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                 {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.0.5.0/24"]}}],
        "ports": [{"port": 80}, {"protocol": "SCTP", "port": 9000, "endPort": 9010}, {"port": "http"}],
    }]})
    peer = set_name(("prod", 'role == "client"', None))
    named = port_set_name((target_key(pol), "http"))
    assert policy_rules(pol, "ingress") == (
        f"ip saddr @{peer} meta l4proto tcp th dport 80 accept",
        f"ip saddr @{peer} meta l4proto sctp th dport 9000-9010 accept",
        f"ip saddr @{peer} ip daddr . meta l4proto . th dport @{named} accept",
        "ip saddr 10.0.0.0/8 ip saddr != { 10.0.5.0/24, 10.1.0.0/16 } meta l4proto tcp th dport 80 accept",
        "ip saddr 10.0.0.0/8 ip saddr != { 10.0.5.0/24, 10.1.0.0/16 } meta l4proto sctp th dport 9000-9010 accept",
        f"ip saddr 10.0.0.0/8 ip saddr != {{ 10.0.5.0/24, 10.1.0.0/16 }} ip daddr . meta l4proto . th dport @{named}"
        " accept",
    )


def test_allow_all_isolate_and_egress_golden() -> None:
    assert policy_rules(np({"ingress": [{}]}), "ingress") == ("accept",)
    assert policy_rules(np({"ingress": []}), "ingress") == ()
    assert policy_rules(np({"podSelector": {}}), "ingress") == ()
    egress = np({"egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                     "podSelector": {"matchExpressions": [{"key": "x", "operator": "Exists"}]}}],
                             "ports": [{"protocol": "UDP", "port": 53}, {"port": "dns"}]}]})
    key = peer_key("prod", egress.spec.egress[0].to[0])  # type: ignore[index]
    assert key == (None, "has(x)", 'team == "a"')
    assert policy_rules(egress, "egress") == (
        f"ip daddr @{set_name(key)} meta l4proto udp th dport 53 accept",
        f"ip daddr . meta l4proto . th dport @{port_set_name((key, 'dns'))} accept",  # the peer's named port
    )


def _wep(name: str, labels: dict[str, str], ip: str, node: str = "n1") -> WorkloadEndpoint:
    return WorkloadEndpoint.model_validate({
        "metadata": {"name": name, "namespace": "prod", "labels": labels},
        "spec": {"node": node, "ipNetworks": [f"{ip}/32"], "interfaceName": f"tab{name}",
                 "ports": [{"name": "http", "port": 8080}]}})


def test_program_and_table_golden() -> None:
    pol = np({"podSelector": {"matchLabels": {"app": "web"}},
              "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "http"}]}]})
    eps = [endpoint_info("k1", _wep("w1", {"app": "web"}, "10.0.0.1")),
           endpoint_info("k2", _wep("w2", {}, "10.0.0.2")),
           endpoint_info("k3", _wep("w3", {"app": "web"}, "10.0.0.3", node="n2"))]
    program = compile_program([pol], eps, {}, "n1")
    chain = policy_chain("prod", "p", "ingress")
    peers = set_name(("prod", "all()", None))
    named = port_set_name((target_key(pol), "http"))
    assert program.ingress == {"tabw1": (chain,), "tabw2": None}
    assert program.egress == {"tabw1": None, "tabw2": None}
    assert program.sets == {peers: ("ipv4_addr", frozenset({"10.0.0.1", "10.0.0.2", "10.0.0.3"})),
                            named: ("ipv4_addr . inet_proto . inet_service",
                                    frozenset({"10.0.0.1 . tcp . 8080", "10.0.0.3 . tcp . 8080"}))}
    cmds = full_commands(program)
    assert cmds[:3] == ["add table inet tabby-policy", "delete table inet tabby-policy", "add table inet tabby-policy"]
    text = "\n".join(cmds)
    for line in (
        'add rule inet tabby-policy fwd-egress iifname != "tab*" accept',
        "add rule inet tabby-policy fwd-ingress ct state established,related accept",
        "add rule inet tabby-policy fwd-ingress ct state invalid drop",
        "add rule inet tabby-policy fwd-ingress oifname vmap @ingress",
        'add rule inet tabby-policy fwd-ingress drop comment "fail-closed: workload interface not programmed yet"',
        f"add rule inet tabby-policy e-tabw1-i jump {chain}",
        "add rule inet tabby-policy e-tabw1-i drop",
        'add element inet tabby-policy ingress { "tabw1" : jump e-tabw1-i, "tabw2" : accept }',
    ):
        assert line in cmds, (line, text)
    # a new (remote, unlabelled) pod is one element add in the peer set, nothing else: the named-port
    # set holds the policy's own pods (app=web) only
    eps.append(endpoint_info("k4", _wep("w4", {}, "10.0.0.4", node="n2")))
    after = compile_program([pol], eps, {}, "n1")
    assert delta_commands(program, after) == [f"add element inet tabby-policy {peers} {{ 10.0.0.4 }}"]
    # back to nothing: map entries, then chains, then sets go
    gone = delta_commands(program, EMPTY)
    assert gone.index('delete element inet tabby-policy ingress { "tabw1" }') < gone.index(
        "delete chain inet tabby-policy e-tabw1-i") < gone.index(f"delete chain inet tabby-policy {chain}") < \
        gone.index(f"delete set inet tabby-policy {peers}")


def test_touched_delta_equals_full_delta() -> None:
    """The manager diffs only the names a batch touched; that must equal diffing everything."""
    from felix_like.policy import Touched

    pol = np({"podSelector": {"matchLabels": {"app": "web"}},
              "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "http"}]}]})
    pol2 = np({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {}}]}]}, name="q")
    eps = [endpoint_info("k1", _wep("w1", {"app": "web"}, "10.0.0.1")),
           endpoint_info("k2", _wep("w2", {}, "10.0.0.2"))]
    before = compile_program([pol], eps, {}, "n1")
    after = compile_program([pol2], [*eps[1:], endpoint_info("k3", _wep("w3", {"app": "web"}, "10.0.0.3"))],
                            {}, "n1")
    touched = Touched(
        {n for n in set(before.sets) | set(after.sets) if before.sets.get(n) != after.sets.get(n)},
        {n for n in set(before.chains) | set(after.chains) if before.chains.get(n) != after.chains.get(n)},
        {i for i in set(before.ingress) | set(after.ingress)
         if (before.ingress.get(i), before.egress.get(i), i in before.ingress)
         != (after.ingress.get(i), after.egress.get(i), i in after.ingress)})
    assert delta_commands(before, after, touched) == delta_commands(before, after)
    assert delta_commands(before, after, Touched()) == []
