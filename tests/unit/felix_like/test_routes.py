"""The pure route calculation: every Calico rule, both CrossSubnet directions, IPv6, borrowing, determinism."""

from __future__ import annotations

import random

import pytest

from felix_like.netlink import NextHop, Route, RouteType
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
    sorted_routes,
)

LOCAL = LocalNodeInfo("node-a", "192.0.2.11/24", "eth0", "2001:db8:1::11/64")
SAME = RemoteNodeInfo("node-b", "192.0.2.12/24", "2001:db8:1::12/64", "10.65.200.2", "fd00:200::2")
OTHER = RemoteNodeInfo("node-c", "198.51.100.13/24", "2001:db8:2::13/64", "10.65.200.3", "fd00:200::3")
NODES = (SAME, OTHER)
BLOCK = "10.65.2.0/26"


def inputs(pool: PoolInfo, blocks: tuple[BlockInfo, ...], **kw: object) -> RouteInputs:
    return RouteInputs(local_node=LOCAL, pools=(pool,), blocks=blocks, remote_nodes=NODES, **kw)  # type: ignore[arg-type]


def by_dst(routes: frozenset[Route]) -> dict[str, Route]:
    return {r.dst: r for r in routes}


def test_own_block_is_blackhole() -> None:
    got = calculate_routes(inputs(PoolInfo("10.65.0.0/16"), (BlockInfo("10.65.1.0/26", "node-a"),)))
    assert got == {Route("10.65.1.0/26", RouteType.BLACKHOLE)}


def test_local_workload_is_scope_link_dev_veth() -> None:
    got = calculate_routes(
        inputs(
            PoolInfo("10.65.0.0/16"),
            (BlockInfo("10.65.1.0/26", "node-a"),),
            workloads=(WorkloadInfo("10.65.1.5", "tab0123456789a"),),
        )
    )
    assert by_dst(got)["10.65.1.5/32"] == Route("10.65.1.5/32", RouteType.UNICAST, None, "tab0123456789a", False, 0)


@pytest.mark.parametrize("mode", [EncapMode.NEVER, EncapMode.CROSS_SUBNET])
def test_remote_block_same_subnet_is_native(mode: EncapMode) -> None:
    pool = PoolInfo("10.65.0.0/16", ipip_mode=mode)
    got = calculate_routes(inputs(pool, (BlockInfo("10.65.2.0/26", "node-b"),)))
    assert got == {Route("10.65.2.0/26", gateway="192.0.2.12", oif="eth0")}


def test_vxlan_cross_subnet_same_subnet_is_native() -> None:
    pool = PoolInfo("10.65.0.0/16", vxlan_mode=EncapMode.CROSS_SUBNET)
    got = calculate_routes(inputs(pool, (BlockInfo("10.65.2.0/26", "node-b"),)))
    assert got == {Route("10.65.2.0/26", gateway="192.0.2.12", oif="eth0")}


@pytest.mark.parametrize("mode", [EncapMode.ALWAYS, EncapMode.CROSS_SUBNET])
def test_ipip_across_subnets(mode: EncapMode) -> None:
    pool = PoolInfo("10.65.0.0/16", ipip_mode=mode)
    got = calculate_routes(inputs(pool, (BlockInfo("10.65.3.0/26", "node-c"),)))
    assert got == {Route("10.65.3.0/26", gateway="198.51.100.13", oif="tunl0", onlink=True)}


def test_ipip_always_same_subnet_is_encapsulated() -> None:
    pool = PoolInfo("10.65.0.0/16", ipip_mode=EncapMode.ALWAYS)
    got = calculate_routes(inputs(pool, (BlockInfo("10.65.2.0/26", "node-b"),)))
    assert got == {Route("10.65.2.0/26", gateway="192.0.2.12", oif="tunl0", onlink=True)}


