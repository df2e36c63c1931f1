"""Peer calculation: mesh, passive rule, BGPPeer scopes, peerSelector (both ends), reflectors, AS, dedupe."""

from __future__ import annotations

from typing import Any

import pytest

from bgp.peers import cluster_settings, compute_peers, node_status_type, speaker_spec
from bgp.types import GLOBAL, MESH, NODE_SPECIFIC, PeerSpec
from datamodel.resources.bgp import BGPConfiguration, BGPPeer
from datamodel.resources.node import Node


def node(name: str, ip: str | None, labels: dict[str, str] | None = None, **bgp: Any) -> Node:
    spec: dict[str, Any] = {}
    if ip is not None:
        spec["bgp"] = {"ipv4Address": f"{ip}/24", **bgp}
    return Node(metadata={"name": name, "labels": labels or {}}, spec=spec)


def config(name: str = "default", **spec: Any) -> BGPConfiguration:
    return BGPConfiguration(metadata={"name": name}, spec=spec)


def peer(name: str, **spec: Any) -> BGPPeer:
    return BGPPeer(metadata={"name": name}, spec=spec)


N1 = node("n1", "10.0.0.1", {"rack": "a"})
N2 = node("n2", "10.0.0.2", {"rack": "a"})
N3 = node("n3", "10.0.0.3", {"rack": "b"})
NOIP = node("n9", None)
NODES = [N1, N2, N3, NOIP]


def by_address(peers: list[PeerSpec]) -> dict[str, PeerSpec]:
    return {p.address: p for p in peers}


def test_full_mesh_with_every_other_node_that_has_an_address() -> None:
    peers = compute_peers(N2, NODES, [config()], [])
    assert [p.address for p in peers] == ["10.0.0.1", "10.0.0.3"]
    for p in peers:
        assert (p.type, p.peer_as, p.local_as, p.port) == (MESH, 64512, 64512, 179)
        assert p.local_address == "10.0.0.2"
        assert p.graceful_restart == 120
        assert p.ibgp and not p.route_reflector_client
    assert {p.name for p in peers} == {"n1", "n3"}
    assert {p.peer_node for p in peers} == {"n1", "n3"}


def test_mesh_defaults_when_no_configuration_exists() -> None:
    assert len(compute_peers(N1, NODES, None, [])) == 2


def test_passive_rule_one_active_connector_per_pair() -> None:
    # n2 is the higher address towards n1 (connects) and the lower towards n3 (waits)
    p2 = by_address(compute_peers(N2, NODES, [config()], []))
    assert p2["10.0.0.1"].passive is False
    assert p2["10.0.0.3"].passive is True
    # and the other ends agree: exactly one active side per pair
    for a, b in [(N1, N2), (N1, N3), (N2, N3)]:
        pa = by_address(compute_peers(a, NODES, None, []))[b.spec.bgp.ipv4Address.split("/")[0]]  # type: ignore[union-attr]
        pb = by_address(compute_peers(b, NODES, None, []))[a.spec.bgp.ipv4Address.split("/")[0]]  # type: ignore[union-attr]
        assert pa.passive != pb.passive


def test_passive_compares_addresses_numerically() -> None:
    a, b = node("a", "10.0.0.9"), node("b", "10.0.0.10")
    assert by_address(compute_peers(a, [a, b], None, []))["10.0.0.10"].passive is True


def test_mesh_disabled() -> None:
    assert compute_peers(N1, NODES, [config(nodeToNodeMeshEnabled=False)], []) == []


def test_node_without_address_has_no_peers() -> None:
    assert compute_peers(NOIP, NODES, None, []) == []
    assert speaker_spec(NOIP, None) is None


