"""Which BGP sessions a node should have, computed from the datastore's resources (pure).

Input is the validated datamodel resources (`Node`, `BGPConfiguration`, `BGPPeer`) rather than raw
dicts: they are already checked and normalised (peerIP split rules, durations, AS number forms), so
this module never re-validates, and the node agent already holds them from its watch. Output is plain
`bgp.types.PeerSpec` values for the ExaBGP config renderer and `SpeakerSpec` for the local identity.

Rules (Calico's; see docs/bgp-rib.md):
- node-to-node mesh when BGPConfiguration `default` has nodeToNodeMeshEnabled (default true): every
  other node with spec.bgp.ipv4Address; and, when both ends have spec.bgp.ipv6Address, a second session
  between the IPv6 addresses (as calico-node's BIRD has one IPv4 and one IPv6 session per pair; each
  carries its own family); nodes with routeReflectorClusterID are not in the mesh, on
  either end. One active connector per pair: the node with the lower address is passive.
- BGPPeer applies to the local node when global (no node, no nodeSelector), when `node` names it, or
  when `nodeSelector` matches the local node's labels. `peerIP` (optionally with port) gives one peer;
  `peerSelector` gives every selected node, with that node's AS (else the cluster AS).
  A peerSelector peering has two ends, as in Calico: a node selected by a BGPPeer's peerSelector also
  peers with every node that BGPPeer applies to (that is how a reflector learns its clients).
- One session per address, and never with ourselves: an explicit peerIP beats a peerSelector peering,
  which beats the mesh; among BGPPeers of the same kind the lower name wins.
- AS numbers: node spec.bgp.asNumber, else BGPConfiguration default asNumber, else 64512.
- Route reflector clients: a local node with routeReflectorClusterID treats every Tabby node peer
  that is not a reflector itself as its client.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bgp.filters import compile_filters
from bgp.types import (
    DEFAULT_GRACEFUL_RESTART,
    DEFAULT_HOLD_TIME,
    DEFAULT_PORT,
    GLOBAL,
    MESH,
    NODE_SPECIFIC,
    NextHopMode,
    PeerSpec,
    PeerType,
    SpeakerSpec,
)
from datamodel.resources.bgp import BGPConfiguration, BGPPassword, BGPPeer
from datamodel.resources.common import DEFAULT_AS_NUMBER, parse_duration
from datamodel.resources.node import Node
from datamodel.selector import selector_matches

__all__ = [
    "ClusterSettings",
    "SecretResolver",
    "cluster_settings",
    "compute_peers",
    "node_address",
    "node_address6",
    "node_status_type",
    "speaker_spec",
]

log = logging.getLogger(__name__)

SecretResolver = Callable[[str, str], str | None] | Mapping[str, Mapping[str, str]]
"""How a secretKeyRef becomes a password: a callable (secret name, key) -> value or None, or a
mapping secret name -> {key: value} (what tests and a static secrets file provide)."""

# Rank of where a peering came from: lower wins when two give the same address.
_RANK_PEER_IP = 0
_RANK_PEER_SELECTOR = 1
_RANK_REVERSE_SELECTOR = 2
_RANK_MESH = 3


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The BGPConfiguration values peer calculation needs, defaults filled in."""

    mesh_enabled: bool = True
    as_number: int = DEFAULT_AS_NUMBER
    listen_port: int = DEFAULT_PORT
    mesh_password: BGPPassword | None = None
    mesh_restart_time: int = DEFAULT_GRACEFUL_RESTART
    node_listen_ports: Mapping[str, int] | None = None

    def listen_port_of(self, node: str) -> int:
        """A node's listen port: its `node.<name>` BGPConfiguration's listenPort, else the cluster's."""
        return (self.node_listen_ports or {}).get(node, self.listen_port)