@pytest.mark.parametrize(
    ("mode", "node", "expected"),
    [
        (EncapMode.ALWAYS, "node-b", Route(BLOCK, gateway="10.65.200.2", oif="vxlan.tabby", onlink=True)),
        (EncapMode.ALWAYS, "node-c", Route(BLOCK, gateway="10.65.200.3", oif="vxlan.tabby", onlink=True)),
        (EncapMode.CROSS_SUBNET, "node-c", Route(BLOCK, gateway="10.65.200.3", oif="vxlan.tabby", onlink=True)),
    ],
)
def test_vxlan_via_vtep(mode: EncapMode, node: str, expected: Route) -> None:
    pool = PoolInfo("10.65.0.0/16", vxlan_mode=mode)
    assert calculate_routes(inputs(pool, (BlockInfo("10.65.2.0/26", node),))) == {expected}


def test_native_to_node_outside_subnet_is_skipped() -> None:
    """Never-encapsulated traffic to another subnet needs a router: left to BGP-learned routes."""
    got = calculate_routes(inputs(PoolInfo("10.65.0.0/16"), (BlockInfo("10.65.3.0/26", "node-c"),)))
    assert got == frozenset()


def test_remote_node_without_address_is_skipped_rest_applies() -> None:
    nodes = (RemoteNodeInfo("node-x", None), SAME)
    got = calculate_routes(
        RouteInputs(
            LOCAL,
            pools=(PoolInfo("10.65.0.0/16"),),
            blocks=(BlockInfo("10.65.4.0/26", "node-x"), BlockInfo("10.65.2.0/26", "node-b")),
            remote_nodes=nodes,
        )
    )
    assert set(by_dst(got)) == {"10.65.2.0/26"}


def test_unknown_node_and_unaffine_block_skipped() -> None:
    got = calculate_routes(
        inputs(PoolInfo("10.65.0.0/16"), (BlockInfo("10.65.4.0/26", "node-zz"), BlockInfo("10.65.5.0/26", None)))
    )
    assert got == frozenset()


def test_vxlan_without_vtep_is_skipped() -> None:
    nodes = (RemoteNodeInfo("node-b", "192.0.2.12/24"),)
    got = calculate_routes(
        RouteInputs(
            LOCAL,
            pools=(PoolInfo("10.65.0.0/16", vxlan_mode=EncapMode.ALWAYS),),
            blocks=(BlockInfo("10.65.2.0/26", "node-b"),),
            remote_nodes=nodes,
        )
    )
    assert got == frozenset()


def test_local_node_bare_address_means_no_shared_subnet() -> None:
    """An ipv4Address without prefix gives no subnet: CrossSubnet then encapsulates."""
    local = LocalNodeInfo("node-a", "192.0.2.11", "eth0")
    got = calculate_routes(
        RouteInputs(
            local,
            pools=(PoolInfo("10.65.0.0/16", ipip_mode=EncapMode.CROSS_SUBNET),),
            blocks=(BlockInfo("10.65.2.0/26", "node-b"),),
            remote_nodes=NODES,
        )
    )
    assert got == {Route("10.65.2.0/26", gateway="192.0.2.12", oif="tunl0", onlink=True)}


def test_block_outside_every_pool_is_native() -> None:
    got = calculate_routes(
        RouteInputs(LOCAL, pools=(), blocks=(BlockInfo("10.99.0.0/26", "node-b"),), remote_nodes=NODES)
    )
    assert got == {Route("10.99.0.0/26", gateway="192.0.2.12", oif="eth0")}


def test_disabled_pool_still_routes_existing_blocks() -> None:
    pool = PoolInfo("10.65.0.0/16", ipip_mode=EncapMode.ALWAYS, disabled=True)
    got = calculate_routes(inputs(pool, (BlockInfo("10.65.2.0/26", "node-b"), BlockInfo("10.65.1.0/26", "node-a"))))
    assert by_dst(got)["10.65.2.0/26"].oif == "tunl0"
    assert by_dst(got)["10.65.1.0/26"].type == RouteType.BLACKHOLE


