"""The incremental route resolver equals the from-scratch calculation on the final state, whatever the
order of updates (hypothesis), and its drained changes turn the previous output into the new one."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.node.bgp import backend_inputs
from felix_like.netlink import Route
from felix_like.route_resolver import RouteResolver, from_inputs
from felix_like.routes import (
    BlockInfo,
    BorrowedIP,
    EncapMode,
    LearnedRoute,
    LocalNodeInfo,
    PoolInfo,
    RemoteNodeInfo,
    RouteInputs,
    WorkloadInfo,
    calculate_routes,
)

LOCAL = LocalNodeInfo("a", "10.0.0.1/24", "eth0")
NODES = ["a", "b", "c", "d"]
POOL_CIDRS = ["10.64.0.0/16", "10.64.0.0/20", "10.65.0.0/16"]
BLOCKS = [f"10.64.{i // 4}.{(i % 4) * 64}/26" for i in range(4)] + ["10.65.0.0/26", "10.65.0.64/26"]
modes = st.sampled_from(list(EncapMode))

pool_st = st.builds(PoolInfo, cidr=st.sampled_from(POOL_CIDRS), ipip_mode=modes, vxlan_mode=modes,
                    disabled=st.booleans())
node_st = st.builds(
    RemoteNodeInfo, name=st.sampled_from(NODES[1:]),
    ipv4_address=st.sampled_from([None, "10.0.0.2/24", "10.0.0.3/24", "10.1.0.4/24"]),
    vxlan_tunnel_address=st.sampled_from([None, "10.64.200.1", "10.64.201.1"]),
)


@st.composite
def block_st(draw: Any) -> tuple[BlockInfo, tuple[BorrowedIP, ...]]:
    cidr = draw(st.sampled_from(BLOCKS))
    affinity = draw(st.sampled_from([None, *NODES]))
    net = ipaddress.ip_network(cidr)
    # few distinct borrowed sets, so the same set often comes back with another affinity
    picks = draw(st.sampled_from([(), ((0, "b"),), ((0, "b"), (1, "a")), ((2, "c"), (3, "d"))]))
    borrowed = tuple(BorrowedIP(str(net.network_address + o), node) for o, node in picks)
    return BlockInfo(cidr, affinity), borrowed


workload_st = st.builds(WorkloadInfo, ip=st.sampled_from([f"10.64.0.{i}" for i in range(4)] + ["10.65.0.65"]),
                        interface=st.sampled_from(["tab1", "tab2"]))
learned_st = st.builds(
    LearnedRoute, cidr=st.sampled_from(["10.64.0.0/26", "10.70.0.0/24", "10.65.0.64/26"]),
    next_hop=st.sampled_from(["10.0.0.2", "10.1.0.4"]),
    next_hops=st.sampled_from([(), ("10.0.0.2", "10.0.0.3"), ("10.0.0.3", "10.1.0.4")]),
)
op_st = st.one_of(
    st.tuples(st.just("pool"), pool_st), st.tuples(st.just("-pool"), st.sampled_from(POOL_CIDRS)),
    st.tuples(st.just("node"), node_st), st.tuples(st.just("-node"), st.sampled_from(NODES[1:])),
    st.tuples(st.just("block"), block_st()), st.tuples(st.just("-block"), st.sampled_from(BLOCKS)),
    st.tuples(st.just("wl"), workload_st), st.tuples(st.just("-wl"), workload_st),
    st.tuples(st.just("learned"), learned_st), st.tuples(st.just("-learned"), learned_st),
    st.tuples(st.just("local"), st.sampled_from([LOCAL, LocalNodeInfo("a", "10.1.0.9/24", "eth1")])),
)


def oracle(inputs: RouteInputs, backend: str) -> frozenset[Route]:
    return calculate_routes(backend_inputs(inputs, backend, inputs.learned))


def apply(resolver: RouteResolver, op: tuple[str, Any]) -> None:
    kind, arg = op
    if kind == "pool":
        resolver.upsert_pool(arg)
    elif kind == "-pool":
        resolver.remove_pool(arg)
    elif kind == "node":
        resolver.upsert_node(arg)
    elif kind == "-node":
        resolver.remove_node(arg)
    elif kind == "block":
        resolver.upsert_block(*arg)
    elif kind == "-block":
        resolver.remove_block(arg)
    elif kind == "wl":
        resolver.upsert_workload(arg)
    elif kind == "-wl":
        resolver.remove_workload(arg.ip)
    elif kind == "learned":
        resolver.upsert_learned(arg)
    elif kind == "-learned":
        resolver.remove_learned(arg.cidr)
    else:
        resolver.set_local(arg)


@pytest.mark.parametrize("backend", ["vxlan", "bird", "none"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, max_size=40))
def test_incremental_equals_from_scratch(backend: str, ops: list[tuple[str, Any]]) -> None:
    resolver = RouteResolver(LOCAL, backend)
    view: dict[str, Route] = {}
    for op in ops:
        apply(resolver, op)
        for dst, route in resolver.drain().items():
            if route is None:
                view.pop(dst, None)
            else:
                view[dst] = route
    assert resolver.routes() == oracle(resolver.inputs(), backend)
    assert frozenset(view.values()) == resolver.routes()
    # and a resolver built from the final state in one go agrees
    assert from_inputs(resolver.inputs(), backend).routes() == resolver.routes()


def test_only_changes_are_emitted() -> None:
    resolver = RouteResolver(LOCAL, "vxlan")
    resolver.upsert_pool(PoolInfo("10.64.0.0/16", vxlan_mode=EncapMode.ALWAYS))
    resolver.upsert_node(RemoteNodeInfo("b", "10.0.0.2/24", vxlan_tunnel_address="10.64.200.1"))
    resolver.upsert_block(BlockInfo("10.64.1.0/26", "b"))
    assert set(resolver.drain()) == {"10.64.1.0/26"}
    resolver.upsert_workload(WorkloadInfo("10.64.0.5", "tab1"))
    assert set(resolver.drain()) == {"10.64.0.5/32"}  # a local pod touches its /32 only
    resolver.upsert_node(RemoteNodeInfo("b", "10.0.0.2/24", vxlan_tunnel_address="10.64.200.1"))
    assert resolver.drain() == {}  # unchanged input: nothing
    resolver.remove_node("b")
    assert resolver.drain() == {"10.64.1.0/26": None}


def test_bad_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        RouteResolver(LOCAL, "bgp")


def test_affinity_change_re_resolves_the_blocks_borrowed_ips() -> None:
    resolver = RouteResolver(LOCAL, "vxlan")
    resolver.upsert_node(RemoteNodeInfo("b", "10.0.0.2/24"))
    resolver.upsert_node(RemoteNodeInfo("c", "10.0.0.3/24"))
    borrowed = (BorrowedIP("10.64.0.1", "b"),)
    resolver.upsert_block(BlockInfo("10.64.0.0/26", "b"), borrowed)
    assert resolver.route_for("10.64.0.1/32") is None  # b's own block: the block route covers it
    resolver.upsert_block(BlockInfo("10.64.0.0/26", "c"), borrowed)  # same allocations, new owner
    route = resolver.route_for("10.64.0.1/32")
    assert route is not None and route.gateway == "10.0.0.2"
    assert resolver.routes() == oracle(resolver.inputs(), "vxlan")
