"""Incremental route resolution: the route rules of :mod:`felix_like.routes`, kept up to date per change.

Why incremental: recomputing every route of the cluster from scratch on each datastore event (and
on each CNI ADD) is O(cluster) work per pod. The resolver keeps indexes (pools, blocks by prefix
length, nodes -> the sources routed towards them) so one change re-resolves only the sources it
affects, and :meth:`RouteResolver.drain` returns only the destinations whose winning route changed.

Contract (proved by tests/unit/felix_like/test_route_resolver.py with hypothesis): after any
sequence of updates, :meth:`RouteResolver.routes` equals
``calculate_routes(backend_inputs(<the final inputs>, backend))`` computed from scratch, and the
drained changes applied to the previous output give the new output.

Each source (a block, a local workload, an IP borrowed by a remote node, a BGP-learned prefix)
offers at most one candidate route for its destination; per destination the lowest
(priority, tiebreak) wins, exactly as in ``_Calculator.offer``. Pool or local-node changes (rare)
re-resolve every source, still emitting only what changed.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from felix_like.netlink import Route, RouteType
from felix_like.routes import (
    _PRIO_BLOCK,
    _PRIO_BORROWED,
    _PRIO_LEARNED,
    _PRIO_WORKLOAD,
    BlockInfo,
    BorrowedIP,
    EncapMode,
    IPNetwork,
    LearnedRoute,
    LocalNodeInfo,
    PoolInfo,
    RemoteNodeInfo,
    RouteInputs,
    WorkloadInfo,
    _Calculator,
    _host_net,
    _metric,
)


@functools.lru_cache(maxsize=1 << 17)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A learned prefix parsed once (immutable, so shared): every re-resolution of 10,000 BGP routes
    parsed each again."""
    return ipaddress.ip_network(cidr, strict=False)


@functools.lru_cache(maxsize=1 << 17)
def _network_text(cidr: str) -> str:
    """``str(_network(cidr))``, cached too: ipaddress formats a network through its address objects each time."""
    return str(_network(cidr))


Source = tuple[str, str]  # ("block", cidr) | ("wl", ip) | ("borrowed", "ip|node") | ("learned", cidr)
Candidate = tuple[int, str, Route]

BACKENDS = ("vxlan", "bird", "none")


