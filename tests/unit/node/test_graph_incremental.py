"""Every calculator of the graph (routes, VTEPs/tunl0/NAT, BGP inputs), fed a random sequence of
datastore changes one by one, ends where a fresh graph fed the final state in one resync ends
(hypothesis), and what it emitted along the way adds up to that state."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.node.graph import CalcGraph
from controller.node.messages import IPIPUpdate, NATUpdate, RouteUpdate, VTEPUpdate, VXLANUpdate
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
        elif isinstance(m, VTEPUpdate):
            vteps = tunnels.setdefault(VTEPUpdate, {})
            if m.vtep is None:
                vteps.pop(m.node, None)
            else:
                vteps[m.node] = m.vtep


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
    if not tunnels.get(VTEPUpdate):
        tunnels.pop(VTEPUpdate, None)  # every remote VTEP came and went: nothing left, as from scratch
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
    first = graph.flush()
    assert [m.local is not None for m in first if isinstance(m, VXLANUpdate)] == [True]
    assert not [m for m in first if isinstance(m, VTEPUpdate)]  # n1 is this node
    graph.apply(model.apply(WatchEvent("put", KV("resources/v3/nodes/n2", node_doc("n2", "10.64.9.2"), 2))))
    msgs = graph.flush()
    assert [(m.node, m.vtep.tunnel_address) for m in msgs if isinstance(m, VTEPUpdate) and m.vtep] == [
        ("n2", "10.64.9.2")]
    assert not [m for m in msgs if isinstance(m, NATUpdate | IPIPUpdate | VXLANUpdate)]  # unchanged: not re-sent


learned_op = st.tuples(st.sampled_from(["10.70.0.0/26", "10.70.0.64/26", "10.71.0.0/24"]),
                       st.one_of(st.none(), st.sampled_from(["10.0.0.2", "10.0.0.3", "10.9.9.9"])))


@settings(max_examples=100, deadline=None)
@given(batches=st.lists(st.lists(learned_op, max_size=4), max_size=8))
def test_learned_routes_prefix_by_prefix_equal_the_whole_table(batches: list[list[tuple[str, str | None]]]) -> None:
    """update_learned (what the agent sends per best-path change) ends where set_learned (the whole table)
    ends, in the graph's routes and in what it emitted."""
    from felix_like.routes import LearnedRoute

    inc, whole = new_graph("bird"), new_graph("bird")
    inc_routes: dict[str, Any] = {}
    whole_routes: dict[str, Any] = {}
    table: dict[str, LearnedRoute] = {}
    for batch in batches:
        changes: dict[str, LearnedRoute | None] = {}
        for cidr, hop in batch:
            if hop is None:
                table.pop(cidr, None)
            else:
                table[cidr] = LearnedRoute(cidr, hop)
            changes[cidr] = table.get(cidr)
        inc.routes.update_learned(changes)
        whole.routes.set_learned(table.values())
        view(inc.flush(), inc_routes, {})
        view(whole.flush(), whole_routes, {})
        assert inc_routes == whole_routes




def test_one_node_change_is_one_message_however_many_nodes() -> None:
    """Issue 8: a Node change is O(1) on the message boundary, not the full remote-VTEP list."""
    model, graph = Model(ME), new_graph("vxlan")
    pool_doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p0"},
                "spec": {"cidr": "10.64.0.0/16", "vxlanMode": "Always"}}

    def node_doc(i: int, vtep: str) -> bytes:
        return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": f"r{i}"},
                           "spec": {"bgp": {"ipv4Address": f"10.1.{i // 250}.{i % 250 + 1}/16"},
                                    "ipv4VXLANTunnelAddr": vtep}}).encode()

    kvs = [KV("resources/v3/ippools/p0", json.dumps(pool_doc).encode(), 1), KV(f"resources/v3/nodes/{ME}",
           json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": ME},
                       "spec": {"ipv4VXLANTunnelAddr": "10.64.255.1"}}).encode(), 1)]
    kvs += [KV(f"resources/v3/nodes/r{i}", node_doc(i, f"10.65.{i // 250}.{i % 250 + 1}"), 1) for i in range(1000)]
    graph.apply(model.apply(WatchResync(kvs, 1)))
    first = graph.flush()
    assert len([m for m in first if isinstance(m, VTEPUpdate)]) == 1000
    graph.apply(model.apply(WatchEvent("put", KV("resources/v3/nodes/r7", node_doc(7, "10.66.0.7"), 2))))
    msgs = [m for m in graph.flush() if not isinstance(m, RouteUpdate)]
    assert len(msgs) == 1 and isinstance(msgs[0], VTEPUpdate) and msgs[0].node == "r7"
    assert msgs[0].vtep is not None and msgs[0].vtep.tunnel_address == "10.66.0.7"
    graph.apply(model.apply(WatchEvent("delete", KV("resources/v3/nodes/r8", b"", 3))))
    msgs = [m for m in graph.flush() if not isinstance(m, RouteUpdate)]
    assert msgs == [VTEPUpdate("r8", None)]
