"""BGP inside the node agent: one ExaBGP (bgp.speaker.Speaker) fed from the agent's validated model
(controller/node/model.py) and calculation graph (``graph.bgp``: own blocks, borrowed IPs), its events
fed into the RIB (bgp.rib.Rib), the RIB's best routes handed back to the graph as LearnedRoutes
through the ``on_learned`` hook (the graph's route calculator treats them like any other input).

Why this shape (Calico's ``bird`` backend, with ExaBGP + our own RIB instead of BIRD):

- sessions and announcements are recalculated from the model's parsed objects when the graph says
  their inputs changed, coalesced (a block claim is several keys); ``Speaker.apply`` reloads ExaBGP
  only when the rendered config differs, so a peer added or removed touches only that session;
- ExaBGP keeps no RIB: every UPDATE, state change and End-of-RIB goes through ``Rib`` (loop checks,
  best path, graceful restart), and ``drain_changes()`` gives the prefixes whose best route changed;
- remote blocks of native/IPIP pools are routed ONLY from BGP in this mode (the agent drops them from
  the datastore route inputs); VXLAN pools stay datastore-driven, as in Calico;
- an agent restart must not flap anything: ExaBGP outlives the agent (adopted by the next one), and
  for a start-up window the new agent keeps the BGP routes it finds in the kernel ("provisional")
  and only announces/withdraws deltas, until every peer has re-sent its table (End-of-RIB, or a few
  seconds after a replayed session came up and a ROUTE-REFRESH was sent) or the hold time passed.

Graceful restart (RFC 4724, receiving side): each peer's OPEN (ExaBGP ``receive { open; }``) goes to
``Rib.peer_open``; the RIB keeps a dropped session's paths stale only for the <AFI, SAFI> tuples of that
peer's capability, for the peer's Restart Time (see docs/bgp-rib.md). When *our* ExaBGP (or its relay)
goes away instead, we are the restarting side and keep every path for the restart time we advertise
(``PeerSpec.graceful_restart``; None/0 = flush at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import structlog

from bgp.announce import compute_announcements, diff
from bgp.bfd import DOWN as BFD_DOWN
from bgp.bfd import STATE_NAMES as BFD_STATES
from bgp.bfd import BfdRunner, open_sockets
from bgp.exabgp_codec import Disconnected, EndOfRib, Event, Open, PeerState, Update
from bgp.peers import compute_peers, speaker_spec
from bgp.rib import Rib, next_hop_check
from bgp.speaker import Speaker
from bgp.types import MESH, Announcement, BestRoute, PeerSpec, SpeakerSpec, normalize_prefix
from controller.node.bgp_warnings import (
    SessionFacts,
    applicable_resources,
    graceful_restart_text,
    policy_lines,
    session_lines,
)
from datamodel.resources import BGPConfiguration, BGPFilter, BGPPeer, IPPool, Node
from felix_like.netlink import RouteSocket, RouteType
from felix_like.netns import run_in_netns
from felix_like.routes import IPIP_DEVICE, EncapMode, LearnedRoute, RouteInputs

if TYPE_CHECKING:
    from controller.node.agent import Agent

log = structlog.get_logger("tabby.node.bgp")

DEBOUNCE = 0.05
TICK = 0.5
SETTLE_AFTER_UP = 5.0
"""After a replayed (adopted) session came up and ROUTE-REFRESH was sent, how long the peer has to
re-send its table before the start-up window may close (a LAN answers in milliseconds)."""


@dataclass
class PeerCounters:
    """Per-peer numbers that are not in the RIB: updates and End-of-RIBs seen, when it came up."""

    updates: int = 0
    withdrawals: int = 0
    eors: int = 0
    up_at: float | None = None


class NodeBgp:
    """The agent's BGP half. ``start()`` once the first snapshot is in; ``mark_dirty()`` on changes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        cfg = agent.config
        self.log = log.bind(node=cfg.nodename)
        self.speaker = Speaker(cfg.netns, cfg.run_dir / "bgp", on_event=self._on_event)
        self.rib: Rib | None = None
        self.spec: SpeakerSpec | None = None
        self.peers: dict[str, PeerSpec] = {}
        self.learned: dict[str, LearnedRoute] = {}
        self.counters: dict[str, PeerCounters] = {}
        self.started = False
        self._own: set[Announcement] = set()
        self._own_items: dict[tuple[str | None, str], Announcement] = {}
        self._reflected: dict[tuple[str, str], Announcement] = {}
        self._up: set[str] = set()
        self._eor: set[str] = set()
        self._provisional: dict[str, LearnedRoute] = {}
        self._settled = False
        self._hold_until = time.monotonic() + cfg.bgp_startup_hold
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        #: Called when learned_routes() changed (the agent feeds them to its calculation graph).
        self.on_learned: Callable[[], None] | None = None
        #: Prefixes whose learned route may have changed since the agent last took them
        #: (take_learned_changes): the graph is updated per prefix, not with the whole table each time.
        self._learned_dirty: set[str] = set()
        self._next_hop_key: tuple[str | None, str | None, tuple[str, ...]] | None = None
        #: One BFD runner per address family (its sockets are bound to the node's address of that family).
        self._bfds: dict[int, BfdRunner] = {}
        self._bfd_addresses: dict[int, str] = {}
        self._opens: dict[str, Open] = {}

    # -- start-up ----------------------------------------------------------------------------
    def capture_kernel_routes(self, interface: str) -> None:
        """Keep the BGP routes a previous agent left in the kernel (proto tabby, via a gateway on the NIC
        or tunl0) until the RIB has been refilled: without this the first full resync would delete them
        and an agent restart would cut traffic to every other node."""
        try:
            with RouteSocket(self.agent.config.netns) as nl:
                routes = nl.dump_routes()
        except OSError as exc:
            self.log.warning("bgp.kernel_dump_failed", error=str(exc))
            return
        for route in routes:
            if route.type != RouteType.UNICAST:
                continue
            if route.nexthops:
                # an ECMP route: keep the whole set, or the first resync would collapse it to one hop
                if all(h.gateway and h.oif in (interface, IPIP_DEVICE) for h in route.nexthops):
                    gateways = tuple(h.gateway for h in route.nexthops if h.gateway)
                    self._provisional[route.dst] = LearnedRoute(route.dst, gateways[0], gateways)
                continue
            if not route.gateway or route.oif not in (interface, IPIP_DEVICE):
                continue
            self._provisional[route.dst] = LearnedRoute(cidr=route.dst, next_hop=route.gateway)
        if self._provisional:
            self.log.info("bgp.provisional_routes", count=len(self._provisional),
                          hold_s=self.agent.config.bgp_startup_hold)

    async def start(self) -> None:
        """Begin: first calculation now, then the coalescing loop and the timer (GR sweep, start-up window)."""
        self.started = True
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._loop(), name="bgp-refresh"))
        self._tasks.append(asyncio.create_task(self._tick(), name="bgp-timer"))

    async def stop(self) -> None:
        """Stop the agent's side; ExaBGP keeps running with its sessions (the next agent adopts it)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for runner in self._bfds.values():
            runner.stop()
        self._bfds.clear()
        await self.speaker.stop(keep_exabgp=True)

    def mark_dirty(self) -> None:
        """The snapshot changed in a way that may change peers or announcements (coalesced)."""
        self._dirty.set()

    # -- calculation ---------------------------------------------------------------------------
    def _inputs(self) -> tuple[Node | None, list[Node], list[BGPConfiguration], list[BGPPeer], list[IPPool]]:
        """The model's validated objects: the same ones IPAM and routing use (an invalid resource is
        ignored, or kept at its last good version, by all of them alike)."""
        model = self.agent.model
        nodes = sorted(model.nodes().values(), key=lambda n: n.name)
        local = model.node(self.agent.config.nodename)
        return local, nodes, model.bgp_configurations(), model.bgp_peers(), model.pools()

    def own_prefixes(self, pools: list[IPPool], configs: list[BGPConfiguration]) -> set[Announcement]:
        """Blocks affine to us, IPs we borrowed, service CIDRs (bgp.announce decides the policy)."""
        node = self.agent.config.nodename
        calc = self.agent.graph.bgp
        blocks = sorted(calc.own_blocks)
        mine = set(blocks)
        borrowed = [ip for ip in calc.borrowed() if not _inside(ip, mine)]
        return compute_announcements(node, blocks, borrowed, pools, configs)

    async def refresh(self) -> None:
        """Recompute sessions and announcements from the model; apply what changed."""
        async with self._lock:
            local, nodes, configs, bgp_peers, pools = self._inputs()
            if local is None:
                return
            spec = speaker_spec(local, configs)
            if spec is None:
                return  # no IPv4 BGP address (yet): nothing to run
            filters = [f for f in self.agent.model.of_kind(BGPFilter.KIND).values() if isinstance(f, BGPFilter)]
            peers = compute_peers(local, nodes, configs, bgp_peers, bgp_filters=filters)
            if self.agent.config.mesh_bfd:
                peers = [replace(p, bfd=True) if p.type == MESH else p for p in peers]
            if spec != self.spec or peers != list(self.peers.values()):
                await self._apply_sessions(spec, peers)
            self._update_next_hop_check(pools)
            self._sync_bfd()
            own = self.own_prefixes(pools, configs)
            if self.rib is not None and self.rib.cluster_id is not None:
                # a reflector reflects nothing it originates itself (one route per prefix and peer)
                await self._send_reflected(self.rib.set_originated(a.prefix for a in own))
            if own != self._own:
                announce, withdraw = diff(self._own, own)
                self._own = own
                self.log.info("bgp.announcements", announce=[a.prefix for a in announce],
                              withdraw=[a.prefix for a in withdraw], total=len(own))
            items = self._export_items(own)
            if items != self._own_items:
                old_items, self._own_items = self._own_items, items
                if self._settled:
                    await self._push_all()
                else:
                    for key in sorted(set(old_items) - set(items), key=str):
                        await self.speaker.withdraw(key[1], key[0])
                    for key, ann in sorted(items.items(), key=lambda kv: str(kv[0])):
                        if old_items.get(key) != ann:
                            await self.speaker.announce(ann, key[0])
            await self._after_rib()

    def _export_items(self, own: set[Announcement]) -> dict[tuple[str | None, str], Announcement]:
        """Own routes as the speaker's desired entries: to every peer at once, unless a peer's BGPFilter
        rejects the prefix on export; then to each peer that accepts it (ExaBGP `neighbor X announce`)."""
        filtered = [p for p in self.peers.values() if p.route_filter is not None]
        out: dict[tuple[str | None, str], Announcement] = {}
        for ann in own:
            prefix = normalize_prefix(ann.prefix)
            if all(p.route_filter.accepts_export(prefix) for p in filtered if p.route_filter is not None):
                out[(None, prefix)] = ann
                continue
            for peer in self.peers.values():
                if peer.route_filter is None or peer.route_filter.accepts_export(prefix):
                    out[(peer.address, prefix)] = ann
        return out

    # -- BFD ------------------------------------------------------------------------------------
    def _sync_bfd(self) -> None:
        """BFD sessions for the peers that want it and are directly connected (on the node's subnet of
        their family): one BfdRunner thread per family with sockets made inside the node's namespace,
        started when first needed."""
        loop = asyncio.get_running_loop()

        def on_state(peer: str, state: int, diag: int) -> None:  # runs in a BFD thread
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._on_bfd(peer, state, diag)))

        for version, local in ((4, self.agent.local_ip), (6, self.agent.local_ip6)):
            subnet = ipaddress.ip_interface(local).network if local else None
            wanted = {str(ipaddress.ip_address(a)) for a, p in self.peers.items()
                      if p.bfd and subnet is not None and ipaddress.ip_address(a).version == version
                      and ipaddress.ip_address(a) in subnet}
            address = str(ipaddress.ip_interface(local).ip) if local else None
            runner = self._bfds.get(version)
            if runner is not None and (not wanted or address != self._bfd_addresses.get(version)):
                runner.stop()
                del self._bfds[version]
                runner = None
            if not wanted or address is None:
                continue
            if runner is None:
                runner = BfdRunner(run_in_netns(self.agent.config.netns, lambda a=address: open_sockets(a)),
                                   on_state)
                self._bfds[version] = runner
                self._bfd_addresses[version] = address
                runner.start()
            for peer in set(runner.sessions) - wanted:
                runner.remove(peer)
            for peer in wanted:
                runner.add(peer)

    def _bfd_for(self, address: str) -> BfdRunner | None:
        try:
            return self._bfds.get(ipaddress.ip_address(address).version)
        except ValueError:
            return None

    async def _on_bfd(self, peer: str, state: int, diag: int) -> None:
        """BFD down on an Established session: its forwarding path is gone. Every path of the peer leaves
        the RIB (and so the kernel) now, graceful restart or not, and ExaBGP resets the session (Cease,
        subcode 10 "BFD Down", RFC 9384) instead of waiting for the hold time."""
        peer = next((p for p in self._up if p == peer or _same_ip(p, peer)), peer)
        if state != BFD_DOWN or self.rib is None or peer not in self._up:
            return
        self.rib.peer_down(peer, forwarding_lost=True)
        self._up.discard(peer)
        self._eor.discard(peer)
        self.log.warning("bgp.bfd_down", peer=peer, diag=diag)
        await self.speaker.bridge.send(f"neighbor {ipaddress.ip_address(peer)} teardown 10")
        await self._after_rib()

    def _update_next_hop_check(self, pools: list[IPPool]) -> None:
        """Give the RIB the route programmer's NEXT_HOP rule (local subnet, or an IPIP pool), so a path whose
        next hop cannot be reached is no candidate at all (RFC 4271 9.1.2) instead of a best path the
        dataplane then drops."""
        if self.rib is None:
            return
        local = self.agent.local_ip
        local6 = self.agent.local_ip6
        key = (local, local6, tuple(sorted(p.spec.cidr for p in pools if p.spec.ipipMode != "Never")))
        if key == self._next_hop_key and self.rib.has_next_hop_check:
            return
        self._next_hop_key = key
        addresses = [a for a in (local, local6) if a]
        self.rib.set_next_hop_check(next_hop_check(addresses, key[2]) if local else None)

    async def _apply_sessions(self, spec: SpeakerSpec, peers: list[PeerSpec]) -> None:
        old = self.peers
        self.peers = {p.address: p for p in peers}
        if self.rib is None or (self.rib.local_as, self.rib.router_id) != (spec.local_as, spec.router_id):
            if self.rib is not None:
                self.log.info("bgp.rib_reset", reason="local AS or router id changed")
                for prefix in list(self.learned):
                    self.learned.pop(prefix)
                    self._learned_dirty.add(prefix)
                self._up.clear()
            self.rib = Rib(spec.local_as, spec.router_id, spec.cluster_id)
        rib = self.rib
        cluster_changed = rib.cluster_id != spec.cluster_id
        rib.cluster_id = spec.cluster_id
        for address in set(old) - set(self.peers):
            rib.forget_peer(address)
            self._opens.pop(address, None)
            self._up.discard(address)
            self.counters.pop(address, None)
            for key in [k for k in self._reflected if k[0] == address]:
                del self._reflected[key]
        changed = [a for a in self.peers if a in old and old[a] != self.peers[a]]
        for address in changed:
            if address in self._up:
                rib.peer_up(self.peers[address], _router_id(self.peers[address]))
        self.spec = spec
        result = await self.speaker.apply(spec, peers)
        self.log.info("bgp.sessions_applied", result=result, peers=sorted(self.peers),
                      added=sorted(set(self.peers) - set(old)), removed=sorted(set(old) - set(self.peers)),
                      cluster_id=spec.cluster_id or "")
        if changed or cluster_changed:
            await self._send_reflected(rib.reflect_all())

    async def _push_all(self) -> None:
        """The complete desired set (own routes to everyone + reflected routes per peer) to the speaker."""
        items: list[Announcement | tuple[str | None, Announcement]] = [
            (peer, ann) for (peer, _), ann in self._own_items.items()
        ]
        items += [(peer, ann) for (peer, _), ann in self._reflected.items()]
        await self.speaker.replace_announcements(items)

    async def _send_reflected(self, pairs: Iterable[tuple[str, Announcement]]) -> None:
        for target, ann in pairs:
            key = (target, normalize_prefix(ann.prefix))
            if ann.withdraw:
                if self._reflected.pop(key, None) is not None:
                    await self.speaker.withdraw(ann.prefix, target)
            else:
                self._reflected[key] = ann
                await self.speaker.announce(ann, target)

    # -- events --------------------------------------------------------------------------------
    async def _on_event(self, event: Event) -> None:
        """Bridge events after the Speaker acted on them (it already re-announced and sent EoR on `up`)."""
        rib = self.rib
        if rib is None:
            return
        if isinstance(event, Open):
            rib.peer_open(event.peer, event.router_id, event.graceful_restart)
            self._opens[event.peer] = event
            gr = event.graceful_restart
            self.log.info("bgp.open", peer=event.peer, router_id=event.router_id,
                          restart_time=None if gr is None else gr.restart_time,
                          families=None if gr is None else [f + ("" if kept else " (F=0)") for f, kept in gr.families])
            return
        if isinstance(event, PeerState):
            spec = self.peers.get(event.peer)
            if spec is None:
                return
            counters = self.counters.setdefault(event.peer, PeerCounters())
            if event.state == "up":
                rib.peer_up(spec, _router_id(spec))
                self._up.add(event.peer)
                counters.up_at = time.monotonic()
                if event.replayed:
                    self._eor.discard(event.peer)
                if rib.cluster_id is not None:
                    await self._reflect_to(event.peer)
            elif event.state == "down" and event.peer in self._up:
                # only a session that was up: a failed reconnect also says `down`, and re-marking would
                # push the stale deadline out on every attempt
                self._peer_down(event.peer, event.reason or "session down")
        elif isinstance(event, Update):
            counters = self.counters.setdefault(event.peer, PeerCounters())
            counters.updates += 1
            counters.withdrawals += len(event.withdraws)
            rib.update(event.peer, event.announces, event.withdraws)
        elif isinstance(event, EndOfRib):
            self.counters.setdefault(event.peer, PeerCounters()).eors += 1
            self._eor.add(event.peer)
            rib.end_of_rib(event.peer, event.family)
        elif isinstance(event, Disconnected):
            # ExaBGP (or its relay) went away: no `down` lines will come for its sessions. Keep the
            # paths stale (the peers re-send them and End-of-RIB once the new ExaBGP is up).
            for address in sorted(self._up):
                spec = self.peers.get(address)
                if spec is not None:
                    self._peer_down(address, f"ExaBGP link lost: {event.reason}",
                                    local_restart=spec.graceful_restart)
        else:
            return
        await self._after_rib()

    def _peer_down(self, address: str, why: str, local_restart: int | None = None) -> None:
        """The RIB decides what stays stale (the peer's GR capability, or ``local_restart`` when our own
        speaker went away)."""
        assert self.rib is not None
        self.rib.peer_down(address, local_restart_time=local_restart)
        self._up.discard(address)
        self._eor.discard(address)
        counters = self.counters.get(address)
        if counters is not None:
            counters.up_at = None
        deadline = self.rib.stale_deadline(address)
        self.log.info("bgp.peer_down", peer=address, reason=why,
                      stale=self.rib.counters().stale_per_peer.get(address, 0),
                      stale_for_s=None if deadline is None else round(deadline - time.monotonic(), 1))

    async def _reflect_to(self, peer: str) -> None:
        """A session came up on a route reflector: its full reflected table; drop what it no longer gets."""
        assert self.rib is not None
        table = {normalize_prefix(a.prefix): a for a in self.rib.reflect_to(peer)}
        for key in [k for k in self._reflected if k[0] == peer and k[1] not in table]:
            del self._reflected[key]
            await self.speaker.withdraw(key[1], peer)
        for prefix, ann in table.items():
            if self._reflected.get((peer, prefix)) != ann:
                self._reflected[(peer, prefix)] = ann
                await self.speaker.announce(ann, peer)

    async def _after_rib(self) -> None:
        """Best-route changes -> learned routes (dataplane, coalesced) and reflected announcements."""
        rib = self.rib
        if rib is None:
            return
        changes = rib.drain_changes()
        if not changes:
            return
        for prefix, best in changes.items():
            if best is None:
                self.learned.pop(prefix, None)
            else:
                self.learned[prefix] = self._learned_route(best)
        self._learned_dirty.update(changes)
        self.log.info("bgp.best_changed", changed=len(changes), learned=len(self.learned))
        if self.on_learned is not None:
            self.on_learned()
        if rib.cluster_id is not None:
            await self._send_reflected(rib.reflect(changes))

    def _learned_route(self, best: BestRoute) -> LearnedRoute:
        """Every next hop of the best route: an ECMP set (paths tied through step 5 of the decision
        process) becomes one multipath kernel route, so traffic is spread over all of them and losing
        one peer only removes its hop. ``next_hop`` stays the best path's (status, provisional routes)."""
        if len(best.next_hops) > 1:
            self.log.info("bgp.ecmp", prefix=best.prefix, next_hops=list(best.next_hops), best=best.path.next_hop)
            return LearnedRoute(cidr=best.prefix, next_hop=best.path.next_hop, next_hops=best.next_hops)
        return LearnedRoute(cidr=best.prefix, next_hop=best.path.next_hop)

    def ecmp_routes(self) -> int:
        """Learned routes handed to the dataplane with two or more next hops (multipath), right now."""
        return sum(1 for r in self.learned.values() if len(r.next_hops) > 1)

    def take_learned_changes(self) -> dict[str, LearnedRoute | None]:
        """The learned route (None: none any more) of every prefix that may have changed since the last call.

        Why: the agent used to hand the graph the whole sorted table on every best-path change, which is
        O(table) per UPDATE (10,000 prefixes arrive in dozens of UPDATEs); profiling the 10k-prefix
        benchmark put a fifth of the agent's time there."""
        out = {p: self.learned.get(p) or self._provisional.get(p) for p in self._learned_dirty}
        self._learned_dirty.clear()
        return out

    def learned_routes(self) -> tuple[LearnedRoute, ...]:
        """What the route programmer gets: the RIB's best routes, plus provisional kernel routes during
        the start-up window for prefixes the RIB does not know yet."""
        out = dict(self._provisional)
        out.update(self.learned)
        return tuple(sorted(out.values(), key=lambda r: (r.cidr, r.next_hop)))

    # -- loops --------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(DEBOUNCE)
            self._dirty.clear()
            try:
                await self.refresh()
            except Exception:
                self.log.exception("bgp.refresh_failed")
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def _tick(self) -> None:
        """Graceful-restart sweep and the end of the start-up window, on a short timer."""
        while True:
            await asyncio.sleep(TICK)
            try:
                if self.rib is not None:
                    swept = self.rib.sweep_expired()
                    if swept:
                        self.log.info("bgp.stale_swept", peers=swept)
                        await self._after_rib()
                if not self._settled and self._window_over():
                    await self._settle()
            except Exception:
                self.log.exception("bgp.tick_failed")

    def _window_over(self) -> bool:
        if time.monotonic() >= self._hold_until:
            return True
        if not self.peers or self.spec is None:
            return self.spec is not None
        now = time.monotonic()
        for address in self.peers:
            counters = self.counters.get(address)
            if address not in self._up or counters is None or counters.up_at is None:
                return False
            if address not in self._eor and now - counters.up_at < SETTLE_AFTER_UP:
                return False
        return True

    async def _settle(self) -> None:
        async with self._lock:
            self._settled = True
            dropped = len(self._provisional)
            self._learned_dirty.update(self._provisional)
            self._provisional.clear()
            await self._push_all()
            self.log.info("bgp.settled", provisional_dropped=dropped, learned=len(self.learned),
                          announced=len(self._own))
            if dropped and self.on_learned is not None:
                self.on_learned()

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Sessions, counters and Prometheus text for BGP_STATUS / `tabbyctl node status`."""
        rib_counters = self.rib.counters() if self.rib is not None else None
        sessions = []
        for address, row in sorted(self.speaker.sessions.items(), key=lambda kv: _addr_key(kv[0])):
            spec = self.peers.get(address)
            counters = self.counters.get(address, PeerCounters())
            sessions.append({
                "peer_address": address,
                "peer_type": row.type,
                "name": row.name,
                "peer_as": spec.peer_as if spec else None,
                "state": "up" if row.state == "Established" else ("start" if row.state == "Idle" else "connect"),
                "bgp_state": row.state,
                "since": row.since,
                "since_text": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.since)) if row.since else "",
                "info": row.state if not row.info else f"{row.state} {row.info}".strip(),
                "last_error": row.last_error,
                "established_count": row.established_count,
                "prefixes_received": rib_counters.paths_per_peer.get(address, 0) if rib_counters else 0,
                "prefixes_stale": rib_counters.stale_per_peer.get(address, 0) if rib_counters else 0,
                "updates_received": counters.updates,
                "end_of_rib_received": counters.eors,
                "bfd": self._bfd_state(address),
                "bfd_requested": bool(spec and spec.bfd),
                "bfd_last_detection": bfd.detection(address) if (bfd := self._bfd_for(address)) else None,
                "bfd_detect_time_ms": bfd.detection_time_ms(address) if bfd is not None else None,
                "graceful_restart": graceful_restart_text(
                    self._opens[address].graceful_restart if address in self._opens else None,
                    address in self._opens),
                "last_notification": row.last_notification,
            })
        by_state: dict[str, int] = {}
        for s in sessions:
            by_state[s["bgp_state"]] = by_state.get(s["bgp_state"], 0) + 1
        advertised = len(self._own)
        counters_out = {
            "sessions_by_state": by_state,
            "prefixes_received": {s["peer_address"]: s["prefixes_received"] for s in sessions},
            "prefixes_stale": {s["peer_address"]: s["prefixes_stale"] for s in sessions},
            "prefixes_advertised": advertised,
            "prefixes_reflected": len(self._reflected),
            "rib_prefixes": rib_counters.prefixes if rib_counters else 0,
            "rib_paths": rib_counters.paths if rib_counters else 0,
            "rejected": dict(sorted((rib_counters.rejected if rib_counters else {}).items())),
            "learned_routes": len(self.learned),
            "provisional_routes": len(self._provisional),
            "ecmp_routes": self.ecmp_routes(),
            "exabgp_restarts": self.speaker.restarts,
            "exabgp_reloads": self.speaker.reloads,
            "bfd_tx_late_ms_max": round(max(r.late_ms_max for r in self._bfds.values()), 1) if self._bfds else None,
        }
        return {
            "enabled": True,
            "backend": self.agent.config.networking_backend,
            "router_id": self.spec.router_id if self.spec else None,
            "local_as": self.spec.local_as if self.spec else None,
            "cluster_id": self.spec.cluster_id if self.spec else None,
            "exabgp_pid": self.speaker.pid,
            "last_reconfigured": self.speaker.last_reconfigured,
            "settled": self._settled,
            "sessions": sessions,
            "counters": counters_out,
            "learned": [{"prefix": r.cidr, "next_hop": r.next_hop, "next_hops": list(r.hops)}
                        for r in self.learned_routes()],
            "paths": self._paths(),
            "warnings": self.warnings(sessions),
            "metrics": metrics_text(self.agent.config.nodename, sessions, counters_out),
        }

    def warnings(self, sessions: list[dict[str, Any]]) -> list[str]:
        """`node status` warnings (controller/node/bgp_warnings.py): support-policy warnings of the BGP
        resources behind this node's sessions, BFD that cannot or does not run, refused OPENs, stale paths."""
        model = self.agent.model
        filters = [f for f in model.of_kind(BGPFilter.KIND).values() if isinstance(f, BGPFilter)]
        resources = applicable_resources(self.agent.config.nodename, self.peers.values(),
                                         model.bgp_configurations(), model.bgp_peers(), filters)
        now_wall, now = time.time(), time.monotonic()
        facts = []
        for s in sessions:
            deadline = self.rib.stale_deadline(s["peer_address"]) if self.rib is not None else None
            facts.append(SessionFacts(
                address=s["peer_address"], bgp_state=s["bgp_state"],
                established_for=now_wall - s["since"] if s["bgp_state"] == "Established" and s["since"] else None,
                last_error=s["last_notification"], bfd=s["bfd"], stale=s["prefixes_stale"],
                stale_left=None if deadline is None else deadline - now))
        return policy_lines(resources) + session_lines(self.peers, facts, self.agent.local_ip)

    def _bfd_state(self, address: str) -> str | None:
        bfd = self._bfd_for(address)
        state = bfd.state(address) if bfd is not None else None
        return None if state is None else BFD_STATES[state]

    def _paths(self) -> list[dict[str, Any]]:
        """Every path the RIB holds, with the attributes an operator debugs with (reflection included)."""
        if self.rib is None:
            return []
        out = []
        for address in sorted(self.peers, key=_addr_key):
            for prefix, path in sorted(self.rib.adj_rib_in(address).items()):
                best = self.rib.best_for(prefix)
                out.append({
                    "prefix": prefix, "peer": address, "next_hop": path.next_hop, "as_path": list(path.as_path),
                    "local_pref": path.local_pref, "originator_id": path.originator_id,
                    "cluster_list": list(path.cluster_list), "communities": list(path.communities),
                    "stale": path.stale, "best": best is not None and best.path == path,
                })
        return out


