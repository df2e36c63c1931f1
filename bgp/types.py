"""Plain BGP value types shared by the pure BGP code (peers, RIB, announcements) and the ExaBGP bridge.

Everything here is a frozen dataclass of strings, ints and tuples: hashable (announcements live in
sets and are diffed), comparable in tests, and free of any I/O or datastore dependency so the speaker
side (config rendering, API bridge) and the calculation side can be written and tested apart.

Conventions:
- prefixes are normalised network strings ("10.65.0.0/26"); use `normalize_prefix` on input;
- addresses and router ids are dotted strings;
- communities are "aa:nn" strings, large communities "aa:nn:mm" strings.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Literal

from bgp.filters import RouteFilter

__all__ = [
    "AS_CONFED_SEQUENCE",
    "AS_CONFED_SET",
    "AS_SEQUENCE",
    "AS_SET",
    "DEFAULT_GRACEFUL_RESTART",
    "DEFAULT_HOLD_TIME",
    "DEFAULT_LOCAL_PREF",
    "DEFAULT_PORT",
    "GLOBAL",
    "IPV4_UNICAST",
    "IPV6_UNICAST",
    "MESH",
    "NODE_SPECIFIC",
    "ORIGIN_RANK",
    "Announcement",
    "BestRoute",
    "GracefulRestart",
    "NextHopMode",
    "Origin",
    "Path",
    "PeerSpec",
    "PeerType",
    "SpeakerSpec",
    "family_of",
    "normalize_prefix",
]

Origin = Literal["igp", "egp", "incomplete"]
ORIGIN_RANK: dict[str, int] = {"igp": 0, "egp": 1, "incomplete": 2}
"""RFC 4271 ORIGIN order used by the decision process: IGP < EGP < INCOMPLETE (lower wins)."""

PeerType = Literal["node-to-node mesh", "global", "node specific"]
MESH: PeerType = "node-to-node mesh"
GLOBAL: PeerType = "global"
NODE_SPECIFIC: PeerType = "node specific"
"""Peer types spelled as `calicoctl node status` prints them, so `tabbyctl node status` can too."""

NextHopMode = Literal["Auto", "Self", "Keep"]

DEFAULT_PORT = 179
DEFAULT_HOLD_TIME = 90
DEFAULT_GRACEFUL_RESTART = 120
DEFAULT_LOCAL_PREF = 100

AS_SEQUENCE = "as-sequence"
AS_SET = "as-set"
AS_CONFED_SEQUENCE = "confed-sequence"
AS_CONFED_SET = "confed-set"
"""AS_PATH segment kinds, spelled as ExaBGP's JSON spells them."""

IPV4_UNICAST = "ipv4 unicast"
IPV6_UNICAST = "ipv6 unicast"
"""<AFI, SAFI> spelled as ExaBGP's commands and update messages spell them."""


@functools.lru_cache(maxsize=1 << 17)
def normalize_prefix(prefix: str) -> str:
    """Canonical network text ("10.0.0.1" -> "10.0.0.1/32", "10.0.0.0/24" kept); host bits are refused.

    One spelling per prefix, so RIB keys, announcements and kernel routes compare equal. Cached: the RIB
    normalises every path of every UPDATE (twice), and parsing through ipaddress was 8% of the agent's
    time in the 10,000-prefix benchmark; a prefix seen once is seen again on every re-announcement.
    """
    return str(ipaddress.ip_network(prefix, strict=True))


def family_of(prefix: str) -> str:
    """The <AFI, SAFI> a unicast prefix belongs to ("ipv4 unicast" / "ipv6 unicast")."""
    return IPV6_UNICAST if ":" in prefix else IPV4_UNICAST


@dataclass(frozen=True, slots=True)
class GracefulRestart:
    """A peer's Graceful Restart capability (RFC 4724 3) as received in its last OPEN.

    `families`: the <AFI, SAFI> tuples it listed, each with its F bit (True: the peer preserved its
    forwarding state for that family across the restart). An empty tuple is a helper-only speaker (FRR
    in its default mode): it helps us restart but keeps no forwarding state itself, so its paths must
    go the moment its session does. `restarting`: the R bit (the peer has just restarted).
    """

    restart_time: int
    families: tuple[tuple[str, bool], ...] = ()
    restarting: bool = False

    def lists(self, family: str) -> bool:
        """Whether the capability lists `family` (its paths are kept stale when the session drops)."""
        return any(f == family for f, _ in self.families)

    def forwarding(self, family: str) -> bool:
        """Whether `family` is listed with its F bit set (stale paths survive the re-established session)."""
        return any(f == family and kept for f, kept in self.families)


@dataclass(frozen=True, slots=True)
class Path:
    """One route received from one peer (an Adj-RIB-In entry), with the attributes best-path needs.

    `as_path` holds every AS of AS_PATH in order (loop detection needs them all); `as_path_segments`
    keeps the segment structure ((kind, ASes) with kind one of AS_SEQUENCE, AS_SET, AS_CONFED_SEQUENCE,
    AS_CONFED_SET) when the path has anything but AS_SEQUENCEs, else it is empty.

    `med` None means "absent" (treated as 0, RFC 4271 9.1.2.2 c); `local_pref` None means "absent"
    (treated as DEFAULT_LOCAL_PREF, which is what an eBGP-learned path gets). The `peer_*` and `ibgp`
    fields describe the session it came from; the RIB fills them from the session when it knows it.
    `stale` is set by the RIB on graceful restart, never by the sender.
    """

    prefix: str
    next_hop: str
    as_path: tuple[int, ...] = ()
    origin: Origin = "igp"
    med: int | None = None
    local_pref: int | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    originator_id: str | None = None
    cluster_list: tuple[str, ...] = ()
    peer_address: str = ""
    peer_as: int = 0
    peer_router_id: str = ""
    ibgp: bool = False
    stale: bool = False
    as_path_segments: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def path_length(self) -> int:
        """AS_PATH length for the decision process (RFC 4271 9.1.2.2 a): an AS_SET counts 1 whatever its
        size, confederation segments count 0 (RFC 5065 5.3). Without segments, every AS counts 1."""
        if not self.as_path_segments:
            return len(self.as_path)
        return sum(
            len(ases) if kind == AS_SEQUENCE else 1 if kind == AS_SET else 0 for kind, ases in self.as_path_segments
        )

    @property
    def neighbour_as(self) -> int | None:
        """The AS the path was learned from for MED comparison: the first AS in AS_PATH (None if empty,
        i.e. originated inside our AS)."""
        for kind, ases in self.as_path_segments:
            if kind == AS_SEQUENCE and ases:
                return ases[0]
        return self.as_path[0] if self.as_path else None


