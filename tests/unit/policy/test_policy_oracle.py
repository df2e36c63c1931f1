"""The truth-table suite's reference evaluator against hand-written verdicts from the Kubernetes docs
(the oracle must be right on its own: it shares no code with the compiler it judges)."""

from __future__ import annotations

from tests.policy_oracle import k8s as o


def cluster(*policies: dict) -> o.Cluster:
    pods = {
        "web": o.PodSpec("web", "prod", "a", {"app": "web"}, "10.0.0.1", (("http", "TCP", 8080),)),
        "cli": o.PodSpec("cli", "prod", "b", {"role": "client"}, "10.0.0.2"),
        "dev": o.PodSpec("dev", "dev", "a", {"role": "client"}, "10.0.1.1"),
    }
    return o.Cluster(pods, {"dev": {"team": "blue"}}, list(policies))


def knp(ns: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": ns},
            "spec": spec}


def test_no_policy_allows_everything_and_deny_isolates() -> None:
    assert o.allowed(cluster(), "cli", "web", "TCP", 80)
    c = cluster(knp("prod", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []}))
    assert not o.allowed(c, "cli", "web", "TCP", 80)
    assert not o.allowed(c, "cli", "web", "ICMP")
    assert o.allowed(c, "web", "cli", "TCP", 80)  # egress not isolated, cli not selected
    assert o.allowed(c, "node:a", "web", "TCP", 80)  # its own node
    assert o.allowed(c, "web", "web", "TCP", 80)  # itself


def test_peer_and_versus_or() -> None:
    both = {"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchLabels": {"role": "x"}}}
    c = cluster(knp("prod", {"podSelector": {}, "ingress": [{"from": [both]}]}))
    assert not o.allowed(c, "dev", "web", "TCP", 80)
    either = [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}, {"podSelector": {"matchLabels": {"role": "x"}}}]
    c = cluster(knp("prod", {"podSelector": {}, "ingress": [{"from": either}]}))
    assert o.allowed(c, "dev", "web", "TCP", 80)
    assert not o.allowed(c, "cli", "web", "TCP", 80)
    # podSelector alone: the policy's own namespace only
    clients = {"podSelector": {"matchLabels": {"role": "client"}}}
    c = cluster(knp("prod", {"podSelector": {}, "ingress": [{"from": [clients]}]}))
    assert o.allowed(c, "cli", "web", "TCP", 80) and not o.allowed(c, "dev", "web", "TCP", 80)


def test_ports_ranges_named_and_icmp() -> None:
    c = cluster(knp("prod", {"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8080},
                                                                      {"protocol": "UDP", "port": "http"}]}]}))
    assert o.allowed(c, "dev", "web", "TCP", 8080) and not o.allowed(c, "dev", "web", "TCP", 8081)
    assert not o.allowed(c, "dev", "web", "UDP", 8080)  # the named port is TCP
    assert not o.allowed(c, "dev", "web", "ICMP")
    c = cluster(knp("prod", {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}))
    assert o.allowed(c, "dev", "web", "TCP", 8080) and not o.allowed(c, "dev", "web", "TCP", 80)


def test_ipblock_except_and_egress_inference() -> None:
    c = cluster(knp("prod", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                                                 "except": ["10.0.1.0/24"]}}]}]}))
    assert o.allowed(c, "cli", "web", "UDP", 53) and not o.allowed(c, "dev", "web", "UDP", 53)
    egress = knp("dev", {"podSelector": {}, "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]})
    assert o.policy_types(egress) == ["Ingress", "Egress"]
    c = cluster(egress)
    assert o.allowed(c, "dev", "web", "UDP", 53) and not o.allowed(c, "dev", "web", "TCP", 53)
    assert not o.allowed(c, "web", "dev", "TCP", 80)  # Ingress inferred too: dev isolated for ingress


def test_calico_tiers_pass_deny_and_network_sets() -> None:
    from tests.policy_oracle import calico as c

    base = cluster()
    cl = c.CalicoCluster(base.pods, {"dev": {"team": "blue"}}, [
        {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "sec"}, "spec": {"order": 1}},
        {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
         "spec": {"tier": "sec", "selector": "app == 'web'", "types": ["Ingress"], "ingress": [
             {"action": "Deny", "source": {"namespaceSelector": "team == 'blue'"}},
             {"action": "Pass", "protocol": "TCP"}]}},
        knp("prod", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}),
    ])
    assert not c.allowed(cl, "dev", "web", "TCP", 80)  # denied in tier sec before the default tier's allow
    assert c.allowed(cl, "cli", "web", "TCP", 80)  # passed on, then allowed by the Kubernetes policy
    assert not c.allowed(cl, "cli", "web", "TCP", 81)  # passed on, default tier's end
    assert not c.allowed(cl, "cli", "web", "UDP", 80)  # no rule of tier sec matched: its end of tier
    assert c.allowed(cl, "web", "cli", "TCP", 80)  # cli is selected by nothing: its profile allows
    cl.policies = [{"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                    "metadata": {"name": "n", "namespace": "prod"},
                    "spec": {"selector": "app == 'web'", "types": ["Ingress"],
                             "ingress": [{"action": "Allow", "source": {"selector": "kind == 'trusted'"}}]}}]
    cl.netsets = [c.NetSet("t", "prod", {"kind": "trusted"}, ("10.0.1.0/24",))]
    assert c.allowed(cl, "dev", "web", "ICMP") and not c.allowed(cl, "cli", "web", "ICMP")
