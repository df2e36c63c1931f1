"""Desired kernel routes of one node, calculated from plain data: pure, no I/O.

Why pure: every rule here is Calico's, and each is easiest to get right (and to prove right) as
a function from frozen inputs to a set of :class:`Route` values. The route programmer then only
has to make the kernel match that set; the node agent feeds it from the datastore and BGP.

Rules (see docs/dataplane.md for the table):

* a block affine to this node -> ``blackhole <block>`` (its free addresses must not leak to a
  default route);
* a local workload -> ``<ip>/32`` (``/128``) ``dev <host veth>`` scope link; this also covers an
  IP this node borrowed from another node's block (longest prefix beats that block's route);
* a block affine to another node -> a route towards that node, chosen by its pool:
  native ``via <node ip> dev <nic>`` when encapsulation is Never, or CrossSubnet with the node
  inside the local subnet; ``via <node ip> dev tunl0 onlink`` for IPIP Always (or CrossSubnet
  across subnets); ``via <vtep ip> dev vxlan.tabby onlink`` for VXLAN likewise;
* an IP borrowed by a remote node from a block that is not that node's (ours or a third node's)
  -> ``/32`` towards the borrower with the same encapsulation rule;
* BGP-learned prefixes (optional) -> ``via <next hop> dev <nic>`` when the next hop is on the
  local subnet, ``via <next hop> dev tunl0 onlink`` inside an IPIP pool (Always, or CrossSubnet
  with the next hop elsewhere), as Calico's BIRD does; they never override a route calculated
  from the datastore. An ECMP best route (several next hops) becomes ONE multipath route, each
  hop resolved by the same rule; unusable hops are dropped, one usable hop is a plain route.

Routes that cannot be built (remote node without a known address, VXLAN peer without VTEP
address, native route to a node outside the local subnet, which needs a BGP router) are skipped
and logged; the rest still apply.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

from felix_like.netlink import IPV6_DEFAULT_METRIC, NextHop, Route, RouteType

# ipaddress objects are immutable: parse each next hop once (a BGP table of 10,000 routes has a handful of
# next hops, resolved again for every route; parsing was a visible share of the agent's time)
_ip_address = functools.lru_cache(maxsize=1 << 12)(ipaddress.ip_address)

log = structlog.get_logger("tabby.felix_like.routes")

IPIP_DEVICE = "tunl0"
VXLAN_DEVICE = "vxlan.tabby"
VXLAN_V6_DEVICE = "vxlan-v6.tabby"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class EncapMode(StrEnum):
    """An IPPool's ipipMode / vxlanMode (empty in a resource means Never)."""

    NEVER = "Never"
    ALWAYS = "Always"
    CROSS_SUBNET = "CrossSubnet"


@dataclass(frozen=True)
class PoolInfo:
    """An IPPool as far as routing cares. ``disabled`` stops allocation only: existing blocks stay routed."""

    cidr: str
    ipip_mode: EncapMode = EncapMode.NEVER
    vxlan_mode: EncapMode = EncapMode.NEVER
    disabled: bool = False


@dataclass(frozen=True)
class BlockInfo:
    """An IPAM block and the node it is affine to (None: affinity released, IPs may still be in use)."""

    cidr: str
    affinity: str | None


@dataclass(frozen=True)
class LocalNodeInfo:
    """This node: its name, Node.spec.bgp.ipv4Address/ipv6Address in CIDR form, and the NIC they live on."""

    name: str
    ipv4_address: str | None
    interface: str
    ipv6_address: str | None = None


@dataclass(frozen=True)
class RemoteNodeInfo:
    """Another node: addresses in CIDR form (prefix optional) and VXLAN tunnel (VTEP) addresses."""

    name: str
    ipv4_address: str | None
    ipv6_address: str | None = None
    vxlan_tunnel_address: str | None = None
    vxlan_tunnel_address_v6: str | None = None


@dataclass(frozen=True)
class WorkloadInfo:
    """A workload on this node: its IP and the host-side veth."""

    ip: str
    interface: str


@dataclass(frozen=True)
class BorrowedIP:
    """An allocated IP and the node its workload runs on (the borrower), for IPs outside that node's blocks."""

    ip: str
    node: str


@dataclass(frozen=True)
class LearnedRoute:
    """A prefix learned over BGP with its next hop (best path already chosen by the RIB).

    ``next_hops`` holds every next hop of an ECMP best route (the RIB's multipath set, ``next_hop``
    among them) and is empty for a single path, so the common case stays a two-field value.
    """

    cidr: str
    next_hop: str
    next_hops: tuple[str, ...] = ()

    @property
    def hops(self) -> tuple[str, ...]:
        """Every next hop to program: the ECMP set, or just ``next_hop``."""
        return self.next_hops or (self.next_hop,)


