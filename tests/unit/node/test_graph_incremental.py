"""Every calculator of the graph (routes, VTEPs/tunl0/NAT, BGP inputs), fed a random sequence of
datastore changes one by one, ends where a fresh graph fed the final state in one resync ends
(hypothesis), and what it emitted along the way adds up to that state."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.node.graph import CalcGraph
from controller.node.messages import IPIPUpdate, NATUpdate, RouteUpdate, VXLANUpdate
from controller.node.model import Model
from datastore import KV, WatchEvent, WatchResync

ME = "n1"
NODES = ["n1", "n2", "n3"]
POOLS = ["10.64.0.0/16", "10.64.0.0/20", "10.65.0.0/16"]
BLOCKS = ["10.64.0.0/26", "10.64.0.64/26", "10.64.16.0/26", "10.65.0.0/26"]
MODES = ["Never", "Always", "CrossSubnet"]


@st.composite
def pool(draw: Any) -> tuple[str, dict[str, Any]]:
    cidr = draw(st.sampled_from(POOLS))
    ipip = draw(st.sampled_from(MODES))
    vxlan = "Never" if ipip != "Never" else draw(st.sampled_from(MODES))
    return f"resources/v3/ippools/p{POOLS.index(cidr)}", {
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": f"p{POOLS.index(cidr)}"},
        "spec": {"cidr": cidr, "ipipMode": ipip, "vxlanMode": vxlan, "natOutgoing": draw(st.booleans()),
                 "disabled": draw(st.booleans())}}


@st.composite
def node(draw: Any) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(NODES))
    address = draw(st.sampled_from(["10.0.0.2/24", "10.0.0.3/24", "10.1.0.4/24"]))
    spec: dict[str, Any] = {"bgp": {"ipv4Address": address}}
    if draw(st.booleans()):
        spec["ipv4VXLANTunnelAddr"] = draw(st.sampled_from(["10.64.200.1", "10.64.201.1"]))
    if draw(st.booleans()):
        spec["bgp"]["ipv4IPIPTunnelAddr"] = "10.64.202.1"
    return f"resources/v3/nodes/{name}", {"apiVersion": "projectcalico.org/v3", "kind": "Node",
                                          "metadata": {"name": name}, "spec": spec}


@st.composite
def block(draw: Any) -> tuple[str, dict[str, Any]]:
    cidr = draw(st.sampled_from(BLOCKS))
    owner = draw(st.sampled_from(NODES))
    allocations: list[int | None] = [None] * 64
    attributes = []
    for ordinal in draw(st.lists(st.integers(0, 5), max_size=3, unique=True)):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": f"h{ordinal}", "secondary": {"node": draw(st.sampled_from(NODES))}})
    return "ipam/v2/block/" + cidr.replace("/", "-"), {
        "cidr": cidr, "affinity": f"host:{owner}", "allocations": allocations,
        "unallocated": [o for o, a in enumerate(allocations) if a is None], "attributes": attributes,
        "strictAffinity": False, "deleted": False}


@st.composite
def wep(draw: Any) -> tuple[str, dict[str, Any]]:
    pod = draw(st.sampled_from(["a", "b", "c"]))
    name = f"{ME}-k8s-{pod}-eth0"
    return f"resources/v3/workloadendpoints/default/{name}", {
        "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"node": draw(st.sampled_from([ME, "n2"])), "containerID": pod,
                 "ipNetworks": [draw(st.sampled_from(["10.64.0.1/32", "10.64.0.2/32", "10.65.0.9/32"]))],
                 "interfaceName": draw(st.sampled_from(["tab1", "tab2"]))}}


change = st.one_of(pool(), node(), block(), wep())
op_st = st.tuples(st.booleans(), change)  # (delete?, (key, value))


def view(messages: list[Any], routes: dict[str, Any], tunnels: dict[type, Any]) -> None:
    for m in messages:
        if isinstance(m, RouteUpdate):
            if m.route is None:
                routes.pop(m.dst, None)
            else:
                routes[m.dst] = m.route
        elif isinstance(m, VXLANUpdate | IPIPUpdate | NATUpdate):
            tunnels[type(m)] = m


def new_graph(backend: str) -> CalcGraph:
    graph = CalcGraph(ME, backend)
    graph.set_local_node("10.0.0.1/24", "eth0")
    return graph


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, max_size=30), backend=st.sampled_from(["vxlan", "bird"]))
def test_incremental_graph_equals_fresh_graph(ops: list[tuple[bool, tuple[str, dict[str, Any]]]], backend: str) -> None:
    model, graph = Model(ME), new_graph(backend)
    routes: dict[str, Any] = {}
    tunnels: dict[type, Any] = {}
    store: dict[str, bytes] = {}
    graph.apply(model.apply(WatchResync([], 1)))
    view(graph.flush(), routes, tunnels)
    for rev, (delete, (key, value)) in enumerate(ops, start=2):
        if delete:
            store.pop(key, None)
            item = WatchEvent("delete", KV(key, b"", rev))
        else:
            store[key] = json.dumps(value).encode()
            item = WatchEvent("put", KV(key, store[key], rev))
        graph.apply(model.apply(item))
        view(graph.flush(), routes, tunnels)
    assert model.invalid == {}
    fresh_model, fresh = Model(ME), new_graph(backend)
    fresh.apply(fresh_model.apply(WatchResync([KV(k, v, 1) for k, v in store.items()], 99)))
    fresh_routes: dict[str, Any] = {}
    fresh_tunnels: dict[type, Any] = {}
    view(fresh.flush(), fresh_routes, fresh_tunnels)
    assert routes == fresh_routes  # route resolver
    assert tunnels == fresh_tunnels  # VTEPs, tunl0, NAT sets
    assert graph.tunnels.current() == fresh.tunnels.current()
    assert graph.bgp.own_blocks == fresh.bgp.own_blocks  # BGP announcement inputs
    assert graph.bgp.borrowed() == fresh.bgp.borrowed()
    assert graph.routes.local_interfaces() == fresh.routes.local_interfaces()


def test_a_remote_vtep_change_alone_emits_the_vxlan_update() -> None:
    model, graph = Model(ME), new_graph("vxlan")
    p_key, p = "resources/v3/ippools/p0", {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                                           "metadata": {"name": "p0"}, "spec": {"cidr": "10.64.0.0/16",
                                                                                "vxlanMode": "Always"}}

    def node_doc(name: str, vtep: str) -> bytes:
        return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name},
                           "spec": {"bgp": {"ipv4Address": "10.0.0.9/24"}, "ipv4VXLANTunnelAddr": vtep}}).encode()

    graph.apply(model.apply(WatchResync([KV(p_key, json.dumps(p).encode(), 1),
                                         KV("resources/v3/nodes/n1", node_doc("n1", "10.64.9.1"), 1)], 1)))
    first = [m for m in graph.flush() if isinstance(m, VXLANUpdate)]
    assert first and first[0].local is not None and first[0].remotes == ()
    graph.apply(model.apply(WatchEvent("put", KV("resources/v3/nodes/n2", node_doc("n2", "10.64.9.2"), 2))))
    msgs = graph.flush()
    assert [m.remotes[0].tunnel_address for m in msgs if isinstance(m, VXLANUpdate)] == ["10.64.9.2"]
    assert not [m for m in msgs if isinstance(m, NATUpdate | IPIPUpdate)]  # unchanged: not re-sent
