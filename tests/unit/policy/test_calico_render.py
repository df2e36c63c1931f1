"""Golden tests of the nft the compiler renders for Calico's policy kinds: rule fields, tiers and
their order, Pass/Deny/Log, profiles, GlobalNetworkPolicy namespaceSelector, network sets, IPv6."""

from __future__ import annotations

from typing import Any

from controller.node.policy import endpoint_info, netset_info
from datamodel.resources import parse_resource
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from felix_like.policy import (
    PASS_MARK,
    Refs,
    calico_rules,
    chain_of,
    compile_program,
    endpoint_chain,
    full_commands,
    port_set_name,
    profile_chain,
    set_name,
    target_key,
)
from felix_like.policy_ids import RuleRef, rule_id


def doc(kind: str, spec: dict[str, Any], name: str = "p", ns: str | None = "prod",
        labels: dict[str, str] | None = None) -> Any:
    meta: dict[str, Any] = {"name": name, **({"namespace": ns} if ns else {}), **({"labels": labels} if labels else {})}
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})


def wep(name: str, labels: dict[str, str], ip: str, ns: str = "prod", node: str = "n1",
        profiles: list[str] | None = None) -> Any:
    return endpoint_info(f"k-{name}", WorkloadEndpoint.model_validate({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"node": node, "ipNetworks": [f"{ip}/32"], "interfaceName": f"tab{name}",
                 "ports": [{"name": "http", "port": 8080}], **({"profiles": profiles} if profiles else {})}}))


MARK = f"{PASS_MARK:#010x}"
CLEAR = f"meta mark set meta mark and {0xFFFFFFFF ^ PASS_MARK:#010x}"
NOT_PASSED = f"meta mark and {MARK} == 0"