@dataclass(frozen=True)
class RouteInputs:
    """Everything the calculation reads. Tuples, so the whole thing is hashable and immutable."""

    local_node: LocalNodeInfo
    pools: tuple[PoolInfo, ...] = ()
    blocks: tuple[BlockInfo, ...] = ()
    remote_nodes: tuple[RemoteNodeInfo, ...] = ()
    workloads: tuple[WorkloadInfo, ...] = ()
    borrowed: tuple[BorrowedIP, ...] = ()
    learned: tuple[LearnedRoute, ...] = field(default=())


# Priorities when two sources want the same destination: the most specific knowledge wins.
_PRIO_WORKLOAD = 0
_PRIO_BORROWED = 1
_PRIO_BLOCK = 2
_PRIO_LEARNED = 3


def _metric(net: IPNetwork) -> int:
    return IPV6_DEFAULT_METRIC if net.version == 6 else 0


def _host_net(ip: str) -> IPNetwork:
    addr = ipaddress.ip_address(ip.split("/", 1)[0])
    return ipaddress.ip_network(addr)


def _iface(cidr: str | None) -> IPInterface | None:
    """Parse a node address; a bare address becomes a host prefix (no subnet known)."""
    if not cidr:
        return None
    return ipaddress.ip_interface(cidr)