def cluster_settings(bgp_configs: BGPConfiguration | Iterable[BGPConfiguration] | None) -> ClusterSettings:
    """Fold `default` and `node.<name>` BGPConfigurations into one settings value (absent = Calico defaults)."""
    if bgp_configs is None:
        configs: list[BGPConfiguration] = []
    elif isinstance(bgp_configs, BGPConfiguration):
        configs = [bgp_configs]
    else:
        configs = list(bgp_configs)
    default = next((c for c in configs if c.name == "default"), None)
    node_ports = {c.node_name: c.spec.listenPort for c in configs if c.node_name and c.spec.listenPort is not None}
    if default is None:
        return ClusterSettings(node_listen_ports=node_ports)
    s = default.spec
    restart = DEFAULT_GRACEFUL_RESTART
    if s.nodeMeshMaxRestartTime is not None:
        restart = round(parse_duration(s.nodeMeshMaxRestartTime))
    return ClusterSettings(
        mesh_enabled=s.nodeToNodeMeshEnabled is not False,
        as_number=s.asNumber if s.asNumber is not None else DEFAULT_AS_NUMBER,
        listen_port=s.listenPort if s.listenPort is not None else DEFAULT_PORT,
        mesh_password=s.nodeMeshPassword,
        mesh_restart_time=restart,
        node_listen_ports=node_ports,
    )


def node_address(node: Node) -> str | None:
    """The node's IPv4 BGP address without its prefix length (spec.bgp.ipv4Address is CIDR form)."""
    bgp = node.spec.bgp
    if bgp is None or not bgp.ipv4Address:
        return None
    return str(ipaddress.ip_interface(bgp.ipv4Address).ip)


def node_address6(node: Node) -> str | None:
    """The node's IPv6 BGP address without its prefix length (spec.bgp.ipv6Address, CIDR form)."""
    bgp = node.spec.bgp
    if bgp is None or not bgp.ipv6Address:
        return None
    return str(ipaddress.ip_interface(bgp.ipv6Address).ip)


def _node_as(node: Node, settings: ClusterSettings) -> int:
    bgp = node.spec.bgp
    if bgp is not None and bgp.asNumber is not None:
        return bgp.asNumber
    return settings.as_number


def _cluster_id(node: Node) -> str | None:
    return node.spec.bgp.routeReflectorClusterID if node.spec.bgp else None


def _labels(node: Node) -> Mapping[str, str]:
    return node.metadata.labels or {}


def node_status_type(bgp_peer: BGPPeer | None) -> PeerType:
    """The "Peer type" column of `calicoctl node status`: mesh when there is no BGPPeer behind the
    session, "global" for a BGPPeer that applies to every node, "node specific" for one with `node`
    or `nodeSelector`."""
    if bgp_peer is None:
        return MESH
    if bgp_peer.spec.node or bgp_peer.spec.nodeSelector:
        return NODE_SPECIFIC
    return GLOBAL


def speaker_spec(
    local_node: Node, bgp_configs: BGPConfiguration | Iterable[BGPConfiguration] | None
) -> SpeakerSpec | None:
    """The local speaker's identity: router id = the node's IPv4 address (as Calico), AS, listen port,
    cluster id. None when the node has no IPv4 BGP address (it cannot run BGP)."""
    address = node_address(local_node)
    if address is None:
        return None
    settings = cluster_settings(bgp_configs)
    return SpeakerSpec(
        node=local_node.name,
        router_id=address,
        local_as=_node_as(local_node, settings),
        listen_port=settings.listen_port_of(local_node.name),
        cluster_id=_cluster_id(local_node),
        address=address,
        address6=node_address6(local_node),
    )


