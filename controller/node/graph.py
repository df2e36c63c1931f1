"""The incremental calculation graph: model updates in, typed dataplane messages out.

Why a graph (Felix's ``calc`` package): the agent holds the whole cluster (5,000 nodes, 150,000
endpoints) but one event changes one thing. A dispatcher routes each :class:`~controller.node.model.Update`
by resource kind to the calculators that subscribed to that kind; each keeps its own indexes and
emits only what changed:

* :class:`RouteCalc` -- pools, blocks, nodes, local workloads (from the model AND from CNI, before
  etcd echoes them) and BGP-learned routes -> :class:`~controller.node.messages.RouteUpdate`
  (the rules live in :class:`felix_like.route_resolver.RouteResolver`);
* :class:`TunnelCalc` -- VTEPs (VXLAN), tunl0 (IPIP) and NAT-outgoing sets from pools and nodes;
* :class:`BgpCalc` -- the inputs of BGP sessions and announcements (own blocks, IPs this node
  borrowed); it tells BGP when they changed instead of BGP re-reading the cluster;
* :class:`~controller.node.policy.PolicyCalc` -- NetworkPolicies, Namespaces and WorkloadEndpoints
  -> :class:`~controller.node.messages.PolicyUpdate` (a label index turning selectors into IP-set
  members; chains for local endpoints only), registered through ``graph.dispatcher.register``.

Nothing here does I/O; the agent passes :meth:`CalcGraph.flush` output to the dataplane.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from controller.node.messages import IPIPUpdate, Message, NATUpdate, RouteUpdate, VTEPUpdate, VXLANUpdate
from controller.node.model import BLOCK, Update
from controller.node.policy import PolicyCalc
from datamodel.resources import BGPConfiguration, BGPFilter, BGPPeer, IPPool, Node
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from felix_like.ipip import IPIPConfig
from felix_like.nat import NATPool
from felix_like.route_resolver import RouteResolver
from felix_like.routes import (
    BlockInfo,
    BorrowedIP,
    EncapMode,
    LearnedRoute,
    LocalNodeInfo,
    PoolInfo,
    RemoteNodeInfo,
    WorkloadInfo,
)
from felix_like.vxlan import RemoteVTEP, VXLANLocal, derive_vtep_mac
from ipam.block import Block

Handler = Callable[[Update], None]

#: Encapsulation overheads (field notes: IPIP -20, VXLAN -50 IPv4 / -70 IPv6).
IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50
VXLAN_V6_OVERHEAD = 70


@dataclass(frozen=True)
class EncapSettings:
    """What FelixConfiguration says about tunnels (controller/node/felix_config.py).

    ``ipip_enabled``/``vxlan_enabled``: None = the pools decide (Felix's auto-detection); False = no
    device of that kind and no route through one, whatever the pools ask (Felix's ``ipipEnabled`` /
    ``vxlanEnabled: false``); True = the pools still decide, since a device needs the tunnel address
    only a pool of that kind gives (Felix waits for its VTEP the same way). ``*_mtu`` None = auto
    (the NIC's MTU minus the overhead); a value is set on the device and bounds the pods' MTU.
    ``vxlanEnabled`` is Felix's IPv4 switch: IPv6 VXLAN pools are not affected.
    """

    ipip_enabled: bool | None = None
    vxlan_enabled: bool | None = None
    ipip_mtu: int | None = None
    vxlan_mtu: int | None = None

    def off(self) -> set[str]:
        return {kind for kind, on in (("ipip", self.ipip_enabled), ("vxlan", self.vxlan_enabled)) if on is False}

    def mtus(self) -> dict[str, int]:
        return {kind: mtu for kind, mtu in (("ipip", self.ipip_mtu), ("vxlan", self.vxlan_mtu)) if mtu}


#: Tabby's own devices (and lo): never the host MTU's source, or a tunnel would lower itself.
_OWN_DEVICES = re.compile(r"^(lo|tunl0|vxlan\.tabby|vxlan-v6\.tabby|tab.*)$")


def host_mtu(interfaces: Iterable[tuple[str, int, bool]], pattern: str) -> int | None:
    """FelixConfiguration ``mtuIfacePattern``: the smallest MTU of the up interfaces whose name the
    pattern matches (a regexp search, as Felix's MatchString), Tabby's own devices excepted; None
    when none matches (the autodetected interface's MTU stays in force)."""
    rx = re.compile(pattern)
    mtus = [mtu for name, mtu, up in interfaces if up and rx.search(name) and not _OWN_DEVICES.match(name)]
    return min(mtus) if mtus else None


def with_host_mtu(encap: EncapSettings, host: int | None) -> EncapSettings:
    """Auto tunnel MTUs (None) made explicit from the pattern's host MTU: the devices would otherwise
    take their parent NIC's."""
    if host is None:
        return encap
    return replace(encap, ipip_mtu=encap.ipip_mtu or host - IPIP_OVERHEAD,
                   vxlan_mtu=encap.vxlan_mtu or host - VXLAN_OVERHEAD)


# -- pure conversions: datamodel objects -> felix_like plain data -----------------------------------
def pool_info(pool: IPPool, encap: EncapSettings | None = None) -> PoolInfo:
    """A pool for routing; an encapsulation FelixConfiguration turned off routes as mode Never
    (natively, via the node's address), since there is no device to route through."""
    off = encap.off() if encap is not None else set()
    v4 = pool.ip_version == 4
    ipip = EncapMode.NEVER if "ipip" in off and v4 else EncapMode(pool.spec.ipipMode)
    vxlan = EncapMode.NEVER if "vxlan" in off and v4 else EncapMode(pool.spec.vxlanMode)
    return PoolInfo(cidr=pool.spec.cidr, ipip_mode=ipip, vxlan_mode=vxlan, disabled=pool.spec.disabled)


def remote_node_info(node: Node) -> RemoteNodeInfo:
    bgp = node.spec.bgp
    return RemoteNodeInfo(
        name=node.name,
        ipv4_address=bgp.ipv4Address if bgp else None,
        ipv6_address=bgp.ipv6Address if bgp else None,
        vxlan_tunnel_address=node.spec.ipv4VXLANTunnelAddr,
        vxlan_tunnel_address_v6=node.spec.ipv6VXLANTunnelAddr,
    )


def borrowed_ips(block: Block) -> list[BorrowedIP]:
    """Allocations in ``block`` whose workload runs on another node than the block's owner."""
    owner = block.node
    out = []
    for ordinal in block.allocated_ordinals():
        node = block.secondary_of(ordinal).get("node")
        if node and node != owner:
            out.append(BorrowedIP(ip=block.ip(ordinal), node=node))
    return out


def encapsulations(pools: Iterable[IPPool]) -> set[str]:
    """``{"ipip", "vxlan", "vxlan6"}`` subset enabled by any enabled pool."""
    out: set[str] = set()
    for pool in pools:
        if pool.spec.disabled:
            continue
        v6 = pool.ip_version == 6
        if pool.spec.ipipMode != "Never" and not v6:
            out.add("ipip")
        if pool.spec.vxlanMode != "Never":
            out.add("vxlan6" if v6 else "vxlan")
    return out


OVERHEADS = {"ipip": IPIP_OVERHEAD, "vxlan": VXLAN_OVERHEAD, "vxlan6": VXLAN_V6_OVERHEAD}


def pod_mtu(nic_mtu: int, encaps: set[str], override: int | None = None,
            tunnel_mtus: dict[str, int] | None = None) -> int:
    """The pods' MTU: the override (TABBY_MTU, as the CNI config's ``mtu``), else the smallest MTU of
    the programmed tunnels, each its configured MTU (FelixConfiguration ipipMTU/vxlanMTU) or the
    NIC's minus its overhead; the NIC's MTU with no tunnel. A pod's packet may leave through any
    of them, so it must fit the smallest (what Felix writes for the CNI plugin to read)."""
    if override:
        return override
    mtus = tunnel_mtus or {}
    return min([nic_mtu] + [mtus.get(kind) or nic_mtu - overhead for kind, overhead in OVERHEADS.items()
                            if kind in encaps])


def _bare(addr: str | None) -> str | None:
    return str(ipaddress.ip_interface(addr).ip) if addr else None


class Dispatcher:
    """Routes each update to the handlers registered for its kind (Felix's dispatcher)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    def dispatch(self, update: Update) -> None:
        for handler in self._handlers.get(update.kind, ()):
            handler(update)


@dataclass(frozen=True)
class _LocalWep:
    container_id: str | None
    ips: tuple[str, ...]
    interface: str


class RouteCalc:
    """Pools, blocks, nodes, local workloads and learned routes -> route changes."""

    def __init__(self, nodename: str, backend: str) -> None:
        self.nodename = nodename
        self.resolver = RouteResolver(LocalNodeInfo(nodename, None, ""), backend)
        self._local: dict[str, _LocalWep] = {}  # WorkloadEndpoint key -> this node's workload
        self._ip_owners: dict[str, dict[str, str]] = {}  # ip -> {wep key: interface}
        self._learned: dict[str, LearnedRoute] = {}
        self._pools: dict[str, IPPool] = {}
        self.encap = EncapSettings()

    def set_encap(self, encap: EncapSettings) -> None:
        """FelixConfiguration's tunnel switches changed: re-resolve every pool's routes."""
        changed = encap.off() != self.encap.off()
        self.encap = encap
        if changed:
            for pool in self._pools.values():
                self.resolver.upsert_pool(pool_info(pool, encap))

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register(IPPool.KIND, self.on_pool)
        dispatcher.register(Node.KIND, self.on_node)
        dispatcher.register(BLOCK, self.on_block)
        dispatcher.register(WorkloadEndpoint.KIND, self.on_wep)

    def set_local_node(self, ipv4_address: str | None, interface: str, ipv6_address: str | None = None) -> None:
        self.resolver.set_local(LocalNodeInfo(self.nodename, ipv4_address, interface, ipv6_address))

    def on_pool(self, u: Update) -> None:
        if u.old is not None and (u.new is None or u.new.spec.cidr != u.old.spec.cidr):
            self.resolver.remove_pool(u.old.spec.cidr)
        self._pools.pop(u.key, None)
        if u.new is not None:
            self._pools[u.key] = u.new
            self.resolver.upsert_pool(pool_info(u.new, self.encap))

    def on_node(self, u: Update) -> None:
        if u.new is None:
            self.resolver.remove_node(u.old.name)
        else:
            self.resolver.upsert_node(remote_node_info(u.new))

    def on_block(self, u: Update) -> None:
        if u.new is None:
            self.resolver.remove_block(u.old.cidr)
        else:
            block: Block = u.new
            self.resolver.upsert_block(BlockInfo(block.cidr, block.node), borrowed_ips(block))

    def on_wep(self, u: Update) -> None:
        new: WorkloadEndpoint | None = u.new
        if new is not None and new.spec.node == self.nodename and new.spec.interfaceName:
            ips = tuple(str(ipaddress.ip_interface(n).ip) for n in new.spec.ipNetworks)
            self._set_local(u.key, _LocalWep(new.spec.containerID, ips, new.spec.interfaceName))
            return
        current = self._local.get(u.key)
        if current is None:
            return
        old: WorkloadEndpoint | None = u.old
        if new is None and old is not None and old.spec.containerID not in (None, current.container_id):
            return  # the late delete of an earlier sandbox: the new one (added by CNI) stays
        self._set_local(u.key, None)

    # -- the agent's own workloads (CNI), before etcd echoes them -----------------------------------
    def local_add(self, key: str, container_id: str, ips: Iterable[str], interface: str) -> None:
        self._set_local(key, _LocalWep(container_id, tuple(ips), interface))

    def local_remove(self, keys: Iterable[str], interfaces: Iterable[str]) -> None:
        keys, interfaces = set(keys), set(interfaces)
        for key, wl in list(self._local.items()):
            if key in keys or wl.interface in interfaces:
                self._set_local(key, None)

    def _set_local(self, key: str, wl: _LocalWep | None) -> None:
        old = self._local.pop(key, None)
        if wl is not None:
            self._local[key] = wl
        touched = set(old.ips if old else ()) | set(wl.ips if wl else ())
        for ip in old.ips if old else ():
            owners = self._ip_owners.get(ip)
            if owners is not None:
                owners.pop(key, None)
        for ip in wl.ips if wl else ():
            self._ip_owners.setdefault(ip, {})[key] = wl.interface  # type: ignore[union-attr]
        for ip in touched:
            owners = self._ip_owners.get(ip)
            if owners:
                self.resolver.upsert_workload(WorkloadInfo(ip, min(owners.values())))
            else:
                self._ip_owners.pop(ip, None)
                self.resolver.remove_workload(ip)

    def local_interfaces(self) -> dict[str, str]:
        """ip -> host interface of every local workload the graph routes (CNI CHECK, tests)."""
        return {ip: min(owners.values()) for ip, owners in self._ip_owners.items() if owners}

    # -- BGP ---------------------------------------------------------------------------------------
    def set_learned(self, routes: Iterable[LearnedRoute]) -> None:
        """The complete set of learned routes now (diffed here: only changed prefixes are re-resolved)."""
        new = {r.cidr: r for r in routes}
        for cidr in set(self._learned) - set(new):
            self.resolver.remove_learned(cidr)
        for cidr, route in new.items():
            if self._learned.get(cidr) != route:
                self.resolver.upsert_learned(route)
        self._learned = new

    def update_learned(self, changes: Mapping[str, LearnedRoute | None]) -> None:
        """Some prefixes' learned routes now (None: gone): O(changes), where set_learned is O(table)."""
        for cidr, route in changes.items():
            if route is None:
                if self._learned.pop(cidr, None) is not None:
                    self.resolver.remove_learned(cidr)
            elif self._learned.get(cidr) != route:
                self._learned[cidr] = route
                self.resolver.upsert_learned(route)

    def drain(self) -> list[Message]:
        return [RouteUpdate(dst, route) for dst, route in self.resolver.drain().items()]


class TunnelCalc:
    """VTEPs (VXLAN), tunl0 (IPIP) and NAT-outgoing pools, from pools and nodes."""

    def __init__(self, nodename: str, vxlan_mac: str | None = None) -> None:
        self.nodename = nodename
        self.vxlan_mac = vxlan_mac
        self.pools: dict[str, IPPool] = {}
        self.me: Node | None = None
        self.remotes: dict[str, RemoteVTEP] = {}
        self.node_ip: str | None = None
        self.interface = ""
        self._dirty = True
        self._last: tuple[VXLANUpdate, IPIPUpdate, NATUpdate] | None = None
        self.encap = EncapSettings()
        self._vtep_changes: dict[str, RemoteVTEP | None] = {}  # remote VTEPs changed since the last drain

    def set_encap(self, encap: EncapSettings) -> None:
        if encap != self.encap:
            self.encap = encap
            self._dirty = True

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register(IPPool.KIND, self.on_pool)
        dispatcher.register(Node.KIND, self.on_node)

    def set_local_node(self, ipv4_address: str | None, interface: str) -> None:
        if (ipv4_address, interface) != (self.node_ip, self.interface):
            self.node_ip, self.interface = ipv4_address, interface
            self._dirty = True

    def on_pool(self, u: Update) -> None:
        if u.new is None:
            self.pools.pop(u.key, None)
        else:
            self.pools[u.key] = u.new
        self._dirty = True

    def on_node(self, u: Update) -> None:
        node: Node | None = u.new
        name = (node or u.old).name
        if name == self.nodename:
            self.me = node
            self._dirty = True
            return
        vtep = None
        if node is not None and node.spec.ipv4VXLANTunnelAddr and node.spec.bgp and node.spec.bgp.ipv4Address:
            vtep = RemoteVTEP(name, _bare(node.spec.bgp.ipv4Address) or "", node.spec.ipv4VXLANTunnelAddr,
                              node.spec.vxlanTunnelMACAddr or derive_vtep_mac(name))
        if self.remotes.get(name) != vtep:
            if vtep is None:
                self.remotes.pop(name, None)
            else:
                self.remotes[name] = vtep
            self._vtep_changes[name] = vtep  # one node's delta, not the whole list

    def encapsulations(self) -> set[str]:
        """What the pools ask for: the tunnel addresses follow this (as calico-node allocates them)."""
        return encapsulations(self.pools.values())

    def programmed(self) -> set[str]:
        """What this node programs: the pools' asks minus what FelixConfiguration turned off."""
        return self.encapsulations() - self.encap.off()

    def suppressed(self) -> dict[str, str]:
        """kind -> why it is not programmed although a pool asks for it (for ``node status``)."""
        return {kind: f"FelixConfiguration {kind}Enabled is false: no {kind} device and no route through one, "
                      "although a pool asks for it; routes to its blocks go natively"
                for kind in sorted(self.encapsulations() & self.encap.off())}

    def current(self) -> tuple[VXLANUpdate, IPIPUpdate, NATUpdate]:
        encaps = self.programmed()
        me = self.me.spec if self.me is not None else None
        vx_local = None
        if "vxlan" in encaps and me is not None and me.ipv4VXLANTunnelAddr and self.node_ip and self.interface:
            vx_local = VXLANLocal(node_name=self.nodename, node_ip=_bare(self.node_ip) or "",
                                  interface=self.interface, tunnel_address=me.ipv4VXLANTunnelAddr,
                                  mac=me.vxlanTunnelMACAddr or None, mtu=self.encap.vxlan_mtu)
        tunnel = me.bgp.ipv4IPIPTunnelAddr if me is not None and me.bgp is not None else None
        ipip = IPIPConfig(tunnel_address=tunnel, interface=self.interface, mtu=self.encap.ipip_mtu) \
            if "ipip" in encaps and tunnel and self.interface else None
        nat = tuple(NATPool(p.spec.cidr, p.spec.natOutgoing) for _, p in sorted(self.pools.items()))
        return VXLANUpdate(vx_local), IPIPUpdate(ipip), NATUpdate(nat, any(p.nat_outgoing for p in nat))

    def drain(self) -> list[Message]:
        """The local tunnel messages that changed, then one :class:`VTEPUpdate` per remote node that
        changed (all of them after the first snapshot; afterwards O(changes), never the full list)."""
        out: list[Message] = []
        if self._dirty:
            self._dirty = False
            now = self.current()
            last, self._last = self._last, now
            out = [msg for i, msg in enumerate(now) if last is None or last[i] != msg]
        if self._vtep_changes:
            changes, self._vtep_changes = self._vtep_changes, {}
            out.extend(VTEPUpdate(name, vtep) for name, vtep in changes.items())
        return out


class BgpCalc:
    """What BGP sessions and announcements depend on; ``on_change`` fires when any of it changed."""

    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self.own_blocks: set[str] = set()
        self.borrowed_by_me: dict[str, frozenset[str]] = {}  # block cidr -> IPs this node borrowed there
        self.changed = False
        self.on_change: Callable[[], None] | None = None

    def register(self, dispatcher: Dispatcher) -> None:
        for kind in (IPPool.KIND, Node.KIND, BGPConfiguration.KIND, BGPPeer.KIND, BGPFilter.KIND):
            dispatcher.register(kind, self._any)
        dispatcher.register(BLOCK, self.on_block)

    def _any(self, _u: Update) -> None:
        self._mark()

    def _mark(self) -> None:
        self.changed = True
        if self.on_change is not None:
            self.on_change()

    def on_block(self, u: Update) -> None:
        block: Block | None = u.new
        cidr = (block or u.old).cidr
        mine = block is not None and block.node == self.nodename
        borrowed = frozenset(b.ip for b in borrowed_ips(block) if b.node == self.nodename) if block else frozenset()
        changed = (cidr in self.own_blocks) != mine or self.borrowed_by_me.get(cidr, frozenset()) != borrowed
        if mine:
            self.own_blocks.add(cidr)
        else:
            self.own_blocks.discard(cidr)
        if borrowed:
            self.borrowed_by_me[cidr] = borrowed
        else:
            self.borrowed_by_me.pop(cidr, None)
        if changed:
            self._mark()

    def borrowed(self) -> list[str]:
        return sorted(ip for ips in self.borrowed_by_me.values() for ip in ips)


class CalcGraph:
    """The dispatcher and the calculators of one node. Single-threaded: the agent's event loop."""

    def __init__(self, nodename: str, backend: str, *, vxlan_mac: str | None = None,
                 flow_logs: bool = True) -> None:
        self.dispatcher = Dispatcher()
        self.routes = RouteCalc(nodename, backend)
        self.tunnels = TunnelCalc(nodename, vxlan_mac)
        self.bgp = BgpCalc(nodename)
        self.policy = PolicyCalc(nodename, flow_logs=flow_logs)
        for calc in (self.routes, self.tunnels, self.bgp, self.policy):
            calc.register(self.dispatcher)

    def apply(self, updates: Iterable[Update]) -> None:
        for update in updates:
            self.dispatcher.dispatch(update)

    def set_local_node(self, ipv4_address: str | None, interface: str, ipv6_address: str | None = None) -> None:
        self.routes.set_local_node(ipv4_address, interface, ipv6_address)
        self.tunnels.set_local_node(ipv4_address, interface)

    def set_encap(self, encap: EncapSettings) -> None:
        self.routes.set_encap(encap)
        self.tunnels.set_encap(encap)

    def flush(self) -> list[Message]:
        """Everything that changed since the last flush, tunnels first (routes may go through them)."""
        return self.tunnels.drain() + self.routes.drain() + self.policy.drain()