def test_most_specific_pool_decides() -> None:
    pools = (PoolInfo("10.0.0.0/8", ipip_mode=EncapMode.ALWAYS), PoolInfo("10.65.0.0/16"))
    got = calculate_routes(
        RouteInputs(LOCAL, pools=pools, blocks=(BlockInfo("10.65.2.0/26", "node-b"),), remote_nodes=NODES)
    )
    assert got == {Route("10.65.2.0/26", gateway="192.0.2.12", oif="eth0")}


# -- IPv6 ---------------------------------------------------------------------------------------


def test_ipv6_rules() -> None:
    pools = (PoolInfo("fd00:65::/48"), PoolInfo("fd00:66::/48", vxlan_mode=EncapMode.CROSS_SUBNET))
    blocks = (
        BlockInfo("fd00:65::/122", "node-a"),
        BlockInfo("fd00:65::40/122", "node-b"),
        BlockInfo("fd00:66::/122", "node-b"),
        BlockInfo("fd00:66::40/122", "node-c"),
    )
    got = by_dst(
        calculate_routes(
            RouteInputs(
                LOCAL,
                pools=pools,
                blocks=blocks,
                remote_nodes=NODES,
                workloads=(WorkloadInfo("fd00:65::5", "tabv6"),),
            )
        )
    )
    assert got == {
        "fd00:65::/122": Route("fd00:65::/122", RouteType.BLACKHOLE, metric=1024),
        "fd00:65::5/128": Route("fd00:65::5/128", oif="tabv6", metric=1024),
        "fd00:65::40/122": Route("fd00:65::40/122", gateway="2001:db8:1::12", oif="eth0", metric=1024),
        "fd00:66::/122": Route("fd00:66::/122", gateway="2001:db8:1::12", oif="eth0", metric=1024),
        "fd00:66::40/122": Route(
            "fd00:66::40/122", gateway="fd00:200::3", oif="vxlan-v6.tabby", onlink=True, metric=1024
        ),
    }


def test_ipv6_ipip_is_skipped() -> None:
    got = calculate_routes(
        RouteInputs(
            LOCAL,
            pools=(PoolInfo("fd00:65::/48", ipip_mode=EncapMode.ALWAYS),),
            blocks=(BlockInfo("fd00:65::40/122", "node-b"),),
            remote_nodes=NODES,
        )
    )
    assert got == frozenset()


# -- borrowed IPs -------------------------------------------------------------------------------


def test_ip_borrowed_by_us_from_remote_block_is_local_veth() -> None:
    """The workload's /32 beats the remote block route by longest prefix."""
    got = by_dst(
        calculate_routes(
            inputs(
                PoolInfo("10.65.0.0/16"),
                (BlockInfo("10.65.2.0/26", "node-b"),),
                workloads=(WorkloadInfo("10.65.2.9", "tabborrowed"),),
                borrowed=(BorrowedIP("10.65.2.9", "node-a"),),
            )
        )
    )
    assert got["10.65.2.9/32"] == Route("10.65.2.9/32", oif="tabborrowed")
    assert got["10.65.2.0/26"] == Route("10.65.2.0/26", gateway="192.0.2.12", oif="eth0")


@pytest.mark.parametrize(
    ("borrower", "pool", "expected"),
    [
        ("node-b", PoolInfo("10.65.0.0/16"), Route("10.65.1.7/32", gateway="192.0.2.12", oif="eth0")),
        (
            "node-c",
            PoolInfo("10.65.0.0/16", ipip_mode=EncapMode.CROSS_SUBNET),
            Route("10.65.1.7/32", gateway="198.51.100.13", oif="tunl0", onlink=True),
        ),
        (
            "node-b",
            PoolInfo("10.65.0.0/16", vxlan_mode=EncapMode.ALWAYS),
            Route("10.65.1.7/32", gateway="10.65.200.2", oif="vxlan.tabby", onlink=True),
        ),
    ],
)
def test_our_ip_borrowed_by_remote_goes_to_borrower(borrower: str, pool: PoolInfo, expected: Route) -> None:
    got = by_dst(
        calculate_routes(
            inputs(pool, (BlockInfo("10.65.1.0/26", "node-a"),), borrowed=(BorrowedIP("10.65.1.7", borrower),))
        )
    )
    assert got["10.65.1.0/26"].type == RouteType.BLACKHOLE
    assert got["10.65.1.7/32"] == expected