class RouteResolver:
    """Desired routes of one node, maintained incrementally. Not thread-safe: one owner."""

    def __init__(self, local: LocalNodeInfo, backend: str = "vxlan") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.local = local
        self.pools: dict[str, PoolInfo] = {}
        self.blocks: dict[str, BlockInfo] = {}
        self.nodes: dict[str, RemoteNodeInfo] = {}
        self.workloads: dict[str, WorkloadInfo] = {}
        self.borrowed: dict[str, tuple[BorrowedIP, ...]] = {}  # by block cidr
        self.learned: dict[str, LearnedRoute] = {}
        # indexes
        self._blocks_by_len: dict[tuple[int, int], dict[IPNetwork, BlockInfo]] = {}
        self._towards: dict[str, set[Source]] = {}  # node -> sources routed towards it
        self._source_node: dict[Source, str] = {}
        self._candidates: dict[str, dict[Source, Candidate]] = {}  # dst -> source -> candidate
        self._by_source: dict[Source, str] = {}  # source -> dst it offers for
        self._winner: dict[str, Route] = {}
        self._changed: dict[str, Route | None] = {}
        self._calc = self._new_calc()

    # -- inputs ------------------------------------------------------------------------------------
    def set_local(self, local: LocalNodeInfo) -> None:
        if local != self.local:
            self.local = local
            self._recompute_all()

    def upsert_pool(self, pool: PoolInfo) -> None:
        if self.pools.get(pool.cidr) != pool:
            self.pools[pool.cidr] = pool
            self._recompute_all()

    def remove_pool(self, cidr: str) -> None:
        if self.pools.pop(cidr, None) is not None:
            self._recompute_all()

    def upsert_node(self, node: RemoteNodeInfo) -> None:
        if node.name == self.local.name:
            return  # the local node is set_local's
        if self.nodes.get(node.name) != node:
            self.nodes[node.name] = node
            self._recompute_node(node.name)

    def remove_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self._recompute_node(name)

    def upsert_block(self, block: BlockInfo, borrowed: Iterable[BorrowedIP] = ()) -> None:
        borrowed_t = tuple(sorted(set(borrowed), key=lambda b: (b.ip, b.node)))
        old = self.blocks.get(block.cidr)
        if old != block:
            if old is not None:
                self._unindex_block(old)
            self.blocks[block.cidr] = block
            self._index_block(block)
            self._resolve(("block", block.cidr))
        old_borrowed = self.borrowed.get(block.cidr, ())
        if borrowed_t != old_borrowed:
            self.borrowed[block.cidr] = borrowed_t
            for b in set(old_borrowed) - set(borrowed_t):
                self._drop(("borrowed", f"{b.ip}|{b.node}"))
            for b in borrowed_t:
                self._resolve(("borrowed", f"{b.ip}|{b.node}"))
        if old is None or old.affinity != block.affinity:
            self._recompute_borrowed_inside(block.cidr)

    def remove_block(self, cidr: str) -> None:
        old = self.blocks.pop(cidr, None)
        for b in self.borrowed.pop(cidr, ()):
            self._drop(("borrowed", f"{b.ip}|{b.node}"))
        if old is not None:
            self._unindex_block(old)
            self._drop(("block", cidr))
            self._recompute_borrowed_inside(cidr)

    def upsert_workload(self, wl: WorkloadInfo) -> None:
        if self.workloads.get(wl.ip) != wl:
            self.workloads[wl.ip] = wl
            self._resolve(("wl", wl.ip))

    def remove_workload(self, ip: str) -> None:
        if self.workloads.pop(ip, None) is not None:
            self._drop(("wl", ip))

    def upsert_learned(self, route: LearnedRoute) -> None:
        if self.learned.get(route.cidr) != route:
            self.learned[route.cidr] = route
            self._resolve(("learned", route.cidr))

    def remove_learned(self, cidr: str) -> None:
        if self.learned.pop(cidr, None) is not None:
            self._drop(("learned", cidr))

    # -- outputs -----------------------------------------------------------------------------------
    def routes(self) -> frozenset[Route]:
        return frozenset(self._winner.values())

    def route_for(self, dst: str) -> Route | None:
        return self._winner.get(dst)

    def drain(self) -> dict[str, Route | None]:
        """Destinations whose route changed since the last drain: the new route, or None (removed)."""
        out, self._changed = self._changed, {}
        return out

    def inputs(self) -> RouteInputs:
        """The current inputs as one RouteInputs (tests, debugging: the from-scratch oracle's input)."""
        return RouteInputs(
            local_node=self.local,
            pools=tuple(sorted(self.pools.values(), key=lambda p: p.cidr)),
            blocks=tuple(sorted(self.blocks.values(), key=lambda b: b.cidr)),
            remote_nodes=tuple(sorted(self.nodes.values(), key=lambda n: n.name)),
            workloads=tuple(sorted(self.workloads.values(), key=lambda w: w.ip)),
            borrowed=tuple(sorted((b for bs in self.borrowed.values() for b in bs), key=lambda b: (b.ip, b.node))),
            learned=tuple(sorted(self.learned.values(), key=lambda r: r.cidr)),
        )

    # -- resolution --------------------------------------------------------------------------------
    def _new_calc(self) -> _Calculator:
        calc = _Calculator(RouteInputs(local_node=self.local, pools=tuple(self.pools.values())))
        calc.nodes = self.nodes  # shared: node changes are seen without a rebuild
        return calc

    def _recompute_all(self) -> None:
        self._calc = self._new_calc()
        sources: list[Source] = [("block", c) for c in self.blocks]
        sources += [("wl", ip) for ip in self.workloads]
        sources += [("borrowed", f"{b.ip}|{b.node}") for bs in self.borrowed.values() for b in bs]
        sources += [("learned", c) for c in self.learned]
        for source in sources:
            self._resolve(source)

    def _recompute_node(self, name: str) -> None:
        for source in list(self._towards.get(name, ())):
            self._resolve(source)

    def _recompute_borrowed_inside(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr)
        for bs in self.borrowed.values():
            for b in bs:
                addr = ipaddress.ip_address(b.ip)
                if addr.version == net.version and addr in net:
                    self._resolve(("borrowed", f"{b.ip}|{b.node}"))

    def _index_block(self, block: BlockInfo) -> None:
        net = ipaddress.ip_network(block.cidr)
        self._blocks_by_len.setdefault((net.version, net.prefixlen), {})[net] = block

    def _unindex_block(self, block: BlockInfo) -> None:
        net = ipaddress.ip_network(block.cidr)
        bucket = self._blocks_by_len.get((net.version, net.prefixlen))
        if bucket is not None:
            bucket.pop(net, None)
            if not bucket:
                del self._blocks_by_len[(net.version, net.prefixlen)]

    def _effective_block(self, block: BlockInfo) -> bool:
        """backend_inputs' block filter: with bird, remote blocks of non-VXLAN pools come from BGP only."""
        if self.backend == "vxlan" or block.affinity == self.local.name:
            return True
        if self.backend == "none":
            return False
        return self._datastore_driven(block.cidr)

    def _datastore_driven(self, cidr: str) -> bool:
        net = ipaddress.ip_network(cidr, strict=False)
        for pool in self.pools.values():
            if pool.vxlan_mode == EncapMode.NEVER:
                continue
            pnet = ipaddress.ip_network(pool.cidr)
            if net.version == pnet.version and net.subnet_of(pnet):  # type: ignore[arg-type]
                return True
        return False

    def _block_of(self, addr: IPNetwork) -> BlockInfo | None:
        """The most specific (effective) block containing ``addr``: one lookup per prefix length."""
        best: tuple[int, BlockInfo] | None = None
        for (version, plen), bucket in self._blocks_by_len.items():
            if version != addr.version or (best is not None and plen <= best[0]):
                continue
            block = bucket.get(addr.supernet(new_prefix=plen))
            if block is not None and self._effective_block(block):
                best = (plen, block)
        return best[1] if best else None

    def _candidate(self, source: Source) -> tuple[str, Candidate, str | None] | None:
        """(dst, candidate, node it is routed towards) for a source, None when it offers nothing."""
        kind, ident = source
        calc = self._calc
        if kind == "block":
            block = self.blocks.get(ident)
            if block is None or not self._effective_block(block):
                return None
            net = ipaddress.ip_network(block.cidr)
            if block.affinity == self.local.name:
                return block.cidr, (_PRIO_BLOCK, "", Route(str(net), RouteType.BLACKHOLE, None, None, False,
                                                            _metric(net))), None
            if block.affinity is None:
                return None
            route = calc.towards(net, block.affinity)
            return (str(net), (_PRIO_BLOCK, block.affinity, route), block.affinity) if route else \
                ("", (0, "", _NONE), block.affinity)
        if kind == "wl":
            wl = self.workloads.get(ident)
            if wl is None:
                return None
            net = _host_net(wl.ip)
            return str(net), (_PRIO_WORKLOAD, wl.interface,
                              Route(str(net), RouteType.UNICAST, None, wl.interface, False, _metric(net))), None
        if kind == "borrowed":
            ip, _, node = ident.partition("|")
            if self.backend == "none" or node == self.local.name:
                return None
            if self.backend == "bird" and not self._datastore_driven(ip):
                return None
            net = _host_net(ip)
            block = self._block_of(net)
            if block is not None and block.affinity == node:
                return None
            route = calc.towards(net, node)
            return (str(net), (_PRIO_BORROWED, node, route), node) if route else ("", (0, "", _NONE), node)
        learned = self.learned.get(ident)
        if learned is None or self.backend == "none":
            return None
        net = _network(learned.cidr)
        hops = [h for h in (calc.learned_hop(net, hop) for hop in sorted(set(learned.hops))) if h is not None]
        if not hops:
            return None
        name = _network_text(learned.cidr)
        route = Route.multipath(name, hops, _metric(net))
        tiebreak = ",".join(h.gateway or "" for h in route.nexthops) or (route.gateway or "")
        return name, (_PRIO_LEARNED, tiebreak, route), None

    def _resolve(self, source: Source) -> None:
        found = self._candidate(source)
        node = found[2] if found is not None else None
        old_node = self._source_node.get(source)
        if old_node != node:
            if old_node is not None:
                self._towards.get(old_node, set()).discard(source)
                self._source_node.pop(source, None)
            if node is not None:
                self._towards.setdefault(node, set()).add(source)
                self._source_node[source] = node
        if found is None or found[1][2] is _NONE:
            self._withdraw(source)
            return
        dst, cand, _ = found
        old_dst = self._by_source.get(source)
        if old_dst is not None and old_dst != dst:
            self._withdraw(source)
        cands = self._candidates.setdefault(dst, {})
        if cands.get(source) == cand:
            return
        cands[source] = cand
        self._by_source[source] = dst
        self._elect(dst)

    def _drop(self, source: Source) -> None:
        node = self._source_node.pop(source, None)
        if node is not None:
            self._towards.get(node, set()).discard(source)
        self._withdraw(source)

    def _withdraw(self, source: Source) -> None:
        dst = self._by_source.pop(source, None)
        if dst is None:
            return
        cands = self._candidates.get(dst)
        if cands is not None and cands.pop(source, None) is not None:
            if not cands:
                del self._candidates[dst]
            self._elect(dst)

    def _elect(self, dst: str) -> None:
        cands = self._candidates.get(dst)
        new = min(cands.values(), key=lambda c: (c[0], c[1]))[2] if cands else None
        old = self._winner.get(dst)
        if new == old:
            return
        if new is None:
            del self._winner[dst]
        else:
            self._winner[dst] = new
        self._changed[dst] = new