class _Calculator:
    """Holds the parsed inputs for one calculation; not reused."""

    def __init__(self, inputs: RouteInputs):
        self.inputs = inputs
        local = inputs.local_node
        self.local_name = local.name
        self.nic = local.interface
        self.local_v4 = _iface(local.ipv4_address)
        self.local_v6 = _iface(local.ipv6_address)
        self.pools = sorted(
            ((ipaddress.ip_network(p.cidr), p) for p in inputs.pools), key=lambda item: -item[0].prefixlen
        )
        self.nodes = {n.name: n for n in inputs.remote_nodes}
        self.blocks = sorted(
            ((ipaddress.ip_network(b.cidr), b) for b in inputs.blocks),
            key=lambda item: (item[0].version, item[0]),
        )
        self.chosen: dict[IPNetwork, tuple[int, str, Route]] = {}
        self.skipped: list[tuple[str, str]] = []
        #: (next hop, IP version, pool index) -> learned_hop's answer: it depends on nothing else, and
        #: 10,000 learned prefixes share a handful of next hops.
        self._hops: dict[tuple[str, int, int], NextHop | None] = {}

    def offer(self, net: IPNetwork, prio: int, tiebreak: str, route: Route) -> None:
        """Keep one route per destination: lowest priority value, then lowest tiebreak string."""
        current = self.chosen.get(net)
        if current is None or (prio, tiebreak) < current[:2]:
            if current is not None and current[0] == prio:
                log.warning("routes.conflict", dst=str(net), kept=route.describe(), dropped=current[2].describe())
            self.chosen[net] = (prio, tiebreak, route)

    def pool_for(self, net: IPNetwork) -> PoolInfo | None:
        return self._pool_index(net)[1]

    def _pool_index(self, net: IPNetwork) -> tuple[int, PoolInfo | None]:
        """(position in self.pools, pool) of the longest pool containing ``net``; (-1, None) if none."""
        for index, (pool_net, pool) in enumerate(self.pools):  # longest pool prefix first
            if pool_net.version == net.version and net.subnet_of(pool_net):  # type: ignore[arg-type]
                return index, pool
        return -1, None

    def block_of(self, addr: IPNetwork) -> BlockInfo | None:
        best: tuple[int, BlockInfo] | None = None
        for block_net, block in self.blocks:
            if (
                block_net.version == addr.version
                and addr.subnet_of(block_net)  # type: ignore[arg-type]
                and (best is None or block_net.prefixlen > best[0])
            ):
                best = (block_net.prefixlen, block)
        return best[1] if best else None

    def towards(self, net: IPNetwork, node_name: str) -> Route | None:
        """The route for ``net`` (a block or a /32) on remote node ``node_name``, per the pool's encapsulation."""
        node = self.nodes.get(node_name)
        if node is None:
            self.skip(net, f"node {node_name} unknown")
            return None
        v6 = net.version == 6
        node_addr = _iface(node.ipv6_address if v6 else node.ipv4_address)
        local_addr = self.local_v6 if v6 else self.local_v4
        if node_addr is None:
            self.skip(net, f"node {node_name} has no IPv{net.version} address")
            return None
        same_subnet = local_addr is not None and node_addr.ip in local_addr.network
        pool = self.pool_for(net)
        ipip = pool.ipip_mode if pool else EncapMode.NEVER
        vxlan = pool.vxlan_mode if pool else EncapMode.NEVER
        metric = _metric(net)

        def wants(mode: EncapMode) -> bool:
            return mode == EncapMode.ALWAYS or (mode == EncapMode.CROSS_SUBNET and not same_subnet)

        if wants(vxlan):
            vtep = node.vxlan_tunnel_address_v6 if v6 else node.vxlan_tunnel_address
            if not vtep:
                self.skip(net, f"node {node_name} has no VXLAN tunnel address")
                return None
            device = VXLAN_V6_DEVICE if v6 else VXLAN_DEVICE
            gateway = str(ipaddress.ip_address(vtep.split("/", 1)[0]))
            return Route(str(net), RouteType.UNICAST, gateway, device, True, metric)
        if wants(ipip):
            if v6:
                self.skip(net, "IPIP is IPv4 only")
                return None
            return Route(str(net), RouteType.UNICAST, str(node_addr.ip), IPIP_DEVICE, True, metric)
        if not same_subnet:
            self.skip(net, f"native route to node {node_name} outside the local subnet needs a router (BGP)")
            return None
        return Route(str(net), RouteType.UNICAST, str(node_addr.ip), self.nic, False, metric)

    def learned_hop(self, net: IPNetwork, next_hop: str) -> NextHop | None:
        """How one BGP next hop of ``net`` is reached (None: not usable, logged), per Calico's BIRD rules.

        Applied to every member of an ECMP set independently, so a set may mix on-link hops (via the
        NIC) with IPIP hops (via tunl0 onlink) under CrossSubnet.
        """
        pool_index, pool = self._pool_index(net)
        key = (next_hop, net.version, pool_index)
        if key in self._hops:
            return self._hops[key]
        self._hops[key] = found = self._learned_hop(net, next_hop, pool)
        return found

    def _learned_hop(self, net: IPNetwork, next_hop: str, pool: PoolInfo | None) -> NextHop | None:
        hop = _ip_address(next_hop)
        local_addr = self.local_v6 if hop.version == 6 else self.local_v4
        on_subnet = local_addr is not None and hop in local_addr.network and hop.version == net.version
        ipip = pool.ipip_mode if pool else EncapMode.NEVER
        if (
            hop.version == 4
            and net.version == 4
            and (ipip == EncapMode.ALWAYS or (ipip == EncapMode.CROSS_SUBNET and not on_subnet))
        ):
            # Calico's BIRD sends routes of IPIP pools through tunl0 (onlink: the next hop is a node
            # address, not a neighbour on the tunnel).
            return NextHop(str(hop), IPIP_DEVICE, True)
        if not on_subnet:
            log.info(
                "routes.next_hop_skipped",
                dst=str(net),
                next_hop=str(hop),
                node=self.local_name,
                reason=f"BGP next hop {hop} is not on the local subnet",
            )
            return None
        return NextHop(str(hop), self.nic, False)

    def skip(self, net: IPNetwork, reason: str) -> None:
        self.skipped.append((str(net), reason))
        log.info("routes.skipped", dst=str(net), reason=reason, node=self.local_name)

    def run(self) -> frozenset[Route]:
        inputs = self.inputs
        for block_net, block in self.blocks:
            if block.affinity == self.local_name:
                route = Route(str(block_net), RouteType.BLACKHOLE, None, None, False, _metric(block_net))
                self.offer(block_net, _PRIO_BLOCK, "", route)
            elif block.affinity is not None:
                route = self.towards(block_net, block.affinity)
                if route is not None:
                    self.offer(block_net, _PRIO_BLOCK, block.affinity, route)
        for wl in sorted(inputs.workloads, key=lambda w: (w.ip, w.interface)):
            net = _host_net(wl.ip)
            self.offer(
                net,
                _PRIO_WORKLOAD,
                wl.interface,
                Route(str(net), RouteType.UNICAST, None, wl.interface, False, _metric(net)),
            )
        for borrowed in sorted(inputs.borrowed, key=lambda b: (b.ip, b.node)):
            if borrowed.node == self.local_name:
                continue  # our own workload: its /32 comes from the workload list (we know its veth there)
            net = _host_net(borrowed.ip)
            block = self.block_of(net)
            if block is not None and block.affinity == borrowed.node:
                continue  # not borrowed after all: the block route already points there
            route = self.towards(net, borrowed.node)
            if route is not None:
                self.offer(net, _PRIO_BORROWED, borrowed.node, route)
        for learned in sorted(inputs.learned, key=lambda r: (r.cidr, r.hops)):
            net = ipaddress.ip_network(learned.cidr, strict=False)
            resolved = [self.learned_hop(net, hop) for hop in sorted(set(learned.hops))]
            hops = [hop for hop in resolved if hop is not None]
            if not hops:
                self.skip(net, f"no usable BGP next hop among {', '.join(learned.hops)}")
                continue
            # One hop: the plain single-gateway route, exactly as before ECMP. Several: one multipath
            # route, hops in canonical (numeric) order, so the same set always gives the same Route.
            route = Route.multipath(str(net), hops, _metric(net))
            tiebreak = ",".join(h.gateway or "" for h in route.nexthops) or (route.gateway or "")
            self.offer(net, _PRIO_LEARNED, tiebreak, route)
        return frozenset(route for _, _, route in self.chosen.values())


def calculate_routes(inputs: RouteInputs) -> frozenset[Route]:
    """The complete set of routes this node should have with Tabby's protocol. Deterministic."""
    return _Calculator(inputs).run()


def sorted_routes(routes: Iterable[Route]) -> list[Route]:
    """Routes in a stable order (IPv4 first, then by destination)."""
    return sorted(routes, key=Route.sort_key)
