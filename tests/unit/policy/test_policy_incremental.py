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
from felix_like.policy import Program, compile_program

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
    spec: dict[str, Any] = {"node": NODE if local else "n2", "ipNetworks": [f"10.0.{ip % 3}.{ip}/32"],
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


def fold(state: dict[str, Any], msgs: list[PolicyUpdate]) -> None:
    for msg in msgs:
        for name, value in msg.sets.items():
            if value is None:
                state["sets"].pop(name, None)
            else:
                state["sets"][name] = value
        for name, rules in msg.chains.items():
            if rules is None:
                state["chains"].pop(name, None)
            else:
                state["chains"][name] = rules
        for iface, pair in msg.interfaces.items():
            if pair is None:
                state["ingress"].pop(iface, None)
                state["egress"].pop(iface, None)
            else:
                state["ingress"][iface], state["egress"][iface] = pair


def kind_of(key: str) -> str:
    return {"pol": NetworkPolicy.KIND, "wep": WorkloadEndpoint.KIND, "ns": Namespace.KIND}[key.split("/")[0]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT, min_size=3, max_size=40))
def test_incremental_equals_from_scratch(events: list[tuple[str, str, Any]]) -> None:
    calc = PolicyCalc(NODE)
    store: dict[str, Any] = {}
    emitted: dict[str, Any] = {"sets": {}, "chains": {}, "ingress": {}, "egress": {}}
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
        NODE,
    )
    assert Program(emitted["sets"], emitted["chains"], emitted["ingress"], emitted["egress"]) == expected
    assert calc.drain() == []  # nothing left over


def _run(calc: PolicyCalc, emitted: dict[str, Any], store: dict[str, Any], key: str, obj: Any) -> None:
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
    emitted: dict[str, Any] = {"sets": {}, "chains": {}, "ingress": {}, "egress": {}}
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
        program = Program(emitted["sets"], emitted["chains"], emitted["ingress"], emitted["egress"])
        assert program == _expected(store), key
        sizes.append(sorted(len(m) for _, m in program.sets.values()))
    assert sizes[3] == [1, 1] and sizes[-1] == [0, 1]


def test_a_local_label_change_isolates_and_releases() -> None:
    calc = PolicyCalc(NODE)
    store: dict[str, Any] = {}
    emitted: dict[str, Any] = {"sets": {}, "chains": {}, "ingress": {}, "egress": {}}
    _run(calc, emitted, store, "pol/ns1/deny", policy_doc("deny", "ns1", {"matchLabels": {"app": "a"}}, [], None, None))
    _run(calc, emitted, store, "wep/tabw1", wep("w1", "ns1", {}, 1, True, False))
    assert emitted["ingress"] == {"tabw1": None}
    _run(calc, emitted, store, "wep/tabw1", wep("w1", "ns1", {"app": "a"}, 1, True, False))
    assert emitted["ingress"]["tabw1"] is not None and emitted["chains"]
    assert emitted["egress"] == {"tabw1": None}
    _run(calc, emitted, store, "pol/ns1/deny", None)
    assert emitted == {"sets": {}, "chains": {}, "ingress": {"tabw1": None}, "egress": {"tabw1": None}}
    _run(calc, emitted, store, "wep/tabw1", None)
    assert emitted["ingress"] == {}
