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
    peer6 = set_name(("prod", 'role == "client"', None), 6)
    named = port_set_name((target_key(pol), "http"))
    named6 = port_set_name((target_key(pol), "http"), 6)
    assert policy_rules(pol, "ingress", flow_logs=False) == (
        # a selector peer: one rule per family, each with that family's set (IPv6 policed alike)
        f"ip saddr @{peer} meta l4proto tcp th dport 80 accept",
        f"ip6 saddr @{peer6} meta l4proto tcp th dport 80 accept",
        f"ip saddr @{peer} meta l4proto sctp th dport 9000-9010 accept",
        f"ip6 saddr @{peer6} meta l4proto sctp th dport 9000-9010 accept",
        f"ip saddr @{peer} ip daddr . meta l4proto . th dport @{named} accept",
        f"ip6 saddr @{peer6} ip6 daddr . meta l4proto . th dport @{named6} accept",
        "ip saddr 10.0.0.0/8 ip saddr != { 10.0.5.0/24, 10.1.0.0/16 } meta l4proto tcp th dport 80 accept",
        "ip saddr 10.0.0.0/8 ip saddr != { 10.0.5.0/24, 10.1.0.0/16 } meta l4proto sctp th dport 9000-9010 accept",
        f"ip saddr 10.0.0.0/8 ip saddr != {{ 10.0.5.0/24, 10.1.0.0/16 }} ip daddr . meta l4proto . th dport @{named}"
        " accept",
    )


