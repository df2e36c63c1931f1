"""The RIB: per-peer Adj-RIB-In, loop checks, best-path selection with ECMP, graceful restart and
RFC 4456 route reflection, all pure (no I/O, no clock unless the caller lets it read one).

ExaBGP only speaks the protocol: it keeps no Loc-RIB, picks no best path and drops no loops, so the
node agent feeds every parsed UPDATE through `Rib.update`, session changes through `peer_up` /
`peer_down` / `end_of_rib`, and takes `drain_changes()` to the route programmer (and `reflect()` to
ExaBGP when the node is a route reflector). The rules implemented are written down in
docs/bgp-rib.md; the comments here say why where the code is not self-explanatory.

Keys: a peer is identified by its address (the neighbour's IP as ExaBGP reports it), a prefix by its
normalised network text (`bgp.types.normalize_prefix`).
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from bgp.types import (
    DEFAULT_LOCAL_PREF,
    ORIGIN_RANK,
    Announcement,
    BestRoute,
    GracefulRestart,
    Path,
    PeerSpec,
    evolve_path,
    family_of,
    normalize_prefix,
)

__all__ = [
    "REJECT_AS_LOOP",
    "REJECT_CLUSTER_LOOP",
    "REJECT_FILTERED",
    "REJECT_ORIGINATOR",
    "NextHopCheck",
    "Rib",
    "RibCounters",
    "next_hop_check",
    "select_best",
]

REJECT_AS_LOOP = "as_path_loop"
"""Own AS in AS_PATH (RFC 4271 9.1.2): our own announcement came back, e.g. FRR reflecting it over eBGP."""
REJECT_ORIGINATOR = "originator_id"
"""ORIGINATOR_ID equals our router id (RFC 4456 8): a reflector sent our own route back to us."""
REJECT_FILTERED = "import_filter"
"""A BGPFilter of the peer rejected the path on import (kept aside: a changed filter re-evaluates it)."""
REJECT_CLUSTER_LOOP = "cluster_list_loop"
"""Our cluster id in CLUSTER_LIST (RFC 4456 8): the route already went through our cluster."""

NextHopCheck = Callable[[str, str], bool]
"""`(prefix, next_hop) -> usable`: whether the node can reach a path's NEXT_HOP for that prefix."""

_UNKNOWN_ID = 1 << 128  # sorts after every real router id / address


@functools.lru_cache(maxsize=1 << 16)
def _id_key(text: str | None) -> int:
    """Numeric order of a router id or address (RFC 4271 compares BGP identifiers as numbers, so
    "10.0.0.9" < "10.0.0.10"); unknown or unparsable ids sort last so a known id always wins."""
    if not text:
        return _UNKNOWN_ID
    try:
        return int(ipaddress.ip_address(text))
    except ValueError:
        return _UNKNOWN_ID


def next_hop_check(local_addresses: Iterable[str], ipip_pools: Iterable[str] = ()) -> NextHopCheck:
    """The NEXT_HOP rule of Tabby's route programmer (Calico's BIRD rules), as a decision-process check: a
    hop is usable when it is on the subnet of one of the node's addresses (`"10.0.0.1/24"`), or when the
    prefix is IPv4 inside an IPIP pool (Always or CrossSubnet: reached through tunl0 onlink)."""
    subnets = [ipaddress.ip_interface(a).network for a in local_addresses]
    pools = [ipaddress.ip_network(p) for p in ipip_pools]

    # cached per (prefix, next hop): the decision process asks for every path on every recompute, and
    # parsing both through ipaddress each time was a large part of the RIB's cost at 10,000 prefixes; a
    # new check (set_next_hop_check) is a new closure, so the cache never outlives the rule
    @functools.lru_cache(maxsize=1 << 17)
    def ok(prefix: str, next_hop: str) -> bool:
        try:
            hop = ipaddress.ip_address(next_hop)
            net = ipaddress.ip_network(prefix)
        except ValueError:
            return False
        if hop.version == 4 and net.version == 4 and any(net.version == p.version and net.subnet_of(p) for p in pools):  # type: ignore[arg-type]
            return True
        return any(hop.version == s.version and hop in s for s in subnets)

    return ok