def disabled_status(backend: str) -> dict[str, Any]:
    """BGP_STATUS when the backend runs no BGP (vxlan / none)."""
    return {"enabled": False, "backend": backend, "sessions": [], "counters": {}, "learned": [], "paths": [],
            "metrics": f'# TYPE tabby_bgp_enabled gauge\ntabby_bgp_enabled{{backend="{backend}"}} 0\n'}


def _router_id(spec: PeerSpec) -> str:
    """Fallback router id until the peer's OPEN is seen (the RIB prefers the OPEN's BGP Identifier): a Tabby
    node's is its address (speaker_spec); a router outside: unknown, the RIB uses the peer address."""
    return spec.address if spec.peer_node and ":" not in spec.address else ""


def _inside(ip: str, cidrs: set[str]) -> bool:
    addr = ipaddress.ip_address(ip.split("/")[0])
    return any(addr in ipaddress.ip_network(c) for c in cidrs)


def _addr_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(node: str, sessions: list[dict[str, Any]], counters: dict[str, Any]) -> str:
    """Prometheus text exposition (version 0.0.4), written by hand: a handful of gauges and counters
    does not justify a dependency."""
    n = _label(node)
    lines = [
        "# HELP tabby_bgp_session_up 1 when the BGP session is Established.",
        "# TYPE tabby_bgp_session_up gauge",
    ]
    for s in sessions:
        lines.append(f'tabby_bgp_session_up{{node="{n}",peer="{_label(s["peer_address"])}",'
                     f'type="{_label(s["peer_type"])}"}} {1 if s["bgp_state"] == "Established" else 0}')
    lines += ["# HELP tabby_bgp_sessions Sessions by state.", "# TYPE tabby_bgp_sessions gauge"]
    for state in ("Established", "Connect", "Idle"):
        lines.append(f'tabby_bgp_sessions{{node="{n}",state="{state}"}} '
                     f'{counters["sessions_by_state"].get(state, 0)}')
    lines += ["# HELP tabby_bgp_prefixes_received Paths held from the peer (Adj-RIB-In, after loop checks).",
              "# TYPE tabby_bgp_prefixes_received gauge"]
    for s in sessions:
        lines.append(f'tabby_bgp_prefixes_received{{node="{n}",peer="{_label(s["peer_address"])}"}} '
                     f'{s["prefixes_received"]}')
    lines += ["# HELP tabby_bgp_prefixes_stale Paths kept stale for graceful restart.",
              "# TYPE tabby_bgp_prefixes_stale gauge"]
    for s in sessions:
        lines.append(f'tabby_bgp_prefixes_stale{{node="{n}",peer="{_label(s["peer_address"])}"}} '
                     f'{s["prefixes_stale"]}')
    lines += [
        "# HELP tabby_bgp_prefixes_advertised Prefixes this node originates.",
        "# TYPE tabby_bgp_prefixes_advertised gauge",
        f'tabby_bgp_prefixes_advertised{{node="{n}"}} {counters["prefixes_advertised"]}',
        "# HELP tabby_bgp_rib_prefixes Prefixes with a best route (Loc-RIB size).",
        "# TYPE tabby_bgp_rib_prefixes gauge",
        f'tabby_bgp_rib_prefixes{{node="{n}"}} {counters["rib_prefixes"]}',
        "# HELP tabby_bgp_rib_paths Paths held over all peers.",
        "# TYPE tabby_bgp_rib_paths gauge",
        f'tabby_bgp_rib_paths{{node="{n}"}} {counters["rib_paths"]}',
        "# HELP tabby_bgp_rejected_total Paths rejected on input, by reason.",
        "# TYPE tabby_bgp_rejected_total counter",
    ]
    for reason in ("as_path_loop", "originator_id", "cluster_list_loop", "import_filter"):
        lines.append(f'tabby_bgp_rejected_total{{node="{n}",reason="{reason}"}} '
                     f'{counters["rejected"].get(reason, 0)}')
    lines += [
        "# HELP tabby_bgp_ecmp_routes Learned routes programmed as multipath (two or more next hops).",
        "# TYPE tabby_bgp_ecmp_routes gauge",
        f'tabby_bgp_ecmp_routes{{node="{n}"}} {counters.get("ecmp_routes", 0)}',
        "# HELP tabby_bgp_exabgp_restarts_total ExaBGP restarts by the agent.",
        "# TYPE tabby_bgp_exabgp_restarts_total counter",
        f'tabby_bgp_exabgp_restarts_total{{node="{n}"}} {counters["exabgp_restarts"]}',
    ]
    return "\n".join(lines) + "\n"