def test_rule_fields_golden() -> None:
    """action, protocol/notProtocol, icmp/notICMP (type, code), ipVersion, source/destination nets,
    notNets, selector, notSelector, namespaceSelector, ports (numbers, ranges, named), notPorts."""
    pol = doc("NetworkPolicy", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'fe'", "notNets": ["10.1.0.0/16"]},
         "destination": {"ports": [80, "8000:8080", "http"]}},
        {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
        {"action": "Allow", "protocol": "ICMPv6", "notICMP": {"type": 128}},
        {"action": "Log", "notProtocol": "UDP", "source": {"nets": ["10.0.0.0/8", "fd00::/64", "10.2.0.0/16"]}},
        {"action": "Pass", "ipVersion": 6},
        {"action": "Allow", "source": {"namespaceSelector": "team == 'a'", "notSelector": "x == 'y'"}},
        {"action": "Deny", "protocol": 47},
        {"action": "Allow", "protocol": "UDP", "destination": {"notPorts": [53]},
         "source": {"notNets": ["10.9.0.0/16", "fd09::/64"]}},
        {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 3, "code": 4}},
    ]})
    fe = set_name(("prod", 'role == "fe"', None, "all"))  # a namespaced policy's selector: its namespace
    fe6 = set_name(("prod", 'role == "fe"', None, "all"), 6)
    team_key = (None, "all()", 'team == "a"', "all")  # namespaceSelector alone: every endpoint there
    not_x_key = (None, 'x == "y"', 'team == "a"', "all")
    team, not_x = set_name(team_key), set_name(not_x_key)
    http = port_set_name((target_key(pol), "http"))  # ingress: the policy's own endpoint's named port
    http6 = port_set_name((target_key(pol), "http"), 6)
    assert fe.startswith("c-")  # interval sets: endpoints and network-set CIDRs
    refs = Refs()
    log_id = rule_id(RuleRef("default", "NetworkPolicy", "prod", "p", "ingress", 3, "log"))
    assert calico_rules(pol, "ingress", refs, flow_logs=False) == (
        f"meta nfproto ipv4 meta l4proto tcp ip saddr != {{ 10.1.0.0/16 }} ip saddr @{fe} th dport {{ 80, 8000-8080 }}"
        " accept",
        f"meta nfproto ipv4 meta l4proto tcp ip saddr != {{ 10.1.0.0/16 }} ip saddr @{fe}"
        f" ip daddr . meta l4proto . th dport @{http} accept",
        # IPv6: the same selector's IPv6 set; the IPv4 notNets do not constrain IPv6 packets
        f"meta nfproto ipv6 meta l4proto tcp ip6 saddr @{fe6} th dport {{ 80, 8000-8080 }} accept",
        f"meta nfproto ipv6 meta l4proto tcp ip6 saddr @{fe6} ip6 daddr . meta l4proto . th dport @{http6} accept",
        "meta nfproto ipv4 meta l4proto icmp icmp type 8 icmp code 0 drop",
        "meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type != 128 accept",
        # Log goes on (no verdict); 10.2.0.0/16 lies inside 10.0.0.0/8; one rule per family
        f'meta nfproto ipv4 meta l4proto != udp ip saddr 10.0.0.0/8 log prefix "tabby:{log_id}" group 1',
        f'meta nfproto ipv6 meta l4proto != udp ip6 saddr fd00::/64 log prefix "tabby:{log_id}" group 1',
        f"meta nfproto ipv6 meta mark set meta mark | {MARK} return",
        f"meta nfproto ipv4 ip saddr @{team} ip saddr != @{not_x} accept",
        f"meta nfproto ipv6 ip6 saddr @{set_name(team_key, 6)} ip6 saddr != @{set_name(not_x_key, 6)} accept",
        "meta l4proto 47 drop",
        # notNets constrain their own family only
        "meta nfproto ipv4 meta l4proto udp ip saddr != { 10.9.0.0/16 } th dport != { 53 } accept",
        "meta nfproto ipv6 meta l4proto udp ip6 saddr != { fd09::/64 } th dport != { 53 } accept",
        "meta nfproto ipv4 meta l4proto icmp icmp type . icmp code != { 3 . 4 } accept",
    )
    assert refs.sets == {("prod", 'role == "fe"', None, "all"), (None, "all()", 'team == "a"', "all"),
                         (None, 'x == "y"', 'team == "a"', "all")}
    # the egress side: a destination selector's named port is the peer's
    eg = doc("NetworkPolicy", {"egress": [{"action": "Allow", "protocol": "TCP",
                                           "destination": {"selector": "db == 'x'", "ports": ["http"]}}]})
    db = ("prod", 'db == "x"', None, "all")
    assert calico_rules(eg, "egress", Refs(), flow_logs=False) == (
        f"meta nfproto ipv4 meta l4proto tcp ip daddr @{set_name(db)} ip daddr . meta l4proto . th dport"
        f" @{port_set_name((db, 'http'))} accept",
        f"meta nfproto ipv6 meta l4proto tcp ip6 daddr @{set_name(db, 6)} ip6 daddr . meta l4proto . th dport"
        f" @{port_set_name((db, 'http'), 6)} accept")