#: Placeholder route meaning "the source is routed towards a node but no route can be built (yet)":
#: it keeps the node dependency so the source is re-resolved when that node changes.
_NONE = Route("0.0.0.0/32", RouteType.BLACKHOLE, None, None, False, 0)


def from_inputs(inputs: RouteInputs, backend: str = "vxlan") -> RouteResolver:
    """A resolver loaded with ``inputs`` (a whole-state start, e.g. after a resync)."""
    resolver = RouteResolver(inputs.local_node, backend)
    for pool in inputs.pools:
        resolver.upsert_pool(pool)
    for node in inputs.remote_nodes:
        resolver.upsert_node(node)
    by_block: dict[str, list[BorrowedIP]] = {}
    nets = [(ipaddress.ip_network(b.cidr), b.cidr) for b in inputs.blocks]
    for b in inputs.borrowed:
        addr = ipaddress.ip_address(b.ip)
        home = next((c for n, c in nets if n.version == addr.version and addr in n), "")
        by_block.setdefault(home, []).append(b)
    for block in inputs.blocks:
        resolver.upsert_block(block, by_block.get(block.cidr, ()))
    for wl in inputs.workloads:
        resolver.upsert_workload(wl)
    for learned in inputs.learned:
        resolver.upsert_learned(learned)
    resolver.drain()
    return resolver