_PATH_FIELDS = tuple(Path.__dataclass_fields__)
_new_path = object.__new__
_set = object.__setattr__


def evolve_path(path: Path, changes: dict[str, object]) -> Path:
    """``dataclasses.replace(path, **changes)`` without its per-call field introspection and keyword
    __init__: the RIB re-stamps every received path with its session's facts, and replace() was 6 us
    a path (60 ms of a 10,000-prefix burst). Path has no __post_init__ and no validation to skip."""
    unknown = changes.keys() - Path.__dataclass_fields__.keys()
    if unknown:
        raise TypeError(f"Path has no field(s) {sorted(unknown)}")
    out = _new_path(Path)
    for name in _PATH_FIELDS:
        _set(out, name, changes[name] if name in changes else getattr(path, name))
    return out


@dataclass(frozen=True, slots=True)
class BestRoute:
    """The selected route for one prefix: the best path and, when several tie (ECMP), all next hops.

    `next_hops` is sorted and deduplicated; `paths` holds every multipath member, best first.
    """

    prefix: str
    next_hops: tuple[str, ...]
    path: Path
    paths: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One BGP session the local node should have, as the ExaBGP config renderer needs it.

    `passive`: one active connector per mesh pair - the node with the lower address waits (field
    notes: Calico's rule), so two nodes never race two TCP connections into a collision.
    `local_address`: the node IP when sourceAddress is UseNodeIP (the default), None to let the kernel
    pick (sourceAddress: None). `graceful_restart`: restart time in seconds to advertise, None to not
    negotiate graceful restart. `password` is the resolved MD5 secret (never a reference).
    `name`: the BGPPeer's name, or the peer node's name for a mesh peer. `peer_node`: the Tabby node
    behind the address when known (mesh and peerSelector peers), None for routers outside.
    `allowed_local_as`: numAllowedLocalASNumbers, how often our own AS may appear in a path from this peer
    before the AS_PATH loop check drops it (Calico's one-AS-for-all-nodes, eBGP-to-the-ToR design).
    `route_filter`: the BGPPeer's compiled BGPFilters (None: none named), applied by the RIB on import and
    by the agent on export. `bfd`: failureDetectionMode BFDIfDirectlyConnected (the agent runs BFD when the
    peer is on the local subnet).
    """

    address: str
    peer_as: int
    local_as: int
    type: PeerType
    name: str
    port: int = DEFAULT_PORT
    local_address: str | None = None
    password: str | None = None
    passive: bool = False
    hold_time: int = DEFAULT_HOLD_TIME
    keepalive: int | None = None
    graceful_restart: int | None = DEFAULT_GRACEFUL_RESTART
    ttl_security: int | None = None
    next_hop_mode: NextHopMode = "Auto"
    route_reflector_client: bool = False
    peer_node: str | None = None
    allowed_local_as: int = 0
    route_filter: RouteFilter | None = None
    bfd: bool = False

    @property
    def ibgp(self) -> bool:
        """True when both ends share an AS (iBGP: no AS prepend, LOCAL_PREF carried, RR rules apply)."""
        return self.peer_as == self.local_as

    @property
    def keep_original_next_hop(self) -> bool:
        """keepOriginalNextHop: true is nextHopMode Keep in Calico."""
        return self.next_hop_mode == "Keep"


@dataclass(frozen=True, slots=True)
class SpeakerSpec:
    """The local speaker's own identity: what ExaBGP's neighbours share (router-id, AS, listen port).

    `cluster_id` is the node's routeReflectorClusterID (None: not a route reflector). `address6`: the node's
    IPv6 address (Node spec.bgp.ipv6Address), the source of its IPv6 sessions and a second listen address.
    """

    node: str
    router_id: str
    local_as: int
    listen_port: int = DEFAULT_PORT
    cluster_id: str | None = None
    address: str | None = None
    address6: str | None = None


@dataclass(frozen=True, slots=True)
class Announcement:
    """One route to announce (or withdraw) through ExaBGP.

    `next_hop` is "self" or an explicit address (reflected routes keep the original next hop).
    `originator_id`/`cluster_list` are set only on reflected routes (RFC 4456). `as_path` is what to
    send besides our own AS (ExaBGP prepends the local AS on eBGP sessions itself); `as_path_segments`, when
    set, replaces it with the segment structure (a reflected path keeps its AS_SETs).
    """

    prefix: str
    next_hop: str = "self"
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    local_pref: int | None = None
    med: int | None = None
    origin: Origin = "igp"
    as_path: tuple[int, ...] = ()
    originator_id: str | None = None
    cluster_list: tuple[str, ...] = ()
    withdraw: bool = False
    as_path_segments: tuple[tuple[str, tuple[int, ...]], ...] = ()