def test_tier_and_policy_order_golden() -> None:
    """Tiers by order (none = last), policies by order (none = last, ties by name), a Kubernetes
    policy at order 1000 in the default tier; Pass skips the rest of its tier; a tier's
    defaultAction (Deny: the end-of-tier drop; Pass: on) applies only to endpoints it selected."""
    security = doc("Tier", {"order": 100}, name="security", ns=None)
    late = doc("Tier", {}, name="late", ns=None)  # no order: after every ordered tier (default is 1,000,000)
    passing = doc("Tier", {"order": 200, "defaultAction": "Pass"}, name="platform", ns=None)
    tiers = {t.name: t for t in (security, late, passing)}
    a = doc("GlobalNetworkPolicy", {"tier": "security", "order": 10, "selector": "app == 'web'",
                                    "ingress": [{"action": "Deny", "source": {"selector": "bad == 'y'"}},
                                                {"action": "Pass"}]}, name="a", ns=None)
    b = doc("NetworkPolicy", {"tier": "security", "selector": "all()", "ingress": [{"action": "Allow"}]}, name="b")
    c = doc("NetworkPolicy", {"tier": "platform", "order": 5, "ingress": [{"action": "Deny", "protocol": "UDP"}]},
            name="c")
    d = doc("NetworkPolicy", {"order": 1000, "ingress": [{"action": "Allow", "protocol": "TCP"}]}, name="a-first")
    e = doc("NetworkPolicy", {"order": 999.5, "ingress": [{"action": "Allow", "protocol": "UDP"}]}, name="zz")
    k8s = parse_resource({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                          "metadata": {"name": "k", "namespace": "prod"}, "spec": {"ingress": [{}]}})
    f = doc("NetworkPolicy", {"tier": "late", "ingress": [{"action": "Allow"}]}, name="f")
    w = wep("w1", {"app": "web"}, "10.0.0.1")
    program = compile_program([f, k8s, e, d, c, b, a], [w], {}, "n1", flow_logs=False, tiers=tiers)
    plan = program.ingress["tabw1"]
    assert plan is not None
    ch = {p.name: chain_of(p, "ingress") for p in (a, b, c, d, e, f, k8s)}
    assert plan.rules == (
        CLEAR,  # tier security (100): a Pass rule in it
        f"{NOT_PASSED} jump {ch['a']}",  # order 10
        f"{NOT_PASSED} jump {ch['b']}",  # no order: last in its tier
        f"{NOT_PASSED} drop",  # security's end of tier (Deny), unless passed
        f"jump {ch['c']}",  # platform (200): defaultAction Pass, so no end-of-tier drop
        f"jump {ch['zz']}",  # default tier: order 999.5 ...
        f"jump {ch['a-first']}",  # ... then 1000 ties by name: prod/a-first < prod/knp.default.k
        f"jump {ch['k']}",
        "drop",  # default tier: Deny, no Pass in it: the verdict is final, the late tier never runs
    )
    bad = set_name((None, 'bad == "y"', None, "all"))  # a global policy's selector: every namespace
    bad6 = set_name((None, 'bad == "y"', None, "all"), 6)
    assert program.chains[ch["a"]] == (f"meta nfproto ipv4 ip saddr @{bad} drop",
                                       f"meta nfproto ipv6 ip6 saddr @{bad6} drop",
                                       f"meta mark set meta mark | {MARK} return")
    # a tier with no policy selecting the endpoint is skipped: no end-of-tier drop for w2
    w2 = wep("w2", {"app": "db"}, "10.0.0.2")
    only_b = compile_program([a, b], [w2], {}, "n1", flow_logs=False, tiers=tiers).ingress["tabw2"]
    assert only_b is not None and only_b.rules == (f"jump {ch['b']}", "drop")  # a (with its Pass) selects w1 only
    # the tier of an endpoint's policies after a Pass: profiles (kns.prod, implicit allow) decide
    passing_only = doc("GlobalNetworkPolicy", {"tier": "security", "ingress": [{"action": "Pass"}]}, name="g", ns=None)
    plan = compile_program([passing_only], [w2], {}, "n1", flow_logs=False, tiers=tiers).ingress["tabw2"]
    assert plan is not None and plan.rules == (
        CLEAR, f"{NOT_PASSED} jump {chain_of(passing_only, 'ingress')}", f"{NOT_PASSED} drop", CLEAR, "accept")
    # flow logs: the end of tier carries its tier's id
    logged = compile_program([b], [w2], {}, "n1", tiers=tiers).ingress["tabw2"]
    eot = rule_id(RuleRef("security", "Tier", "", "security", "ingress", -1, "end-of-tier-deny"))
    assert logged is not None and logged.rules[-1] == f'log prefix "tabby:{eot}" group 1 drop'