def _local_pref(path: Path) -> int:
    return DEFAULT_LOCAL_PREF if path.local_pref is None else path.local_pref


def _tie_break_key(path: Path) -> tuple[int, int, int]:
    """Steps after the multipath set is fixed: lowest router id (ORIGINATOR_ID stands in for it on
    reflected routes, RFC 4456 9), shortest CLUSTER_LIST (RFC 4456 9), lowest peer address."""
    return (
        _id_key(path.originator_id or path.peer_router_id or path.peer_address),
        len(path.cluster_list),
        _id_key(path.peer_address),
    )


def select_best(paths: Iterable[Path], next_hop_ok: NextHopCheck | None = None) -> BestRoute | None:
    """The decision process over one prefix's candidate paths; None when there are none usable.

    Filtering, one attribute at a time, keeps the result a function of the *set* of paths (never of
    the order they arrived in), which a pairwise "compare with the current best" loop cannot promise
    once MED is compared only within a neighbour AS (that comparison is not transitive).

    0. paths whose NEXT_HOP `next_hop_ok(prefix, next_hop)` rejects are excluded first (RFC 4271 9.1.2:
    an unresolvable path is not a candidate, so a usable path that would have lost wins instead);
    1. highest LOCAL_PREF (absent = 100); 2. shortest AS_PATH (an AS_SET counts 1, confederation
    segments 0); 3. lowest ORIGIN (igp < egp <
    incomplete); 4. lowest MED among paths from the same neighbour AS (absent = 0; paths from
    different neighbour ASes all survive this step - "deterministic MED"); 5. eBGP over iBGP.
    The survivors are the multipath (ECMP) set; 6. the best of them by lowest router id /
    ORIGINATOR_ID, then shortest CLUSTER_LIST, then lowest peer address.
    """
    cands = list(paths)
    if next_hop_ok is not None:
        cands = [p for p in cands if next_hop_ok(p.prefix, p.next_hop)]
    if not cands:
        return None
    if len(cands) == 1:  # the common case (one peer announces the prefix): every step keeps it
        only = cands[0]
        return BestRoute(prefix=only.prefix, next_hops=(only.next_hop,), path=only, paths=(only,))
    top = max(_local_pref(p) for p in cands)
    cands = [p for p in cands if _local_pref(p) == top]
    shortest = min(p.path_length for p in cands)
    cands = [p for p in cands if p.path_length == shortest]
    origin = min(ORIGIN_RANK[p.origin] for p in cands)
    cands = [p for p in cands if ORIGIN_RANK[p.origin] == origin]
    lowest_med: dict[int | None, int] = {}
    for p in cands:
        med = p.med or 0
        key = p.neighbour_as
        if key not in lowest_med or med < lowest_med[key]:
            lowest_med[key] = med
    cands = [p for p in cands if (p.med or 0) == lowest_med[p.neighbour_as]]
    if any(not p.ibgp for p in cands):
        cands = [p for p in cands if not p.ibgp]
    cands.sort(key=_tie_break_key)
    best = cands[0]
    next_hops = tuple(sorted({p.next_hop for p in cands}, key=lambda nh: (_id_key(nh), nh)))
    return BestRoute(prefix=best.prefix, next_hops=next_hops, path=best, paths=tuple(cands))


@dataclass(slots=True)
class _Session:
    """What the RIB knows about one neighbour: its spec (AS, RR client), router id, state, GR state.

    `received` is the GR capability of the last OPEN seen (`peer_open`), `open_pending` says it has not
    been applied yet; `peer_up` moves it to `gr`, the capability of the session that is (or last was)
    Established, which is what `peer_down` acts on. `stale_deadline` is set at the first loss and never
    pushed out while stale paths remain: a peer that keeps flapping without End-of-RIB loses them after
    one restart time.
    """

    spec: PeerSpec | None
    router_id: str = ""
    open_router_id: str = ""
    up: bool = False
    received: GracefulRestart | None = None
    open_pending: bool = False
    gr: GracefulRestart | None = None
    stale_deadline: float | None = None


