"""The policy calculator: incremental deltas == the program compiled from scratch, whatever the order."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.node.messages import PolicyUpdate
from controller.node.model import Update
from controller.node.policy import PolicyCalc
from datamodel.resources.kubernetes import Namespace, NetworkPolicy
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from felix_like.policy import PolicyState, Program, compile_program
from felix_like.policy_ids import FAIL_CLOSED_REFS

NODE = "n1"
LABELS = st.dictionaries(st.sampled_from(["app", "role", "team"]), st.sampled_from(["a", "b"]), max_size=2)
NAMESPACES = st.sampled_from(["ns1", "ns2"])


def selector() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.just({}),
        st.dictionaries(st.sampled_from(["app", "team"]), st.just("a"), max_size=1).map(
            lambda m: {"matchLabels": m}),
        st.sampled_from(["app", "role"]).map(
            lambda k: {"matchExpressions": [{"key": k, "operator": "NotIn", "values": ["a"]}]}),
    )


PEER = st.one_of(
    selector().map(lambda s: {"podSelector": s}),
    selector().map(lambda s: {"namespaceSelector": s}),
    st.tuples(selector(), selector()).map(lambda t: {"podSelector": t[0], "namespaceSelector": t[1]}),
    st.just({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.1.0/24"]}}),
)
PORT = st.one_of(st.just({"port": 80}), st.just({"port": "web"}), st.just({"protocol": "UDP"}),
                 st.just({"port": 8000, "endPort": 8080}))
RULE = st.fixed_dictionaries({}, optional={"ports": st.lists(PORT, max_size=2),
                                           "peers": st.lists(PEER, max_size=2)})


def policy_doc(name: str, ns: str, pod_sel: dict, ingress: list | None, egress: list | None,
               types: list | None) -> NetworkPolicy:
    spec: dict[str, Any] = {"podSelector": pod_sel}
    if ingress is not None:
        spec["ingress"] = [{**({"ports": r["ports"]} if "ports" in r else {}),
                            **({"from": r["peers"]} if "peers" in r else {})} for r in ingress]
    if egress is not None:
        spec["egress"] = [{**({"ports": r["ports"]} if "ports" in r else {}),
                           **({"to": r["peers"]} if "peers" in r else {})} for r in egress]
    if types is not None:
        spec["policyTypes"] = types
    return NetworkPolicy.model_validate({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


POLICY = st.builds(policy_doc, st.sampled_from(["p1", "p2", "p3"]), NAMESPACES, selector(),
                   st.none() | st.lists(RULE, max_size=2), st.none() | st.lists(RULE, max_size=2),
                   st.none() | st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))


def wep(name: str, ns: str, labels: dict, ip: int, local: bool, with_port: bool) -> WorkloadEndpoint:
    nets = [f"10.0.{ip % 3}.{ip}/32", *([f"fd00::{ip}/128"] if ip % 2 == 0 else [])]  # some dual-stack
    spec: dict[str, Any] = {"node": NODE if local else "n2", "ipNetworks": nets,
                            "interfaceName": f"tab{name}"}
    if with_port:
        spec["ports"] = [{"name": "web", "protocol": "TCP", "port": 8080 + ip}]
    return WorkloadEndpoint.model_validate({"metadata": {"name": name, "namespace": ns, "labels": labels},
                                            "spec": spec})


WEP = st.builds(wep, st.sampled_from(["w1", "w2", "w3", "w4"]), NAMESPACES, LABELS, st.integers(1, 6),
                st.booleans(), st.booleans())
NS = st.builds(lambda n, labels: Namespace.model_validate({"apiVersion": "v1", "kind": "Namespace",
                                                          "metadata": {"name": n, "labels": labels}}),
               NAMESPACES, LABELS)
EVENT = st.one_of(
    POLICY.map(lambda p: ("put", f"pol/{p.namespace}/{p.name}", p)),
    POLICY.map(lambda p: ("put", f"pol/{p.namespace}/{p.name}", p)),
    WEP.map(lambda w: ("put", f"wep/{w.spec.interfaceName}", w)),
    WEP.map(lambda w: ("put", f"wep/{w.spec.interfaceName}", w)),
    NS.map(lambda n: ("put", f"ns/{n.name}", n)),
    st.tuples(NAMESPACES, st.sampled_from(["p1", "p2", "p3"])).map(lambda t: ("del", f"pol/{t[0]}/{t[1]}", None)),
    WEP.map(lambda w: ("put", f"wep/{w.spec.interfaceName}", w)),
    st.sampled_from(["w1", "w2", "w3", "w4"]).map(lambda n: ("del", f"wep/tab{n}", None)),
    NS.map(lambda n: ("put", f"ns/{n.name}", n)),
    NAMESPACES.map(lambda n: ("del", f"ns/{n}", None)),
    st.just(("drain", "", None)),
)


def fold(state: PolicyState, msgs: list[PolicyUpdate]) -> None:
    for msg in msgs:
        state.fold(msg.sets, msg.chains, msg.interfaces, msg.chain_refs)


def kind_of(key: str) -> str:
    return {"pol": NetworkPolicy.KIND, "wep": WorkloadEndpoint.KIND, "ns": Namespace.KIND}[key.split("/")[0]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT, min_size=3, max_size=40), st.booleans())
def test_incremental_equals_from_scratch(events: list[tuple[str, str, Any]], flow_logs: bool) -> None:
    calc = PolicyCalc(NODE, flow_logs=flow_logs)
    store: dict[str, Any] = {}
    emitted = PolicyState()
    for op, key, obj in events:
        if op == "drain":
            fold(emitted, calc.drain())
            continue
        old = store.get(key)
        if op == "del":
            if old is None:
                continue
            del store[key]
            update = Update(key, kind_of(key), old, None)
        else:
            store[key] = obj
            update = Update(key, kind_of(key), old, obj)
        {"pol": calc.on_policy, "wep": calc.on_wep, "ns": calc.on_namespace}[key.split("/")[0]](update)
    fold(emitted, calc.drain())
    from controller.node.policy import endpoint_info

    expected = compile_program(
        [v for k, v in store.items() if k.startswith("pol/")],
        [endpoint_info(k, v) for k, v in store.items() if k.startswith("wep/")],
        {v.name: v.effective_labels() for k, v in store.items() if k.startswith("ns/")},
        NODE, flow_logs,
    )
    assert emitted.view() == expected
    assert calc.drain() == []  # nothing left over


def _run(calc: PolicyCalc, emitted: PolicyState, store: dict[str, Any], key: str, obj: Any) -> None:
    old = store.get(key)
    if obj is None:
        store.pop(key, None)
    else:
        store[key] = obj
    {"pol": calc.on_policy, "wep": calc.on_wep, "ns": calc.on_namespace}[key.split("/")[0]](
        Update(key, kind_of(key), old, obj))
    fold(emitted, calc.drain())


def _expected(store: dict[str, Any]) -> Program:
    from controller.node.policy import endpoint_info

    return compile_program(
        [v for k, v in store.items() if k.startswith("pol/")],
        [endpoint_info(k, v) for k, v in store.items() if k.startswith("wep/")],
        {v.name: v.effective_labels() for k, v in store.items() if k.startswith("ns/")}, NODE)


def _ns(name: str, labels: dict) -> Namespace:
    return Namespace.model_validate({"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": name, "labels": labels}})


def test_namespace_label_and_address_changes_reach_the_sets() -> None:
    calc = PolicyCalc(NODE)
    store: dict[str, Any] = {}
    emitted = PolicyState()
    steps = [
        ("pol/ns1/p1", policy_doc("p1", "ns1", {}, [{"peers": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}],
                                                     "ports": [{"port": "web"}]}], None, None)),
        ("wep/tabw1", wep("w1", "ns1", {}, 1, True, True)),
        ("wep/tabw2", wep("w2", "ns2", {}, 2, False, False)),
        ("ns/ns2", _ns("ns2", {"team": "a"})),  # w2 enters the peer set
        ("wep/tabw2", wep("w2", "ns2", {}, 5, False, False)),  # its address changes
        ("wep/tabw1", wep("w1", "ns1", {}, 4, True, True)),  # the named port's element changes
        ("ns/ns2", _ns("ns2", {"team": "b"})),  # w2 leaves the peer set
    ]
    sizes = []
    for key, obj in steps:
        _run(calc, emitted, store, key, obj)
        program = emitted.view()
        assert program == _expected(store), key
        sizes.append(sorted(len(m) for _, m in program.sets.values()))
    # w2 (ip 2) and then w1 (ip 4) are dual-stack: their IPv6 addresses fill the IPv6 twins
    assert sizes[3] == [0, 1, 1, 1] and sizes[-1] == [0, 0, 1, 1]


def test_a_local_label_change_isolates_and_releases() -> None:
    calc = PolicyCalc(NODE, flow_logs=False)  # without flow logs a non-isolated interface needs no chain
    store: dict[str, Any] = {}
    emitted = PolicyState()
    _run(calc, emitted, store, "pol/ns1/deny", policy_doc("deny", "ns1", {"matchLabels": {"app": "a"}}, [], None, None))
    _run(calc, emitted, store, "wep/tabw1", wep("w1", "ns1", {}, 1, True, False))
    assert emitted.ingress == {"tabw1": None}
    _run(calc, emitted, store, "wep/tabw1", wep("w1", "ns1", {"app": "a"}, 1, True, False))
    assert emitted.ingress["tabw1"] is not None and emitted.chains
    assert emitted.egress == {"tabw1": None}
    _run(calc, emitted, store, "pol/ns1/deny", None)
    assert (emitted.sets, emitted.chains, emitted.ingress, emitted.egress) == ({}, {}, {"tabw1": None}, {"tabw1": None})
    assert emitted.rule_refs == FAIL_CLOSED_REFS  # the deny's end-of-tier id left with its chain
    _run(calc, emitted, store, "wep/tabw1", None)
    assert emitted.ingress == {}


# -- Calico kinds: tiers, profiles, network sets, Pass/Deny/Log --------------------------------------
CSEL = st.sampled_from(["", "app == 'a'", "has(role)", "team != 'a'", "projectcalico.org/namespace == 'ns1'"])
CENTITY = st.fixed_dictionaries({}, optional={
    "selector": CSEL, "notSelector": st.just("role == 'b'"), "namespaceSelector": st.sampled_from(["", "team == 'a'"]),
    "nets": st.just(["10.0.0.0/16"]), "notNets": st.just(["10.0.1.0/24", "fd00::/64"])})
CRULE = st.builds(
    lambda action, proto, src, dst: {
        "action": action, **({"protocol": proto} if proto else {}),
        "source": src, "destination": {**dst, **({"ports": [80, "web"]} if proto else {})}},
    st.sampled_from(["Allow", "Deny", "Pass", "Log"]), st.sampled_from([None, "TCP"]), CENTITY, CENTITY)
CSPEC = st.builds(
    lambda tier, order, sel, ing, eg: {**({"tier": tier} if tier else {}), **({"order": order} if order else {}),
                                       "selector": sel, **({"ingress": ing} if ing is not None else {}),
                                       **({"egress": eg} if eg is not None else {})},
    st.sampled_from([None, "t1", "t2"]), st.sampled_from([None, 10, 20]), CSEL,
    st.none() | st.lists(CRULE, max_size=2), st.none() | st.lists(CRULE, max_size=2))


def cdoc(kind: str, name: str, spec: dict, ns: str | None = None, labels: dict | None = None) -> Any:
    from datamodel.resources import parse_resource

    meta: dict = {"name": name, **({"namespace": ns} if ns else {}), **({"labels": labels} if labels else {})}
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})


CEVENT = st.one_of(
    st.builds(lambda n, ns, spec: ("put", f"cnp/{ns}/{n}", cdoc("NetworkPolicy", n, spec, ns)),
              st.sampled_from(["c1", "c2"]), NAMESPACES, CSPEC),
    st.builds(lambda n, spec: ("put", f"gnp/{n}", cdoc("GlobalNetworkPolicy", n, spec)), st.sampled_from(["g1", "g2"]),
              CSPEC),
    st.builds(lambda n, order, action: ("put", f"tier/{n}", cdoc("Tier", n, {**({"order": order} if order else {}),
                                                                            "defaultAction": action})),
              st.sampled_from(["t1", "t2"]), st.sampled_from([None, 5, 2000000]), st.sampled_from(["Deny", "Pass"])),
    st.builds(lambda n, ing: ("put", f"prof/{n}", cdoc("Profile", n, {"ingress": ing})),
              st.sampled_from(["kns.ns1", "kns.ns2"]), st.lists(CRULE, max_size=2)),
    st.builds(lambda n, ns, labels, nets: ("put", f"nset/{ns}/{n}",
                                           cdoc("NetworkSet", n, {"nets": nets}, ns, labels)),
              st.sampled_from(["s1"]), NAMESPACES, LABELS,
              st.sampled_from([["10.0.0.0/24"], ["10.0.0.1/32", "fd00::/64"]])),
    st.builds(lambda labels: ("put", "gset/x", cdoc("GlobalNetworkSet", "x", {"nets": ["10.9.0.0/16"]}, None, labels)),
              LABELS),
    st.sampled_from(["cnp/ns1/c1", "gnp/g1", "tier/t1", "prof/kns.ns1", "nset/ns1/s1", "gset/x"]).map(
        lambda k: ("del", k, None)),
)
CKIND = {"cnp": "NetworkPolicy", "gnp": "GlobalNetworkPolicy", "tier": "Tier", "prof": "Profile", "nset": "NetworkSet",
         "gset": "GlobalNetworkSet"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(EVENT, CEVENT, CEVENT), min_size=3, max_size=40), st.booleans())
def test_calico_incremental_equals_from_scratch(events: list[tuple[str, str, Any]], flow_logs: bool) -> None:
    from controller.node.policy import endpoint_info, netset_info

    calc = PolicyCalc(NODE, flow_logs=flow_logs)
    store: dict[str, Any] = {}
    emitted = PolicyState()
    for op, key, obj in events:
        if op == "drain":
            fold(emitted, calc.drain())
            continue
        old = store.get(key)
        if op == "del":
            if old is None:
                continue
            del store[key]
        else:
            store[key] = obj
        prefix = key.split("/")[0]
        kind = CKIND.get(prefix) or kind_of(key)
        handler = {"pol": calc.on_policy, "wep": calc.on_wep, "ns": calc.on_namespace, "cnp": calc.on_policy,
                   "gnp": calc.on_policy, "tier": calc.on_tier, "prof": calc.on_profile, "nset": calc.on_netset,
                   "gset": calc.on_netset}[prefix]
        handler(Update(key, kind, old, store.get(key)))
    fold(emitted, calc.drain())
    expected = compile_program(
        [v for k, v in store.items() if k.split("/")[0] in ("pol", "cnp", "gnp")],
        [endpoint_info(k, v) for k, v in store.items() if k.startswith("wep/")]
        + [netset_info(k, v) for k, v in store.items() if k.split("/")[0] in ("nset", "gset")],
        {v.name: v.effective_labels() for k, v in store.items() if k.startswith("ns/")},
        NODE, flow_logs,
        tiers={v.name: v for k, v in store.items() if k.startswith("tier/")},
        profiles={v.name: v for k, v in store.items() if k.startswith("prof/")},
    )
    assert emitted.view() == expected
    assert calc.drain() == []