def test_profiles_decide_after_the_tiers() -> None:
    """A WorkloadEndpoint's profiles in order; kns.<ns> without a document allows (as under
    Kubernetes); a Profile document's rules replace that; nothing matched = the no-profile drop."""
    prof = doc("Profile", {"ingress": [{"action": "Allow", "protocol": "TCP"}], "egress": [{"action": "Allow"}]},
               name="kns.prod", ns=None)
    w = wep("w1", {}, "10.0.0.1", profiles=["kns.prod"])
    program = compile_program([], [w], {}, "n1", profiles={"kns.prod": prof})
    chain = profile_chain("kns.prod", "ingress")
    plan = program.ingress["tabw1"]
    deny = rule_id(RuleRef("", "Profile", "", "", "ingress", -1, "no-profile-deny"))
    allow0 = rule_id(RuleRef("", "Profile", "", "kns.prod", "ingress", 0, "allow"))
    assert plan is not None and plan.rules == (f"jump {chain}", f'log prefix "tabby:{deny}" group 1 drop')
    assert program.chains[chain] == (f'meta l4proto tcp log prefix "tabby:{allow0}" group 1 accept',)
    # without the document: the implicit allow, no chain at all when flow logs are off
    assert compile_program([], [w], {}, "n1", flow_logs=False).ingress == {"tabw1": None}
    other = wep("w2", {}, "10.0.0.2", profiles=["something-else"])
    assert compile_program([], [other], {}, "n1", flow_logs=False).ingress["tabw2"].rules == ("drop",)  # type: ignore[union-attr]


def test_global_policy_namespace_selector() -> None:
    """A GlobalNetworkPolicy applies to endpoints of every namespace; namespaceSelector narrows it
    (namespace labels, projectcalico.org/name included); selectors see projectcalico.org/namespace."""
    gnp = doc("GlobalNetworkPolicy", {"namespaceSelector": "team == 'a'", "selector": "all()",
                                      "ingress": [{"action": "Deny"}]}, name="g", ns=None)
    by_name = doc("GlobalNetworkPolicy", {"selector": "projectcalico.org/namespace == 'other'",
                                          "egress": [{"action": "Deny"}]}, name="h", ns=None)
    eps = [wep("w1", {}, "10.0.0.1", ns="prod"), wep("w2", {}, "10.0.0.2", ns="other")]
    program = compile_program([gnp, by_name], eps, {"prod": {"team": "a"}, "other": {"team": "b"}}, "n1",
                              flow_logs=False)
    assert program.ingress["tabw1"] is not None and program.ingress["tabw2"] is None
    assert program.egress["tabw1"] is None and program.egress["tabw2"] is not None
    assert program.ingress["tabw1"].chains == (chain_of(gnp, "ingress"),)  # type: ignore[union-attr]


def test_network_sets_are_selector_members() -> None:
    """NetworkSet / GlobalNetworkSet nets join the sets of the Calico selectors that match their
    labels (a namespaced set: the policy's own namespace; a global set: global selectors only);
    Kubernetes peers never match them."""
    ns_set = netset_info("ns1", doc("NetworkSet", {"nets": ["192.0.2.0/24", "192.0.2.128/25", "2001:db8::/64"]},
                                    name="ext", labels={"role": "ext"}))
    g_set = netset_info("g1", doc("GlobalNetworkSet", {"nets": ["198.51.100.0/24"]}, name="gext", ns=None,
                                  labels={"role": "ext"}))
    npol = doc("NetworkPolicy", {"egress": [{"action": "Allow", "destination": {"selector": "role == 'ext'"}}]})
    gpol = doc("GlobalNetworkPolicy", {"egress": [{"action": "Allow", "destination": {"selector": "role == 'ext'"}}]},
               name="g", ns=None)
    w = wep("w1", {"role": "ext"}, "10.0.0.1")
    program = compile_program([npol, gpol], [w, ns_set, g_set], {}, "n1", flow_logs=False)
    local = set_name(("prod", 'role == "ext"', None, "all"))
    glob = set_name((None, 'role == "ext"', None, "all"))
    assert program.sets[local] == ("ipv4_addr ; flags interval", frozenset({"10.0.0.1", "192.0.2.0/24"}))
    assert program.sets[glob] == ("ipv4_addr ; flags interval",
                                  frozenset({"10.0.0.1", "192.0.2.0/24", "198.51.100.0/24"}))
    cmds = full_commands(program, flow_logs=False)
    assert f"add set inet tabby-policy {glob} {{ type ipv4_addr ; flags interval ; }}" in cmds
    assert endpoint_chain("tabw1", "egress") in "\n".join(cmds)