def test_mesh_settings_password_restart_time_listen_ports() -> None:
    configs = [
        config(
            nodeMeshPassword={"secretKeyRef": {"name": "bgp", "key": "mesh"}},
            nodeMeshMaxRestartTime="5m",
            listenPort=1179,
        ),
        config("node.n3", listenPort=2179),
    ]
    peers = by_address(compute_peers(N1, NODES, configs, [], secrets={"bgp": {"mesh": "s3cret"}}))
    assert peers["10.0.0.2"].password == "s3cret"
    assert peers["10.0.0.2"].graceful_restart == 300
    assert peers["10.0.0.2"].port == 1179
    assert peers["10.0.0.3"].port == 2179
    assert speaker_spec(N3, configs).listen_port == 2179  # type: ignore[union-attr]


def test_password_through_a_callable_and_unresolvable_secret_skips_the_session() -> None:
    configs = [config(nodeMeshPassword={"secretKeyRef": {"name": "bgp", "key": "mesh"}})]
    calls = []

    def lookup(name: str, key: str) -> str | None:
        calls.append((name, key))
        return "pw"

    assert {p.password for p in compute_peers(N1, NODES, configs, [], secrets=lookup)} == {"pw"}
    assert calls == [("bgp", "mesh"), ("bgp", "mesh")]
    assert compute_peers(N1, NODES, configs, [], secrets={}) == []


def test_optional_secret_missing_means_no_password() -> None:
    configs = [config(nodeMeshPassword={"secretKeyRef": {"name": "bgp", "key": "mesh", "optional": True}})]
    assert {p.password for p in compute_peers(N1, NODES, configs, [], secrets={})} == {None}


# ---------------------------------------------------------------- AS numbers


def test_as_numbers_node_then_cluster_then_default() -> None:
    n1 = node("n1", "10.0.0.1", asNumber=65001)
    n2 = node("n2", "10.0.0.2")
    peers = compute_peers(n1, [n1, n2], [config(asNumber=64000)], [])
    assert (peers[0].local_as, peers[0].peer_as) == (65001, 64000)
    assert not peers[0].ibgp
    peers = compute_peers(n2, [n1, n2], None, [])
    assert (peers[0].local_as, peers[0].peer_as) == (64512, 65001)
    assert cluster_settings(None).as_number == 64512


# ---------------------------------------------------------------- BGPPeer scopes


def test_global_peer_ip_applies_to_every_node() -> None:
    tor = peer("tor", peerIP="192.168.1.1", asNumber=65000)
    for n in (N1, N2, N3):
        p = by_address(compute_peers(n, NODES, [config(nodeToNodeMeshEnabled=False)], [tor]))["192.168.1.1"]
        assert (p.type, p.name, p.peer_as, p.port, p.passive, p.peer_node) == (GLOBAL, "tor", 65000, 179, False, None)
        assert p.local_address == n.spec.bgp.ipv4Address.split("/")[0]  # type: ignore[union-attr]


def test_node_peer_applies_to_that_node_only() -> None:
    tor = peer("tor-n2", node="n2", peerIP="192.168.1.1:1790", asNumber=65000)
    assert "192.168.1.1" not in by_address(compute_peers(N1, NODES, None, [tor]))
    p = by_address(compute_peers(N2, NODES, None, [tor]))["192.168.1.1"]
    assert (p.type, p.port) == (NODE_SPECIFIC, 1790)


def test_node_selector_is_evaluated_on_the_local_node() -> None:
    tor = peer("tor-a", nodeSelector="rack == 'a'", peerIP="192.168.1.1", asNumber=65000)
    assert "192.168.1.1" in by_address(compute_peers(N1, NODES, None, [tor]))
    assert "192.168.1.1" in by_address(compute_peers(N2, NODES, None, [tor]))
    assert "192.168.1.1" not in by_address(compute_peers(N3, NODES, None, [tor]))


def test_bgp_peer_options() -> None:
    tor = peer(
        "tor",
        peerIP="192.168.1.1",
        asNumber=65000,
        password={"secretKeyRef": {"name": "tor", "key": "pw"}},
        sourceAddress="None",
        maxRestartTime="30s",
        keepOriginalNextHop=True,
        ttlSecurity=1,
        keepaliveTime="10s",
        numAllowedLocalASNumbers=1,
    )
    p = compute_peers(N1, [N1], None, [tor], secrets={"tor": {"pw": "x"}})[0]
    assert p.allowed_local_as == 1
    assert (p.password, p.local_address, p.graceful_restart, p.ttl_security) == ("x", None, 30, 1)
    assert p.keep_original_next_hop and p.next_hop_mode == "Keep"
    assert (p.keepalive, p.hold_time) == (10, 30)
    assert compute_peers(N1, [N1], None, [tor], secrets={}) == []