def _resolve_password(
    password: BGPPassword | None, secrets: SecretResolver | None, what: str
) -> tuple[bool, str | None]:
    """(usable, password). Unusable when a required secret cannot be resolved: a session without the
    MD5 key the other end expects never comes up, and sending unauthenticated SYNs is worse."""
    if password is None or password.secretKeyRef is None:
        return True, None
    ref = password.secretKeyRef
    value: str | None = None
    if callable(secrets):
        value = secrets(ref.name, ref.key)
    elif secrets is not None:
        value = secrets.get(ref.name, {}).get(ref.key)
    if value is None:
        if ref.optional:
            return True, None
        log.warning("%s: password secret %s/%s not found; peering skipped", what, ref.name, ref.key)
        return False, None
    return True, value


def _applies_to(bgp_peer: BGPPeer, node: Node) -> bool:
    """Whether a BGPPeer's local side (node / nodeSelector / global) includes `node`."""
    s = bgp_peer.spec
    if s.node:
        return s.node == node.name
    if s.nodeSelector:
        return selector_matches(s.nodeSelector, _labels(node))
    return True


def _passive(local_address: str, peer_address: str) -> bool:
    """Lower address waits: exactly one side of a Tabby node pair connects actively."""
    return ipaddress.ip_address(local_address) < ipaddress.ip_address(peer_address)


def compute_peers(
    local_node: Node,
    nodes: Iterable[Node],
    bgp_configs: BGPConfiguration | Iterable[BGPConfiguration] | None,
    bgp_peers: Iterable[BGPPeer],
    secrets: SecretResolver | None = None,
    bgp_filters: Iterable[Any] = (),
) -> list[PeerSpec]:
    """The sessions `local_node` should have, sorted by peer address (see the module docstring).
    `bgp_filters`: the BGPFilter resources a BGPPeer's `filters` may name (compiled per session)."""
    filters = {f.name: f for f in bgp_filters}
    local_address = node_address(local_node)
    if local_address is None:
        return []
    settings = cluster_settings(bgp_configs)
    local_address6 = node_address6(local_node)
    local_as = _node_as(local_node, settings)
    local_cid = _cluster_id(local_node)
    others = [n for n in nodes if n.name != local_node.name and node_address(n) is not None]
    others.sort(key=lambda n: n.name)
    candidates: list[tuple[int, str, PeerSpec]] = []

    def node_peer(
        node: Node, rank: int, name: str, bgp_peer: BGPPeer | None, peer_type: PeerType
    ) -> list[tuple[int, str, PeerSpec]]:
        """The IPv4 session with a Tabby node, plus the IPv6 one when both ends have an IPv6 address."""
        out = []
        pairs = [(local_address, node_address(node))]
        if local_address6 is not None and node_address6(node) is not None:
            pairs.append((local_address6, node_address6(node)))
        for mine, address in pairs:
            assert mine is not None and address is not None
            if address == mine:
                continue
            if bgp_peer is not None:
                options = _peer_options(bgp_peer, mine, secrets, filters)
                if options is None:
                    return []
            else:
                ok, password = _resolve_password(settings.mesh_password, secrets, "node-to-node mesh")
                if not ok:
                    return []
                options = {"password": password, "graceful_restart": settings.mesh_restart_time}
                options["local_address"] = mine
            spec = PeerSpec(
                address=address,
                port=settings.listen_port_of(node.name),
                peer_as=_node_as(node, settings),
                local_as=local_as,
                type=peer_type,
                name=name,
                passive=_passive(mine, address),
                route_reflector_client=local_cid is not None and _cluster_id(node) is None,
                peer_node=node.name,
                **options,  # type: ignore[arg-type]
            )
            out.append((rank, name, spec))
        return out

    # node-to-node mesh (reflectors leave it, on both ends)
    if settings.mesh_enabled and local_cid is None:
        for node in others:
            if _cluster_id(node) is None:
                candidates += node_peer(node, _RANK_MESH, node.name, None, MESH)

    for bgp_peer in sorted(bgp_peers, key=lambda p: p.name):
        s = bgp_peer.spec
        peer_type = node_status_type(bgp_peer)
        if _applies_to(bgp_peer, local_node):
            if s.peerIP:
                c = _explicit_peer(bgp_peer, local_address, local_as, peer_type, secrets, filters, local_address6)
                if c is not None:
                    candidates.append(c)
            elif s.peerSelector:
                for node in others:
                    if selector_matches(s.peerSelector, _labels(node)):
                        candidates += node_peer(node, _RANK_PEER_SELECTOR, bgp_peer.name, bgp_peer, peer_type)
        # the other end of a peerSelector peering: we are selected, so peer with the nodes it applies to
        if s.peerSelector and selector_matches(s.peerSelector, _labels(local_node)):
            for node in others:
                if _applies_to(bgp_peer, node):
                    candidates += node_peer(node, _RANK_REVERSE_SELECTOR, bgp_peer.name, bgp_peer, peer_type)

    chosen: dict[str, tuple[int, str, PeerSpec]] = {}
    for cand in candidates:
        address = cand[2].address
        if address in (local_address, local_address6):
            continue
        if address not in chosen or cand[:2] < chosen[address][:2]:
            chosen[address] = cand
    return [chosen[a][2] for a in sorted(chosen, key=_address_key)]