def backend_inputs(inputs: RouteInputs, backend: str, learned: tuple[LearnedRoute, ...] = ()) -> RouteInputs:
    """The route inputs one networking backend programs (pure).

    ``vxlan``: unchanged (every remote block from the datastore). ``bird``: remote blocks and borrowed
    /32s of native/IPIP pools come only from BGP (``learned``), VXLAN pools stay datastore-driven, as
    in Calico where BIRD programs the former and Felix the latter. ``none``: no inter-node routes at all
    (local workloads and our own blackholes only).
    """
    if backend == "vxlan":
        return inputs
    local = inputs.local_node.name
    if backend == "none":
        return replace(inputs, blocks=tuple(b for b in inputs.blocks if b.affinity == local), borrowed=(),
                       learned=())
    vxlan_pools = [ipaddress.ip_network(p.cidr) for p in inputs.pools if p.vxlan_mode != EncapMode.NEVER]

    def datastore_driven(cidr: str) -> bool:
        net = ipaddress.ip_network(cidr, strict=False)
        return any(net.version == p.version and net.subnet_of(p) for p in vxlan_pools)  # type: ignore[arg-type]

    return replace(
        inputs,
        blocks=tuple(b for b in inputs.blocks if b.affinity == local or datastore_driven(b.cidr)),
        borrowed=tuple(b for b in inputs.borrowed if b.node == local or datastore_driven(b.ip)),
        learned=learned,
    )


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False