def test_ipv6_peer_gets_no_ipv4_source_address() -> None:
    tor = peer("tor6", peerIP="[fd00::1]:179", asNumber=65000)
    (p,) = compute_peers(N1, [N1], None, [tor])
    assert (p.address, p.local_address) == ("fd00::1", None)


def test_peer_selector_peers_are_the_selected_nodes_with_their_as() -> None:
    n3 = node("n3", "10.0.0.3", {"rack": "b"}, asNumber=65003)
    sel = peer("to-rack-b", nodeSelector="rack == 'a'", peerSelector="rack == 'b'")
    configs = [config(nodeToNodeMeshEnabled=False, asNumber=64000)]
    (p,) = compute_peers(N1, [N1, N2, n3], configs, [sel])
    assert (p.address, p.peer_as, p.local_as, p.peer_node, p.type) == ("10.0.0.3", 65003, 64000, "n3", NODE_SPECIFIC)
    assert p.passive is True  # two Tabby nodes: the lower address waits


def test_peer_selector_has_two_ends() -> None:
    sel = peer("to-rack-b", nodeSelector="rack == 'a'", peerSelector="rack == 'b'")
    configs = [config(nodeToNodeMeshEnabled=False)]
    peers = compute_peers(N3, NODES, configs, [sel])
    assert [p.address for p in peers] == ["10.0.0.1", "10.0.0.2"]
    assert all(p.name == "to-rack-b" and p.passive is False for p in peers)


def test_no_self_peering() -> None:
    me = peer("me", peerIP="10.0.0.1", asNumber=64512)
    everyone = peer("all", peerSelector="all()")
    peers = compute_peers(N1, NODES, None, [me, everyone])
    assert "10.0.0.1" not in by_address(peers)


# ---------------------------------------------------------------- dedupe


def test_explicit_bgp_peer_wins_over_mesh_for_the_same_address() -> None:
    explicit = peer("n2-explicit", peerIP="10.0.0.2", asNumber=64512, maxRestartTime="10s")
    p = by_address(compute_peers(N1, NODES, None, [explicit]))
    assert (p["10.0.0.2"].type, p["10.0.0.2"].name, p["10.0.0.2"].graceful_restart) == (GLOBAL, "n2-explicit", 10)
    assert p["10.0.0.3"].type == MESH
    assert len(p) == 2


def test_peer_selector_wins_over_mesh_and_lower_name_wins_among_peers() -> None:
    b = peer("b", peerSelector="rack == 'b'", maxRestartTime="20s")
    a = peer("a", peerSelector="rack == 'b'", maxRestartTime="10s")
    p = by_address(compute_peers(N1, NODES, None, [b, a]))
    assert (p["10.0.0.3"].name, p["10.0.0.3"].graceful_restart) == ("a", 10)
    assert p["10.0.0.2"].type == MESH


# ---------------------------------------------------------------- route reflectors


RR1 = node("rr1", "10.0.0.10", {"route-reflector": "true"}, routeReflectorClusterID="224.0.0.1")
RR2 = node("rr2", "10.0.0.11", {"route-reflector": "true"}, routeReflectorClusterID="224.0.0.1")
RR_PEER = peer("peer-with-rr", nodeSelector="all()", peerSelector="route-reflector == 'true'")
RR_NODES = [N1, N2, N3, RR1, RR2]


def test_reflectors_leave_the_mesh() -> None:
    peers = compute_peers(N1, RR_NODES, None, [])
    assert [p.address for p in peers] == ["10.0.0.2", "10.0.0.3"]
    assert compute_peers(RR1, RR_NODES, None, []) == []