def test_third_party_borrow_and_non_borrow() -> None:
    """IP of node-b's block used on node-c gets a /32 to node-c; an IP used on its own block's node gets none."""
    pool = PoolInfo("10.65.0.0/16", ipip_mode=EncapMode.ALWAYS)
    got = by_dst(
        calculate_routes(
            inputs(
                pool,
                (BlockInfo("10.65.2.0/26", "node-b"),),
                borrowed=(BorrowedIP("10.65.2.3", "node-c"), BorrowedIP("10.65.2.4", "node-b")),
            )
        )
    )
    assert got["10.65.2.3/32"] == Route("10.65.2.3/32", gateway="198.51.100.13", oif="tunl0", onlink=True)
    assert "10.65.2.4/32" not in got


def test_workload_beats_borrowed_and_block_of_size_32() -> None:
    pool = PoolInfo("10.65.0.0/16")
    got = by_dst(
        calculate_routes(
            inputs(
                pool,
                (BlockInfo("10.65.9.1/32", "node-a"),),
                workloads=(WorkloadInfo("10.65.9.1", "tabx"),),
                borrowed=(BorrowedIP("10.65.9.1", "node-b"),),
            )
        )
    )
    assert got == {"10.65.9.1/32": Route("10.65.9.1/32", oif="tabx")}


# -- BGP-learned ----------------------------------------------------------------------------------


def test_learned_routes_on_subnet_only_and_never_override() -> None:
    got = by_dst(
        calculate_routes(
            inputs(
                PoolInfo("10.65.0.0/16"),
                (BlockInfo("10.65.2.0/26", "node-b"),),
                learned=(
                    LearnedRoute("203.0.113.0/24", "192.0.2.1"),
                    LearnedRoute("10.65.2.0/26", "192.0.2.99"),
                    LearnedRoute("198.18.0.0/15", "198.51.100.1"),
                ),
            )
        )
    )
    assert got["203.0.113.0/24"] == Route("203.0.113.0/24", gateway="192.0.2.1", oif="eth0")
    assert got["10.65.2.0/26"].gateway == "192.0.2.12"
    assert "198.18.0.0/15" not in got


# -- determinism ----------------------------------------------------------------------------------


def test_deterministic_under_input_order() -> None:
    blocks = [BlockInfo(f"10.65.{i}.0/26", ["node-a", "node-b", "node-c", None][i % 4]) for i in range(40)]
    workloads = [WorkloadInfo(f"10.65.0.{i}", f"tab{i:02d}") for i in range(1, 20)]
    borrowed = [BorrowedIP(f"10.65.4.{i}", "node-c") for i in range(1, 10)]
    pools = [PoolInfo("10.65.0.0/16", ipip_mode=EncapMode.CROSS_SUBNET)]
    results = set()
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(blocks)
        rng.shuffle(workloads)
        rng.shuffle(borrowed)
        got = calculate_routes(
            RouteInputs(LOCAL, tuple(pools), tuple(blocks), NODES, tuple(workloads), tuple(borrowed))
        )
        results.add(tuple(sorted_routes(got)))
    assert len(results) == 1
    ordered = next(iter(results))
    assert [r.dst for r in ordered][:2] == ["10.65.0.0/26", "10.65.0.1/32"]


def test_duplicate_workload_ip_resolved_deterministically() -> None:
    a = RouteInputs(LOCAL, workloads=(WorkloadInfo("10.65.0.5", "tabb"), WorkloadInfo("10.65.0.5", "taba")))
    b = RouteInputs(LOCAL, workloads=(WorkloadInfo("10.65.0.5", "taba"), WorkloadInfo("10.65.0.5", "tabb")))
    assert calculate_routes(a) == calculate_routes(b) == {Route("10.65.0.5/32", oif="taba")}