@dataclass(frozen=True, slots=True)
class RibCounters:
    """Numbers for metrics and `node status`: paths held per peer, rejections per reason, sizes."""

    paths_per_peer: dict[str, int]
    stale_per_peer: dict[str, int]
    rejected: dict[str, int]
    prefixes: int
    paths: int


@dataclass(slots=True)
class _Reflected:
    """What reflect() last told each target about one prefix, so changes become re-announcements and
    targets that drop out of the set get a withdraw."""

    by_target: dict[str, Announcement] = field(default_factory=dict)


class Rib:
    """Adj-RIB-In per peer plus the Loc-RIB (best route per prefix) derived from it.

    `cluster_id` makes this RIB a route reflector's (enables the CLUSTER_LIST loop check and
    `reflect()`); Tabby nodes with Node.spec.bgp.routeReflectorClusterID pass it.
    """

    def __init__(
        self,
        local_as: int,
        router_id: str,
        cluster_id: str | None = None,
        next_hop_ok: NextHopCheck | None = None,
    ) -> None:
        self.local_as = local_as
        self.router_id = router_id
        self.cluster_id = cluster_id
        self._next_hop_ok = next_hop_ok
        self._originated: frozenset[str] = frozenset()
        self._sessions: dict[str, _Session] = {}
        self._adj_in: dict[str, dict[str, Path]] = {}
        self._by_prefix: dict[str, dict[str, Path]] = {}
        self._best: dict[str, BestRoute] = {}
        # prefix -> best route as of the last drain_changes(), recorded when the prefix first changes
        self._pending: dict[str, BestRoute | None] = {}
        self._rejected: Counter[str] = Counter()
        # paths an import filter rejected, per peer and prefix (soft reconfiguration: a filter change needs
        # no ROUTE-REFRESH)
        self._filtered: dict[str, dict[str, Path]] = {}
        self._reflected: dict[str, _Reflected] = {}

    # ------------------------------------------------------------------ sessions

    def peer_open(self, peer: str, router_id: str = "", graceful_restart: GracefulRestart | None = None) -> None:
        """The peer's OPEN arrived (before its session is Established): remember its BGP Identifier (tie-breaks,
        ORIGINATOR_ID when reflecting) and its Graceful Restart capability (None: it sent none)."""
        sess = self._sessions.setdefault(peer, _Session(spec=None))
        sess.open_router_id = router_id
        sess.received = graceful_restart
        sess.open_pending = True

    def peer_up(self, peer: PeerSpec, router_id: str = "", *, now: float | None = None) -> None:
        """A session reached Established (or, without a new OPEN, its spec changed while up).

        With a new OPEN (RFC 4724 4.2): stale paths of every <AFI, SAFI> the new capability does not list
        with its F bit set go at once (no capability: all of them); the rest stay until End-of-RIB or the
        deadline set when the session was lost, which is not pushed out. The router id is the OPEN's BGP
        Identifier when known, else `router_id` (a Tabby node's address)."""
        sess = self._sessions.get(peer.address)
        if sess is None:
            sess = self._sessions[peer.address] = _Session(spec=peer)
        old_filter = sess.spec.route_filter if sess.spec is not None else None
        sess.spec = peer
        if peer.route_filter != old_filter:
            self._refilter(peer.address)
        sess.router_id = sess.open_router_id or router_id
        sess.up = True
        if sess.open_pending:
            sess.open_pending = False
            sess.gr = sess.received
            gr = sess.gr
            self._drop_stale(peer.address, lambda family: gr is None or not gr.forwarding(family))

    def peer_down(
        self,
        peer: str,
        *,
        local_restart_time: float | None = None,
        forwarding_lost: bool = False,
        now: float | None = None,
    ) -> None:
        """A session went down. ExaBGP sends no withdrawals for it, so the RIB decides (RFC 4724 4.2):

        - the peer's last GR capability lists no <AFI, SAFI> (or it sent none, or Restart Time 0): every
          path of the peer goes now;
        - else paths of the listed families are kept, marked stale, for the peer's Restart Time (capped:
          a deadline already running is never pushed out), and paths of other families go now.

        `local_restart_time`: the session was lost because *our* speaker went away (ExaBGP or its relay,
        not the peer): keep every family for that long (the restarting side keeps its forwarding state;
        0 or None with no peer capability: flush). `forwarding_lost`: BFD says the peer's forwarding path is
        gone: every path goes now, graceful restart or not (stale paths would blackhole)."""
        sess = self._sessions.setdefault(peer, _Session(spec=None))
        sess.up = False
        self._forget_reflected_to(peer)
        self._filtered.pop(peer, None)
        gr = sess.gr
        if forwarding_lost:
            self._drop_peer_paths(peer, only_stale=False)
            sess.stale_deadline = None
            return
        if local_restart_time:
            hold: float = local_restart_time
            kept: Callable[[str], bool] = lambda family: True  # noqa: E731
        elif gr is not None and gr.restart_time > 0 and gr.families:
            hold = gr.restart_time
            kept = gr.lists
        else:
            self._drop_peer_paths(peer, only_stale=False)
            sess.stale_deadline = None
            return
        for prefix, path in list(self._adj_in.get(peer, {}).items()):
            if not kept(family_of(prefix)):
                self._remove(peer, prefix)
                self._recompute(prefix)
            elif not path.stale:
                self._store(peer, replace(path, stale=True))
                self._recompute(prefix)
        if not self._has_stale(peer):
            sess.stale_deadline = None
            return
        deadline = self._now(now) + hold
        sess.stale_deadline = deadline if sess.stale_deadline is None else min(sess.stale_deadline, deadline)

    def end_of_rib(self, peer: str, family: str | None = None) -> None:
        """The peer finished re-sending its table for `family` (None: every family): whatever of it is still
        stale was withdrawn while it was away."""
        self._drop_stale(peer, lambda f: family is None or f == family)

    def _has_stale(self, peer: str) -> bool:
        return any(p.stale for p in self._adj_in.get(peer, {}).values())

    def _drop_stale(self, peer: str, which: Callable[[str], bool]) -> None:
        """Drop the peer's stale paths whose family `which` selects; clear the deadline when none are left."""
        for prefix, path in list(self._adj_in.get(peer, {}).items()):
            if path.stale and which(family_of(prefix)):
                self._remove(peer, prefix)
                self._recompute(prefix)
        sess = self._sessions.get(peer)
        if sess is not None and not self._has_stale(peer):
            sess.stale_deadline = None

    def sweep_expired(self, now: float | None = None) -> list[str]:
        """Drop the stale paths of every peer whose graceful-restart deadline has passed; returns those peers."""
        t = self._now(now)
        swept = []
        for address, sess in self._sessions.items():
            if sess.stale_deadline is not None and sess.stale_deadline <= t:
                swept.append(address)
        for address in swept:
            self._drop_stale(address, lambda family: True)
        return sorted(swept, key=_id_key)

    def stale_deadline(self, peer: str) -> float | None:
        """When the peer's stale paths will be swept (None: it has none waiting)."""
        sess = self._sessions.get(peer)
        return sess.stale_deadline if sess else None

    def next_deadline(self) -> float | None:
        """The earliest graceful-restart deadline, for the caller's timer."""
        deadlines = [s.stale_deadline for s in self._sessions.values() if s.stale_deadline is not None]
        return min(deadlines) if deadlines else None

    def forget_peer(self, peer: str) -> None:
        """The peer was removed from the configuration: drop its paths (stale or not) and its session."""
        self._drop_peer_paths(peer, only_stale=False)
        self._forget_reflected_to(peer)
        self._filtered.pop(peer, None)
        self._sessions.pop(peer, None)

    @property
    def has_next_hop_check(self) -> bool:
        """Whether a NEXT_HOP check is set (a new RIB has none until the agent gives it one)."""
        return self._next_hop_ok is not None

    def set_next_hop_check(self, next_hop_ok: NextHopCheck | None) -> None:
        """Replace the NEXT_HOP resolvability check (the node's subnet or pools changed) and re-run the
        decision for every prefix; the differences show up in `drain_changes()`."""
        self._next_hop_ok = next_hop_ok
        for prefix in list(self._by_prefix):
            self._recompute(prefix)

    def set_originated(self, prefixes: Iterable[str]) -> list[tuple[str, Announcement]]:
        """The prefixes this node announces itself. A reflector never reflects a path for one of them: its
        own route is its best (locally originated), and ExaBGP keeps one route per prefix and neighbor,
        so a reflected announcement would overwrite the originated one in its adj-rib-out (and its
        withdrawal would take the originated one with it). Returns what `reflect` sends for the change."""
        new = frozenset(normalize_prefix(p) for p in prefixes)
        changed = new ^ self._originated
        self._originated = new
        return self.reflect(dict.fromkeys(changed))

    # ------------------------------------------------------------------ updates

    def update(self, peer: str, announce: Iterable[Path] = (), withdraw: Iterable[str] = ()) -> None:
        """Apply one UPDATE from `peer`: withdrawals first, then announcements (an UPDATE may withdraw
        and re-announce a prefix; the announcement is the newer state). A new path implicitly replaces
        the peer's previous path for the prefix, also when the new one is rejected by a loop check
        (treat-as-withdraw), so a looping replacement never leaves an outdated path behind."""
        filtered = self._filtered.get(peer, {})
        for raw in withdraw:
            prefix = normalize_prefix(raw)
            filtered.pop(prefix, None)
            if prefix in self._adj_in.get(peer, {}):
                self._remove(peer, prefix)
                self._recompute(prefix)
        sess = self._sessions.get(peer)
        route_filter = sess.spec.route_filter if sess is not None and sess.spec is not None else None
        for path in announce:
            path = self._from_session(peer, path)
            filtered.pop(path.prefix, None)
            reason = self._loop_reason(path, sess)
            if reason is None and route_filter is not None and not route_filter.accepts_import(path.prefix):
                reason = REJECT_FILTERED
                self._filtered.setdefault(peer, filtered)[path.prefix] = path
            if reason is not None:
                self._rejected[reason] += 1
                if path.prefix in self._adj_in.get(peer, {}):
                    self._remove(peer, path.prefix)
                    self._recompute(path.prefix)
                continue
            self._store(peer, path)
            self._recompute(path.prefix)

    def _refilter(self, peer: str) -> None:
        """The peer's import filter changed: re-run it over what it sent (held and set-aside paths)."""
        sess = self._sessions.get(peer)
        route_filter = sess.spec.route_filter if sess is not None and sess.spec is not None else None
        held = {**self._filtered.pop(peer, {}), **self._adj_in.get(peer, {})}
        for prefix, path in held.items():
            if route_filter is not None and not route_filter.accepts_import(prefix):
                self._filtered.setdefault(peer, {})[prefix] = path
                if prefix in self._adj_in.get(peer, {}):
                    self._remove(peer, prefix)
                    self._recompute(prefix)
            elif prefix not in self._adj_in.get(peer, {}):
                self._store(peer, path)
                self._recompute(prefix)

    def _from_session(self, peer: str, path: Path) -> Path:
        """The path as the RIB keeps it: normalised prefix, session facts from the session (not from the
        sender), never stale (a refreshed path is fresh)."""
        sess = self._sessions.get(peer)
        changes: dict[str, object] = {"prefix": normalize_prefix(path.prefix), "peer_address": peer, "stale": False}
        if sess is not None and sess.spec is not None:
            changes["peer_as"] = sess.spec.peer_as
            changes["ibgp"] = sess.spec.peer_as == self.local_as
        elif path.peer_as:
            changes["ibgp"] = path.peer_as == self.local_as
        if sess is not None and sess.router_id:
            changes["peer_router_id"] = sess.router_id
        ibgp = changes.get("ibgp", path.ibgp)
        if not ibgp:
            # LOCAL_PREF is not sent over eBGP and is ignored if received (RFC 4271 5.1.5); ORIGINATOR_ID and
            # CLUSTER_LIST are iBGP-only attributes and are discarded from an eBGP peer (RFC 7606 7.9, 7.10)
            changes.update(local_pref=None, originator_id=None, cluster_list=())
        return evolve_path(path, changes)

    def _loop_reason(self, path: Path, sess: _Session | None = None) -> str | None:
        """Which loop rule drops the path, if any (checked on input, before it can become best).

        The AS_PATH rule applies to iBGP too: a reflected path holding our AS left the AS and came back.
        A peer with numAllowedLocalASNumbers N may send paths holding our AS up to N times (every node in
        one AS, eBGP to the ToR: the other nodes' blocks come back through the ToR with our AS in them).
        """
        allowed = sess.spec.allowed_local_as if sess is not None and sess.spec is not None else 0
        if path.as_path.count(self.local_as) > allowed:
            return REJECT_AS_LOOP
        if path.originator_id is not None and path.originator_id == self.router_id:
            return REJECT_ORIGINATOR
        if self.cluster_id is not None and self.cluster_id in path.cluster_list:
            return REJECT_CLUSTER_LOOP
        return None

    # ------------------------------------------------------------------ storage

    def _store(self, peer: str, path: Path) -> None:
        self._adj_in.setdefault(peer, {})[path.prefix] = path
        self._by_prefix.setdefault(path.prefix, {})[peer] = path

    def _remove(self, peer: str, prefix: str) -> None:
        peer_paths = self._adj_in.get(peer)
        if peer_paths is not None:
            peer_paths.pop(prefix, None)
            if not peer_paths:
                del self._adj_in[peer]
        holders = self._by_prefix.get(prefix)
        if holders is not None:
            holders.pop(peer, None)
            if not holders:
                del self._by_prefix[prefix]

    def _drop_peer_paths(self, peer: str, only_stale: bool) -> None:
        for prefix, path in list(self._adj_in.get(peer, {}).items()):
            if path.stale or not only_stale:
                self._remove(peer, prefix)
                self._recompute(prefix)

    def _recompute(self, prefix: str) -> None:
        old = self._best.get(prefix)
        new = select_best(self._by_prefix.get(prefix, {}).values(), self._next_hop_ok)
        if new == old:
            return
        if prefix not in self._pending:
            self._pending[prefix] = old
        if new is None:
            del self._best[prefix]
        else:
            self._best[prefix] = new

    @staticmethod
    def _now(now: float | None) -> float:
        return time.monotonic() if now is None else now

    # ------------------------------------------------------------------ reading

    def best(self) -> dict[str, BestRoute]:
        """The Loc-RIB: prefix -> best route (a copy; the route programmer may keep it)."""
        return dict(self._best)

    def best_for(self, prefix: str) -> BestRoute | None:
        """The best route for one prefix, or None."""
        return self._best.get(normalize_prefix(prefix))

    def drain_changes(self) -> dict[str, BestRoute | None]:
        """Prefixes whose best route differs from the last drain: prefix -> new best (None: gone).

        A prefix that changed and changed back in between is not reported, so the route programmer
        only touches the kernel for real differences.
        """
        out: dict[str, BestRoute | None] = {}
        for prefix, before in self._pending.items():
            now = self._best.get(prefix)
            if now != before:
                out[prefix] = now
        self._pending.clear()
        return out

    def adj_rib_in(self, peer: str) -> dict[str, Path]:
        """The paths held from one peer (after loop checks), stale ones included."""
        return dict(self._adj_in.get(peer, {}))

    def paths(self, prefix: str) -> list[Path]:
        """Every candidate path for a prefix, in peer address order."""
        holders = self._by_prefix.get(normalize_prefix(prefix), {})
        return [holders[p] for p in sorted(holders, key=_id_key)]

    def counters(self) -> RibCounters:
        """Sizes and rejection counts (rejections are cumulative since the RIB was created)."""
        per_peer = {peer: len(paths) for peer, paths in self._adj_in.items()}
        stale = {peer: sum(1 for p in paths.values() if p.stale) for peer, paths in self._adj_in.items()}
        return RibCounters(
            paths_per_peer=per_peer,
            stale_per_peer={k: v for k, v in stale.items() if v},
            rejected=dict(self._rejected),
            prefixes=len(self._best),
            paths=sum(per_peer.values()),
        )

    # ------------------------------------------------------------------ route reflection

    def _targets(self, best: BestRoute) -> list[str]:
        """RFC 4456 6: who hears a route. From a client: every other client and every non-client iBGP
        peer; from a non-client iBGP peer: clients only; from eBGP: every iBGP peer. Never the peer it
        came from nor the client whose router id is the route's ORIGINATOR_ID. Only established
        sessions; eBGP peers get nothing (a Tabby reflector is not a transit router)."""
        path = best.path
        source = self._sessions.get(path.peer_address)
        source_client = bool(source and source.spec and source.spec.route_reflector_client)
        originator = path.originator_id or path.peer_router_id
        out = []
        for address, sess in self._sessions.items():
            if not sess.up or sess.spec is None or address == path.peer_address or not sess.spec.ibgp:
                continue
            if originator and sess.router_id == originator:
                continue
            client = sess.spec.route_reflector_client
            if path.ibgp and not source_client and not client:
                continue
            flt = sess.spec.route_filter
            if flt is not None and not flt.accepts_export(best.prefix, remote=True):
                continue
            out.append(address)
        return sorted(out, key=_id_key)

    def _reflected_announcement(self, best: BestRoute) -> Announcement:
        """The route as sent on: original next hop and attributes; for iBGP-learned routes ORIGINATOR_ID
        (kept, or the advertising peer's router id) and our cluster id prepended to CLUSTER_LIST.
        eBGP-learned routes are plain iBGP advertisements, which carry neither attribute."""
        p = best.path
        originator: str | None = None
        cluster_list: tuple[str, ...] = ()
        if p.ibgp:
            originator = p.originator_id or p.peer_router_id or p.peer_address
            cluster_list = ((self.cluster_id,) if self.cluster_id else ()) + p.cluster_list
        return Announcement(
            prefix=p.prefix,
            next_hop=p.next_hop,
            communities=p.communities,
            large_communities=p.large_communities,
            local_pref=_local_pref(p),
            med=p.med,
            origin=p.origin,
            as_path=p.as_path,
            as_path_segments=p.as_path_segments,
            originator_id=originator,
            cluster_list=cluster_list,
        )

    def _wanted(self, prefix: str) -> dict[str, Announcement]:
        best = self._best.get(prefix)
        if best is None or self.cluster_id is None or prefix in self._originated:
            return {}
        ann = self._reflected_announcement(best)
        return {target: ann for target in self._targets(best)}

    def reflect(self, changes: Mapping[str, BestRoute | None]) -> list[tuple[str, Announcement]]:
        """What to send to which neighbour after `changes` (from drain_changes): (target peer, announcement)
        pairs, withdrawals (withdraw=True) for targets that no longer get the prefix. Empty unless this
        RIB has a cluster id. Reads the current Loc-RIB, so only the keys of `changes` matter."""
        out: list[tuple[str, Announcement]] = []
        for prefix in sorted(changes, key=lambda p: ipaddress.ip_network(p)):
            wanted = self._wanted(prefix)
            state = self._reflected.setdefault(prefix, _Reflected())
            for target in sorted(set(state.by_target) - set(wanted), key=_id_key):
                out.append((target, Announcement(prefix=prefix, withdraw=True)))
                del state.by_target[target]
            for target, ann in wanted.items():
                if state.by_target.get(target) != ann:
                    out.append((target, ann))
                    state.by_target[target] = ann
            if not state.by_target:
                del self._reflected[prefix]
        return out

    def reflect_all(self) -> list[tuple[str, Announcement]]:
        """Re-evaluate every prefix (after a peer's client flag or the configuration changed): what
        `reflect` would send if every prefix had changed, withdrawals included."""
        return self.reflect(dict.fromkeys(set(self._best) | set(self._reflected)))

    def reflect_to(self, peer: str) -> list[Announcement]:
        """The full reflected table for a peer whose session just came up (after `peer_up`)."""
        out = []
        for prefix in sorted(self._best, key=lambda p: ipaddress.ip_network(p)):
            ann = self._wanted(prefix).get(peer)
            if ann is not None:
                self._reflected.setdefault(prefix, _Reflected()).by_target[peer] = ann
                out.append(ann)
        return out

    def _forget_reflected_to(self, peer: str) -> None:
        """A down session has no routes from us: a later reflect() must not withdraw to it."""
        for prefix in list(self._reflected):
            state = self._reflected[prefix]
            state.by_target.pop(peer, None)
            if not state.by_target:
                del self._reflected[prefix]