def test_clients_peer_with_reflectors() -> None:
    peers = by_address(compute_peers(N1, RR_NODES, [config(nodeToNodeMeshEnabled=False)], [RR_PEER]))
    assert set(peers) == {"10.0.0.10", "10.0.0.11"}
    assert not any(p.route_reflector_client for p in peers.values())
    assert all(p.type == NODE_SPECIFIC for p in peers.values())


def test_reflector_peers_with_its_clients_and_other_reflectors() -> None:
    peers = by_address(compute_peers(RR1, RR_NODES, [config(nodeToNodeMeshEnabled=False)], [RR_PEER]))
    assert set(peers) == {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.11"}
    assert {a for a, p in peers.items() if p.route_reflector_client} == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert peers["10.0.0.11"].route_reflector_client is False
    # the reflector has the higher address: it connects, its clients wait
    assert not any(p.passive for a, p in peers.items() if a != "10.0.0.11")
    assert peers["10.0.0.11"].passive is True


def test_mesh_and_reflectors_together() -> None:
    # with the mesh on, ordinary nodes mesh among themselves and also peer with the reflectors
    peers = by_address(compute_peers(N2, RR_NODES, None, [RR_PEER]))
    assert {a: p.type for a, p in peers.items()} == {
        "10.0.0.1": MESH,
        "10.0.0.3": MESH,
        "10.0.0.10": NODE_SPECIFIC,
        "10.0.0.11": NODE_SPECIFIC,
    }


def test_speaker_spec() -> None:
    s = speaker_spec(RR1, [config(asNumber=64000)])
    assert s is not None
    assert (s.router_id, s.local_as, s.listen_port, s.cluster_id, s.node) == (
        "10.0.0.10",
        64000,
        179,
        "224.0.0.1",
        "rr1",
    )


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        ({"peerIP": "1.1.1.1", "asNumber": 1}, GLOBAL),
        ({"node": "n1", "peerIP": "1.1.1.1", "asNumber": 1}, NODE_SPECIFIC),
        ({"nodeSelector": "all()", "peerSelector": "all()"}, NODE_SPECIFIC),
    ],
)
def test_node_status_type(spec: dict[str, Any], label: str) -> None:
    assert node_status_type(peer("p", **spec)) == label
    assert node_status_type(None) == MESH


def test_ipv6_peer_ip_is_sourced_from_the_node_ipv6_address() -> None:
    me = node("n1", "10.0.0.1", ipv6Address="fd00::11/64")
    tor = peer("tor6", peerIP="[fd00::1]:179", asNumber=65000)
    (p,) = compute_peers(me, [me], None, [tor])
    assert (p.address, p.local_address) == ("fd00::1", "fd00::11")


def test_dual_stack_mesh_has_an_ipv4_and_an_ipv6_session_per_pair() -> None:
    a = node("a", "10.0.0.1", ipv6Address="fd00::1/64")
    b = node("b", "10.0.0.2", ipv6Address="fd00::2/64")
    c = node("c", "10.0.0.3")  # IPv4 only: one session
    peers = by_address(compute_peers(a, [a, b, c], None, []))
    assert sorted(peers) == ["10.0.0.2", "10.0.0.3", "fd00::2"]
    v6 = peers["fd00::2"]
    assert (v6.type, v6.name, v6.peer_node, v6.local_address, v6.passive) == (MESH, "b", "b", "fd00::1", True)
    back = by_address(compute_peers(b, [a, b, c], None, []))["fd00::1"]
    assert back.passive is False, "one active connector per pair on IPv6 too"
    # an IPv4-only local node has no IPv6 sessions
    assert sorted(by_address(compute_peers(c, [a, b, c], None, []))) == ["10.0.0.1", "10.0.0.2"]


def test_speaker_spec_carries_the_ipv6_address() -> None:
    me = node("n1", "10.0.0.1", ipv6Address="fd00::11/64")
    spec = speaker_spec(me, None)
    assert spec is not None and (spec.router_id, spec.address, spec.address6) == ("10.0.0.1", "10.0.0.1", "fd00::11")