def _address_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


def _peer_options(
    bgp_peer: BGPPeer, local_address: str, secrets: SecretResolver | None, filters: Mapping[str, Any] | None = None
) -> dict[str, object] | None:
    """The session options a BGPPeer sets (None when its password cannot be resolved)."""
    s = bgp_peer.spec
    ok, password = _resolve_password(s.password, secrets, f"BGPPeer {bgp_peer.name}")
    if not ok:
        return None
    next_hop: NextHopMode = "Keep" if s.keepOriginalNextHop else (s.nextHopMode or "Auto")
    keepalive = round(parse_duration(s.keepaliveTime)) if s.keepaliveTime else None
    hold = max(3 * keepalive, 3) if keepalive else DEFAULT_HOLD_TIME
    restart = round(parse_duration(s.maxRestartTime)) if s.maxRestartTime else DEFAULT_GRACEFUL_RESTART
    return {
        "local_address": None if s.sourceAddress == "None" else local_address,
        "password": password,
        "graceful_restart": restart,
        "ttl_security": s.ttlSecurity or None,
        "next_hop_mode": next_hop,
        "keepalive": keepalive,
        "hold_time": hold,
        "allowed_local_as": s.numAllowedLocalASNumbers or 0,
        "route_filter": compile_filters(s.filters, filters or {}),
        "bfd": s.failureDetectionMode == "BFDIfDirectlyConnected",
    }


def _explicit_peer(
    bgp_peer: BGPPeer,
    local_address: str,
    local_as: int,
    peer_type: PeerType,
    secrets: SecretResolver | None,
    filters: Mapping[str, Any] | None = None,
    local_address6: str | None = None,
) -> tuple[int, str, PeerSpec] | None:
    """A peerIP peering: a router outside (or a node addressed explicitly); always an active connector.
    An IPv6 peerIP is sourced from the node's IPv6 address (left to the kernel when the node has none)."""
    where = bgp_peer.peer_address()
    assert where is not None and bgp_peer.spec.asNumber is not None
    address, port = where
    options = _peer_options(bgp_peer, local_address, secrets, filters)
    if options is None:
        return None
    ip = ipaddress.ip_address(address)
    if options["local_address"] is not None and ipaddress.ip_address(local_address).version != ip.version:
        # an IPv6 router: the node's IPv4 address cannot be the source; its IPv6 address is, when it has one
        options["local_address"] = local_address6 if ip.version == 6 else None
    spec = PeerSpec(
        address=str(ip),
        port=port or DEFAULT_PORT,
        peer_as=bgp_peer.spec.asNumber,
        local_as=local_as,
        type=peer_type,
        name=bgp_peer.name,
        **options,  # type: ignore[arg-type]
    )
    return (_RANK_PEER_IP, bgp_peer.name, spec)
