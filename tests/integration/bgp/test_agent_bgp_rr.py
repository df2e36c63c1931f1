"""Route reflection between node agents: the mesh off, one node with routeReflectorClusterID and the label
route-reflector=true, a BGPPeer (nodeSelector all(), peerSelector route-reflector == 'true') so the two
clients peer only with the reflector; each client learns the other's block through it, with ORIGINATOR_ID,
CLUSTER_LIST and the original next hop, and pods on the clients ping each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.bgp.test_agent_bgp_tor import tabbyctl_apply
from tests.integration.node.conftest import apply_pool

pytestmark = pytest.mark.root

CLUSTER_ID = "224.0.0.1"


@pytest.fixture
def rr_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[BgpLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    try:
        yield lab
    finally:
        lab.cleanup()


def test_route_reflector(rr_lab: BgpLab, etcd_env: dict[str, str]) -> None:
    lab = rr_lab
    apply_pool(etcd_env, BGP_POOL)
    lab.add_nodes(3)
    rr, c1, c2 = list(lab.nodes)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 64512}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "peer-with-rr"},
         "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}},
        {"apiVersion": "projectcalico.org/v3", "kind": "Node",
         "metadata": {"name": rr, "labels": {"route-reflector": "true"}},
         "spec": {"bgp": {"routeReflectorClusterID": CLUSTER_ID}}},
    )
    for name in (rr, c1, c2):
        lab.set_address(name)
        lab.start_agent(name)
    wait_for("reflector: 2 client sessions", lambda: lab.established(rr, 2), timeout=40)
    for client in (c1, c2):
        wait_for(f"{client}: one session, to the reflector", lambda client=client: lab.established(client, 1),
                 timeout=40)
        (session,) = lab.bgp_status(client)["sessions"]
        assert session["peer_address"] == lab.node_ip(rr)
        assert session["peer_type"] == "node specific"
    assert lab.bgp_status(rr)["cluster_id"] == CLUSTER_ID

    pods = {c: lab.add_pod(c, f"r{i}") for i, c in enumerate((c1, c2))}
    blocks = {c: lab.block_of(pods[c].ip, c) for c in (c1, c2)}
    for me, other in ((c1, c2), (c2, c1)):
        path = wait_for(
            f"{me} learns {blocks[other]} through the reflector",
            lambda me=me, other=other: next((p for p in lab.bgp_status(me)["paths"]
                                             if p["prefix"] == blocks[other]), None),
            timeout=20,
        )
        assert path["peer"] == lab.node_ip(rr)
        assert path["originator_id"] == lab.node_ip(other)
        assert path["cluster_list"] == [CLUSTER_ID]
        assert path["next_hop"] == lab.node_ip(other), "a reflector keeps the original next hop"
        route = wait_for(f"{me}: kernel route", lambda me=me, other=other: lab.route_to(me, blocks[other]))
        assert route["gateway"] == lab.node_ip(other) and route["dev"] == "eth0"
    assert lab.ping(pods[c1].netns, pods[c2].ip, count=2)
    assert lab.ping(pods[c2].netns, pods[c1].ip, count=2)
    st = lab.bgp_status(rr)
    assert st["counters"]["prefixes_reflected"] == 2
    assert set(st["counters"]["prefixes_received"].values()) == {1}