def test_allow_all_isolate_and_egress_golden() -> None:
    assert policy_rules(np({"ingress": [{}]}), "ingress", flow_logs=False) == ("accept",)
    assert policy_rules(np({"ingress": []}), "ingress") == ()
    assert policy_rules(np({"podSelector": {}}), "ingress") == ()
    egress = np({"egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                     "podSelector": {"matchExpressions": [{"key": "x", "operator": "Exists"}]}}],
                             "ports": [{"protocol": "UDP", "port": 53}, {"port": "dns"}]}]})
    key = peer_key("prod", egress.spec.egress[0].to[0])  # type: ignore[index]
    assert key == (None, "has(x)", 'team == "a"')
    assert policy_rules(egress, "egress", flow_logs=False) == (
        f"ip daddr @{set_name(key)} meta l4proto udp th dport 53 accept",
        f"ip6 daddr @{set_name(key, 6)} meta l4proto udp th dport 53 accept",
        f"ip daddr . meta l4proto . th dport @{port_set_name((key, 'dns'))} accept",  # the peer's named port
        f"ip6 daddr . meta l4proto . th dport @{port_set_name((key, 'dns'), 6)} accept",
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
    program = compile_program([pol], eps, {}, "n1", flow_logs=False)
    chain = policy_chain("prod", "p", "ingress")
    peers = set_name(("prod", "all()", None))
    named = port_set_name((target_key(pol), "http"))
    assert program.ingress["tabw1"] is not None and program.ingress["tabw1"].chains == (chain,)
    assert program.ingress["tabw2"] is None
    assert program.egress == {"tabw1": None, "tabw2": None}
    assert program.sets == {peers: ("ipv4_addr", frozenset({"10.0.0.1", "10.0.0.2", "10.0.0.3"})),
                            named: ("ipv4_addr . inet_proto . inet_service",
                                    frozenset({"10.0.0.1 . tcp . 8080", "10.0.0.3 . tcp . 8080"})),
                            set_name(("prod", "all()", None), 6): ("ipv6_addr", frozenset()),
                            port_set_name((target_key(pol), "http"), 6): ("ipv6_addr . inet_proto . inet_service",
                                                                           frozenset())}
    cmds = full_commands(program, flow_logs=False)
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
    after = compile_program([pol], eps, {}, "n1", flow_logs=False)
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


def test_flow_log_golden() -> None:
    """With flow logging every verdict carries ``log prefix "tabby:<id>" group 1`` (NFLOG group 1)
    before it: policy rules, the end-of-tier deny, the profile allow of a non-isolated pod and the
    fail-closed drops; established/related stays accepted first, unlogged. Without it, no log
    statement is rendered at all."""
    from felix_like.policy_ids import FAIL_CLOSED_REFS, RuleRef, rule_id

    pol = np({"podSelector": {"matchLabels": {"app": "web"}},
              "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}, {"ports": [{"port": 443}]}]})
    eps = [endpoint_info("k1", _wep("w1", {"app": "web"}, "10.0.0.1")),
           endpoint_info("k2", _wep("w2", {}, "10.0.0.2"))]
    program = compile_program([pol], eps, {}, "n1")
    chain = policy_chain("prod", "p", "ingress")
    peers = set_name(("prod", "all()", None))
    r0 = RuleRef("default", "KubernetesNetworkPolicy", "prod", "p", "ingress", 0, "allow")
    r1 = RuleRef("default", "KubernetesNetworkPolicy", "prod", "p", "ingress", 1, "allow")
    eot = RuleRef("default", "Tier", "", "default", "ingress", -1, "end-of-tier-deny")
    kns = {d: RuleRef("", "Profile", "", "kns.prod", d, -1, "allow") for d in ("ingress", "egress")}
    ids = {ref: rule_id(ref) for ref in (r0, r1, eot, *kns.values())}
    assert all(len(i) <= 16 for i in ids.values()) and len(set(ids.values())) == len(ids)
    assert program.chains[chain] == (
        f'ip saddr @{peers} meta l4proto tcp th dport 80 log prefix "tabby:{ids[r0]}" group 1 accept',
        f'ip6 saddr @{set_name(("prod", "all()", None), 6)} meta l4proto tcp th dport 80 log prefix'
        f' "tabby:{ids[r0]}" group 1 accept',  # both families' rules of one Kubernetes rule: one id
        f'meta l4proto tcp th dport 443 log prefix "tabby:{ids[r1]}" group 1 accept',
    )
    assert program.rule_refs == {**FAIL_CLOSED_REFS, **{i: r for r, i in ids.items()}}
    cmds = full_commands(program)
    for line in (
        "add rule inet tabby-policy fwd-ingress ct state established,related accept",
        f"add rule inet tabby-policy e-tabw1-i jump {chain}",
        f'add rule inet tabby-policy e-tabw1-i log prefix "tabby:{ids[eot]}" group 1 drop',
        f'add rule inet tabby-policy e-tabw2-i log prefix "tabby:{ids[kns["ingress"]]}" group 1 accept',
        f'add rule inet tabby-policy e-tabw1-e log prefix "tabby:{ids[kns["egress"]]}" group 1 accept',
        'add element inet tabby-policy ingress { "tabw1" : jump e-tabw1-i, "tabw2" : jump e-tabw2-i }',
    ):
        assert line in cmds, (line, "\n".join(cmds))
    fail_closed = [c for c in cmds if "fail-closed" in c]
    assert [c.split(" group 1 ")[0].rsplit('"tabby:', 1)[1].rstrip('"') for c in fail_closed] == \
        [i for i, r in FAIL_CLOSED_REFS.items() if r.direction == "egress"] + \
        [i for i, r in FAIL_CLOSED_REFS.items() if r.direction == "ingress"]
    # established traffic: accepted before the vmap, never logged
    for base in ("fwd-egress", "fwd-ingress"):
        rules = [c for c in cmds if c.startswith(f"add rule inet tabby-policy {base} ")]
        assert "established" in rules[1] and "log" not in rules[1] and "vmap" in rules[3]

    # the same program without flow logs: not a single log statement anywhere
    quiet = full_commands(compile_program([pol], eps, {}, "n1", flow_logs=False), flow_logs=False)
    assert not [c for c in quiet if "log" in c.split()]
    assert "add rule inet tabby-policy e-tabw1-i drop" in quiet
    assert 'add element inet tabby-policy ingress { "tabw1" : jump e-tabw1-i, "tabw2" : accept }' in quiet
    # the ids are stable: the same policy compiles to the same ids
    assert compile_program([pol], eps, {}, "n1").rule_refs == program.rule_refs


def test_flow_logs_setting() -> None:
    """TABBY_FLOW_LOGS: on by default, false turns the flow-log statements off, anything else refused."""
    import pytest

    from controller.node.config import NodeConfig, NodeConfigError

    base = {"NODENAME": "n1", "ETCD_ENDPOINTS": "http://x:1"}
    assert NodeConfig.from_env(base).flow_logs
    assert not NodeConfig.from_env({**base, "TABBY_FLOW_LOGS": "False"}).flow_logs
    assert NodeConfig.from_env({**base, "TABBY_FLOW_LOGS": "true"}).flow_logs
    with pytest.raises(NodeConfigError, match=r"^TABBY_FLOW_LOGS: "):
        NodeConfig.from_env({**base, "TABBY_FLOW_LOGS": "off"})