def test_route_describe_and_sort() -> None:
    r = Route("10.0.0.0/26", gateway="192.0.2.1", oif="tunl0", onlink=True)
    assert r.describe() == "10.0.0.0/26 via 192.0.2.1 dev tunl0 onlink metric 0"
    assert Route("10.0.0.0/26", RouteType.BLACKHOLE).describe() == "blackhole 10.0.0.0/26 metric 0"
    assert sorted_routes([Route("fd00::/64", metric=1024), r])[0] is r


def test_learned_ecmp_is_one_multipath_route() -> None:
    learned = LearnedRoute("203.0.113.0/24", "192.0.2.2", ("192.0.2.2", "192.0.2.10", "192.0.2.9"))
    got = by_dst(calculate_routes(inputs(PoolInfo("10.65.0.0/16"), (), learned=(learned,))))
    route = got["203.0.113.0/24"]
    assert (route.gateway, route.oif) == (None, None)
    assert route.nexthops == (
        NextHop("192.0.2.2", "eth0"),
        NextHop("192.0.2.9", "eth0"),
        NextHop("192.0.2.10", "eth0"),
    )  # numeric order, whatever the input order
    shuffled = LearnedRoute("203.0.113.0/24", "192.0.2.9", ("192.0.2.10", "192.0.2.9", "192.0.2.2"))
    again = by_dst(calculate_routes(inputs(PoolInfo("10.65.0.0/16"), (), learned=(shuffled,))))
    assert again["203.0.113.0/24"] == route


def test_learned_ecmp_hops_resolved_one_by_one() -> None:
    # IPIP CrossSubnet pool: the on-subnet hop goes via the NIC, the off-subnet one via tunl0 onlink
    pool = PoolInfo("10.66.0.0/16", ipip_mode=EncapMode.CROSS_SUBNET)
    learned = LearnedRoute("10.66.1.0/26", "192.0.2.12", ("192.0.2.12", "198.51.100.13"))
    got = by_dst(calculate_routes(inputs(pool, (), learned=(learned,))))
    assert got["10.66.1.0/26"].nexthops == (
        NextHop("192.0.2.12", "eth0"),
        NextHop("198.51.100.13", "tunl0", True),
    )
    # IPIP Always: every hop through tunl0 onlink
    always = PoolInfo("10.66.0.0/16", ipip_mode=EncapMode.ALWAYS)
    got = by_dst(calculate_routes(inputs(always, (), learned=(learned,))))
    assert {(h.oif, h.onlink) for h in got["10.66.1.0/26"].nexthops} == {("tunl0", True)}


def test_learned_ecmp_drops_unusable_hops_and_collapses_to_single() -> None:
    # no pool, native: the off-subnet hop cannot be used; the remaining one is a plain route
    learned = LearnedRoute("203.0.113.0/24", "192.0.2.2", ("192.0.2.2", "198.51.100.1"))
    got = by_dst(calculate_routes(inputs(PoolInfo("10.65.0.0/16"), (), learned=(learned,))))
    assert got["203.0.113.0/24"] == Route("203.0.113.0/24", gateway="192.0.2.2", oif="eth0")
    none_usable = LearnedRoute("203.0.113.0/24", "198.51.100.1", ("198.51.100.1", "198.51.100.2"))
    assert "203.0.113.0/24" not in by_dst(
        calculate_routes(inputs(PoolInfo("10.65.0.0/16"), (), learned=(none_usable,)))
    )


def test_learned_ecmp_ipv6() -> None:
    learned = LearnedRoute("fd00:99::/64", "2001:db8:1::13", ("2001:db8:1::13", "2001:db8:1::12"))
    got = by_dst(calculate_routes(inputs(PoolInfo("10.65.0.0/16"), (), learned=(learned,))))
    route = got["fd00:99::/64"]
    assert route.metric == 1024
    assert [h.gateway for h in route.nexthops] == ["2001:db8:1::12", "2001:db8:1::13"]
