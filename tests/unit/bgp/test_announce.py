"""Announcements: blocks, borrowed /32s, service CIDRs, communities, disableBGPExport, diff."""

from __future__ import annotations

import ipaddress
from typing import Any

from bgp.announce import CommunityPolicy, compute_announcements, diff
from bgp.types import Announcement
from datamodel.resources.bgp import BGPConfiguration
from datamodel.resources.ippool import IPPool


def pool(name: str, cidr: str, **spec: Any) -> IPPool:
    return IPPool(metadata={"name": name}, spec={"cidr": cidr, **spec})


def config(name: str = "default", **spec: Any) -> BGPConfiguration:
    return BGPConfiguration(metadata={"name": name}, spec=spec)


POOLS = [pool("main", "10.65.0.0/16"), pool("private", "10.70.0.0/16", disableBGPExport=True)]


def prefixes(anns: set[Announcement]) -> set[str]:
    return {a.prefix for a in anns}


def test_blocks_and_borrowed_ips_of_exported_pools() -> None:
    anns = compute_announcements(
        "n1",
        blocks=["10.65.0.0/26", "10.70.0.0/26"],
        borrowed_ips=["10.65.1.7", "10.70.1.7", "10.65.2.9/32"],
        pools=POOLS,
        bgp_config=None,
    )
    assert prefixes(anns) == {"10.65.0.0/26", "10.65.1.7/32", "10.65.2.9/32"}
    assert all(a.next_hop == "self" and not a.withdraw and a.communities == () for a in anns)


def test_disabled_pool_still_exports_its_blocks() -> None:
    anns = compute_announcements("n1", ["10.80.0.0/26"], [], [pool("off", "10.80.0.0/16", disabled=True)], None)
    assert prefixes(anns) == {"10.80.0.0/26"}


def test_block_outside_every_pool_is_not_announced() -> None:
    assert compute_announcements("n1", ["10.99.0.0/26"], ["10.98.0.1"], POOLS, None) == set()


def test_service_cidrs_from_the_default_configuration() -> None:
    cfg = config(
        serviceClusterIPs=[{"cidr": "10.96.0.0/12"}],
        serviceExternalIPs=[{"cidr": "192.0.2.0/24"}],
        serviceLoadBalancerIPs=[{"cidr": "198.51.100.0/24"}],
    )
    node_cfg = config("node.n1", listenPort=1179)
    anns = compute_announcements("n1", [], [], POOLS, [node_cfg, cfg])
    assert prefixes(anns) == {"10.96.0.0/12", "192.0.2.0/24", "198.51.100.0/24"}
    # a per-node configuration alone carries no service CIDRs
    assert compute_announcements("n1", [], [], POOLS, node_cfg) == set()


def test_communities_most_specific_prefix_advertisement_wins() -> None:
    cfg = config(
        communities=[{"name": "pods", "value": "64512:100"}, {"name": "big", "value": "64512:1:2"}],
        prefixAdvertisements=[
            {"cidr": "10.65.0.0/16", "communities": ["pods", "65000:1"]},
            {"cidr": "10.65.0.0/24", "communities": ["big", "65000:2"]},
            {"cidr": "10.96.0.0/12", "communities": ["65000:3:4"]},
        ],
        serviceClusterIPs=[{"cidr": "10.96.0.0/12"}],
    )
    anns = {
        a.prefix: a for a in compute_announcements("n1", ["10.65.0.0/26", "10.65.4.0/26"], ["10.65.9.9"], POOLS, cfg)
    }
    assert (anns["10.65.0.0/26"].communities, anns["10.65.0.0/26"].large_communities) == (("65000:2",), ("64512:1:2",))
    assert anns["10.65.4.0/26"].communities == ("64512:100", "65000:1")
    assert anns["10.65.9.9/32"].communities == ("64512:100", "65000:1")
    assert (anns["10.96.0.0/12"].communities, anns["10.96.0.0/12"].large_communities) == ((), ("65000:3:4",))


def test_no_matching_prefix_advertisement_means_no_communities() -> None:
    cfg = config(
        communities=[{"name": "pods", "value": "64512:100"}],
        prefixAdvertisements=[{"cidr": "10.66.0.0/16", "communities": ["pods"]}],
    )
    (ann,) = compute_announcements("n1", ["10.65.0.0/26"], [], POOLS, cfg)
    assert ann.communities == ()
    assert CommunityPolicy.from_config(None).communities_for(ipaddress.ip_network("10.65.0.0/26")) == ((), ())


def test_diff_announces_new_and_changed_and_withdraws_released() -> None:
    a = Announcement("10.65.0.0/26")
    b = Announcement("10.65.0.64/26")
    b2 = Announcement("10.65.0.64/26", communities=("65000:1",))
    c = Announcement("10.65.1.0/26")
    announce, withdraw = diff({a, b}, {b2, c})
    assert announce == [b2, c]
    assert withdraw == [Announcement("10.65.0.0/26", withdraw=True)]
    assert diff({a, b}, {a, b}) == ([], [])
    assert diff(set(), {a}) == ([a], [])


def test_block_release_becomes_a_withdraw() -> None:
    before = compute_announcements("n1", ["10.65.0.0/26", "10.65.0.64/26"], [], POOLS, None)
    after = compute_announcements("n1", ["10.65.0.0/26"], [], POOLS, None)
    assert diff(before, after) == ([], [Announcement("10.65.0.64/26", withdraw=True)])


def test_diff_orders_prefixes_numerically() -> None:
    new = {Announcement("10.65.0.128/26"), Announcement("10.65.0.0/26"), Announcement("9.0.0.0/8")}
    announce, _ = diff(set(), new)
    assert [a.prefix for a in announce] == ["9.0.0.0/8", "10.65.0.0/26", "10.65.0.128/26"]
