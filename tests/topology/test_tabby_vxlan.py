"""examples/vxlan-always and vxlan-cross-subnet: three Tabby nodes in two subnets behind a router.

What a user would check: every pod reaches every other (``lab check``), TCP across the router,
and in each node's kernel the route to each remote block with its next hop and device: through
``vxlan.tabby`` onlink to the peer's VTEP (Always; CrossSubnet across subnets), natively via the
peer on eth1 (CrossSubnet inside 10.10.1.0/24). The vxlan device's packet counter shows which
path a ping really took.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from tests.topology.conftest import EXAMPLES
from tests.topology.tabby_support import (  # noqa: F401 - tabby_lab_fixture provides the tabby_lab fixture
    VXLAN_DEV,
    TabbyLab,
    blackhole,
    items,
    local_pod_route,
    tabby_lab_fixture,
    tcp_echo,
)

NODE_IP = {"a1": "10.10.1.11", "a2": "10.10.1.12", "b1": "10.10.2.11"}
SUBNET = {"a1": "10.10.1", "a2": "10.10.1", "b1": "10.10.2"}


def vxlan_tx_packets(lab: TabbyLab, node: str) -> int:
    out = subprocess.run(["ip", "-n", lab.netns(node), "-s", "-j", "link", "show", VXLAN_DEV], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    (link,) = json.loads(out)
    return int(link["stats64"]["tx"]["packets"])


def ping(netns: str, ip: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", ip],
                          capture_output=True, timeout=15, check=False).returncode == 0


@pytest.mark.parametrize("example", ["vxlan-always", "vxlan-cross-subnet"])
def test_vxlan_across_a_router(tabby_lab: Callable[..., TabbyLab], example: str) -> None:
    lab = tabby_lab(EXAMPLES / f"{example}.clab.yml")
    cross_subnet = example == "vxlan-cross-subnet"
    nodes = ("a1", "a2", "b1")
    for node in nodes:
        lab.add_pod(node, f"pod-{node}")

    # each node's VTEP, as the agents registered it
    vtep = {}
    for node in nodes:
        (spec,) = [n["spec"] for n in items(lab.tabbyctl_json("a1", "get", "nodes")) if n["metadata"]["name"] == node]
        assert spec["bgp"]["ipv4Address"] == f"{NODE_IP[node]}/24"  # autodetected on eth1, CIDR form
        vtep[node] = spec["ipv4VXLANTunnelAddr"]

    for node in nodes:
        expected = {lab.block_of(f"pod-{node}"): blackhole(), f"{lab.pod_ip(f'pod-{node}')}/32": local_pod_route()}
        for peer in nodes:
            if peer == node:
                continue
            native = cross_subnet and SUBNET[peer] == SUBNET[node]
            expected[lab.block_of(f"pod-{peer}")] = (
                ("unicast", NODE_IP[peer], "eth1", False) if native else ("unicast", vtep[peer], VXLAN_DEV, True))
        lab.wait_routes(node, expected)
        link = json.loads(subprocess.run(["ip", "-n", lab.netns(node), "-d", "-j", "link", "show", VXLAN_DEV],
                                         capture_output=True, text=True, check=True).stdout)[0]
        assert link["linkinfo"]["info_kind"] == "vxlan" and link["mtu"] == 1450

    proc = lab.cli("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert (report["pods"], report["pairs"], report["ok"], report["failed"]) == (3, 6, 6, [])

    pods = lab.pods
    assert tcp_echo(pods["pod-b1"]["netns"], lab.pod_ip("pod-b1"), pods["pod-a1"]["netns"]).startswith("echo:hello")

    # which path a packet takes: same subnet, then across the router
    before = vxlan_tx_packets(lab, "a1")
    assert ping(pods["pod-a1"]["netns"], lab.pod_ip("pod-a2"))
    within = vxlan_tx_packets(lab, "a1") - before
    assert ping(pods["pod-a1"]["netns"], lab.pod_ip("pod-b1"))
    across = vxlan_tx_packets(lab, "a1") - before - within
    assert across >= 2
    if cross_subnet:
        assert within == 0, "CrossSubnet must route inside the subnet natively"
    else:
        assert within >= 2, "VXLAN Always encapsulates inside the subnet too"