def test_ipv6_is_policed_by_the_same_rules() -> None:
    """The table is inet: a dual-stack pod's IPv6 address joins the IPv6 twin of every selector set
    and named-port set, rules match both families (ipVersion picks one), and an isolated pod's IPv6
    traffic that no rule allows ends in the same drop as IPv4 (fail-closed)."""
    k8s = parse_resource({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                          "metadata": {"name": "k", "namespace": "prod"},
                          "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "c"}}}],
                                                "ports": [{"port": "http"}]}]}})
    v6only = doc("NetworkPolicy", {"selector": "app == 'web'", "egress": [
        {"action": "Allow", "ipVersion": 6, "protocol": "UDP", "destination": {"ports": [53]}}]}, name="dns6")
    srv = endpoint_info("k-srv", WorkloadEndpoint.model_validate({
        "metadata": {"name": "srv", "namespace": "prod", "labels": {"app": "web"}},
        "spec": {"node": "n1", "ipNetworks": ["10.0.0.1/32", "fd00::1/128"], "interfaceName": "tabsrv",
                 "ports": [{"name": "http", "port": 8080}]}}))
    cli = endpoint_info("k-cli", WorkloadEndpoint.model_validate({
        "metadata": {"name": "cli", "namespace": "prod", "labels": {"role": "c"}},
        "spec": {"node": "n2", "ipNetworks": ["10.0.0.2/32", "fd00::2/128"], "interfaceName": "tabcli"}}))
    program = compile_program([k8s, v6only], [srv, cli], {}, "n1", flow_logs=False)
    peer = ("prod", 'role == "c"', None)
    assert program.sets[set_name(peer)] == ("ipv4_addr", frozenset({"10.0.0.2"}))
    assert program.sets[set_name(peer, 6)] == ("ipv6_addr", frozenset({"fd00::2"}))
    http = (target_key(k8s), "http")
    assert program.sets[port_set_name(http, 6)] == ("ipv6_addr . inet_proto . inet_service",
                                                     frozenset({"fd00::1 . tcp . 8080"}))
    assert program.chains[chain_of(k8s, "ingress")] == (
        f"ip saddr @{set_name(peer)} ip daddr . meta l4proto . th dport @{port_set_name(http)} accept",
        f"ip6 saddr @{set_name(peer, 6)} ip6 daddr . meta l4proto . th dport @{port_set_name(http, 6)} accept")
    assert program.chains[chain_of(v6only, "egress")] == ("meta nfproto ipv6 meta l4proto udp th dport 53 accept",)
    # isolated both ways: whatever no rule allows, of either family, is dropped at the end
    assert program.ingress["tabsrv"].rules[-1] == "drop"  # type: ignore[union-attr]
    assert program.egress["tabsrv"].rules[-1] == "drop"  # type: ignore[union-attr]
    cmds = full_commands(program, flow_logs=False)
    assert f"add element inet tabby-policy {set_name(peer, 6)} {{ fd00::2 }}" in cmds
    assert f"add set inet tabby-policy {set_name(peer, 6)} {{ type ipv6_addr ; }}" in cmds
