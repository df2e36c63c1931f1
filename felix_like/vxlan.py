"""Calico's VXLAN manager for Tabby: the ``vxlan.tabby`` device plus static neighbour and FDB entries.

Why static entries: like Calico, Tabby turns MAC learning off and never floods. Every remote
node's VTEP (tunnel address, MAC, underlay address) is known from the datastore, so the manager
programs, per remote VTEP,

* ``<remote tunnel ip> lladdr <remote mac> dev vxlan.tabby nud permanent`` (the route
  ``via <vtep> dev vxlan.tabby onlink`` resolves its next hop through it, no ARP on the wire);
* ``<remote mac> dst <remote node ip> dev vxlan.tabby self permanent`` (the FDB tells the
  device which underlay address to encapsulate towards).

The module has two halves: :func:`calculate_vxlan` is pure (plain frozen data in, desired
device + entries out) and :class:`VXLANManager` makes one namespace's kernel match it. The
manager owns the device and everything on it (addresses, neighbours, FDB entries) and touches
nothing else. Attributes that the kernel cannot change on a live VXLAN device (VNI, port, local
address, parent, learning) are fixed by deleting and recreating it; MTU, MAC, addresses and
up-state are fixed in place. A recreate drops the routes through the device: the result says
``recreated`` so the agent resyncs the route programmer.

IPv6 uses a second device, ``vxlan-v6.tabby`` (MTU overhead 70 instead of 50), built by the
same code from a :class:`VXLANLocal` whose addresses are IPv6.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from felix_like.devices import (
    NUD_PERMANENT,
    DeviceError,
    TunnelResult,
    get_link,
    iproute,
    is_up,
    link_index,
    link_kind,
    parse_interface,
    sync_addresses,
)
from felix_like.routes import VXLAN_DEVICE, VXLAN_V6_DEVICE

log = structlog.get_logger("tabby.felix_like.vxlan")

DEFAULT_VNI = 4096
DEFAULT_PORT = 4789
#: Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
OVERHEAD_V4 = 50
#: Outer IPv6 header is 40 bytes instead of 20.
OVERHEAD_V6 = 70
AF_BRIDGE = 7
#: The kernel marks "self" FDB entries (the VXLAN device's own table, not a bridge's).
NTF_SELF = 0x02


def derive_vtep_mac(node_name: str, ipv6: bool = False) -> str:
    """The VTEP MAC of a node without ``vxlanTunnelMACAddr``: ``66`` + the first 5 bytes of sha1(name).

    Why this formula: it is Calico's (felix ``hardwareAddrForNode``), so a Tabby node and any
    tool that follows Calico agree on a node's MAC without storing it. 0x66 is a locally
    administered (bit 1 set) unicast (bit 0 clear) first octet. The IPv6 device hashes
    ``<name>-v6`` so the two devices of one node never share a MAC.
    """
    digest = hashlib.sha1((node_name + ("-v6" if ipv6 else "")).encode(), usedforsecurity=False).digest()
    return ":".join(f"{b:02x}" for b in (0x66, *digest[:5]))


def normalise_mac(mac: str) -> str:
    """Lower-case colon form (``aa:bb:cc:dd:ee:ff``) so MACs from YAML and from the kernel compare equal."""
    text = mac.strip().lower().replace("-", ":")
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    return ":".join(f"{int(p, 16):02x}" for p in parts)


@dataclass(frozen=True)
class VXLANLocal:
    """This node's VTEP: from Node.spec (ipv4VXLANTunnelAddr, vxlanTunnelMACAddr) and FelixConfiguration.

    ``node_ip`` is the underlay address (Node.spec.bgp.ipv4Address, CIDR or bare) and
    ``interface`` the NIC holding it (the device's parent). ``mac`` None means
    :func:`derive_vtep_mac`. ``mtu`` None means NIC MTU minus the overhead. All IPv6 addresses
    make this the ``vxlan-v6.tabby`` VTEP.
    """

    node_name: str
    node_ip: str
    interface: str
    tunnel_address: str
    mac: str | None = None
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    mtu: int | None = None

    @property
    def ipv6(self) -> bool:
        return parse_interface(self.node_ip).version == 6


@dataclass(frozen=True)
class RemoteVTEP:
    """Another node's VTEP as the datastore has it (MAC already derived by the agent when empty)."""

    node_name: str
    node_ip: str
    tunnel_address: str
    mac: str


@dataclass(frozen=True)
class VXLANDeviceSpec:
    """The desired device. ``address`` is the tunnel address with a host prefix."""

    name: str
    vni: int
    port: int
    local: str
    parent: str
    mtu: int
    mac: str
    address: str
    learning: bool = False


@dataclass(frozen=True, order=True)
class NeighEntry:
    """``<ip> lladdr <mac> nud permanent`` on the VXLAN device."""

    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class FDBEntry:
    """``<mac> dst <dst> self permanent`` on the VXLAN device."""

    mac: str
    dst: str


@dataclass(frozen=True)
class VXLANDesired:
    """Everything the manager makes true for one VXLAN device."""

    device: VXLANDeviceSpec
    neighbours: frozenset[NeighEntry]
    fdb: frozenset[FDBEntry]


def _addr(text: str) -> str:
    """A bare canonical address from a bare or CIDR string."""
    return str(parse_interface(text).ip)


def calculate_vxlan(local: VXLANLocal, remotes: Iterable[RemoteVTEP], nic_mtu: int) -> VXLANDesired:
    """The desired device and entries. Pure and deterministic.

    Remotes of the other address family, the local node itself, and remotes with unusable data
    are skipped (logged). When two remotes claim the same tunnel address or MAC, the one with the
    lowest node name wins (the datastore should never allow it; the kernel can hold only one).
    """
    v6 = local.ipv6
    overhead = OVERHEAD_V6 if v6 else OVERHEAD_V4
    mac = local_mac(local)
    device = VXLANDeviceSpec(
        name=VXLAN_V6_DEVICE if v6 else VXLAN_DEVICE,
        vni=local.vni,
        port=local.port,
        local=_addr(local.node_ip),
        parent=local.interface,
        mtu=local.mtu if local.mtu is not None else nic_mtu - overhead,
        mac=mac,
        address=str(parse_interface(local.tunnel_address)),
    )
    neighbours: dict[str, NeighEntry] = {}
    fdb: dict[str, FDBEntry] = {}
    for remote in sorted(remotes, key=lambda r: r.node_name):
        entries = remote_entries(local, mac, remote)
        if entries is None:
            continue
        neigh, fdb_entry = entries
        if neigh.ip in neighbours or fdb_entry.mac in fdb:
            log.warning("vxlan.remote_conflict", node=remote.node_name, vtep=neigh.ip, mac=fdb_entry.mac)
            continue
        neighbours[neigh.ip] = neigh
        fdb[fdb_entry.mac] = fdb_entry
    return VXLANDesired(device, frozenset(neighbours.values()), frozenset(fdb.values()))


def local_mac(local: VXLANLocal) -> str:
    return normalise_mac(local.mac) if local.mac else derive_vtep_mac(local.node_name, ipv6=local.ipv6)


def remote_entries(local: VXLANLocal, mac: str, remote: RemoteVTEP) -> tuple[NeighEntry, FDBEntry] | None:
    """The neighbour and FDB entry one remote VTEP needs on ``local``'s device (``mac``: its MAC), or
    None: the local node itself, the other address family, unusable data (logged), or the local MAC."""
    if remote.node_name == local.node_name:
        return None
    try:
        vtep_ip = parse_interface(remote.tunnel_address).ip
        node_ip = parse_interface(remote.node_ip).ip
        remote_mac = normalise_mac(remote.mac)
    except ValueError as exc:
        log.warning("vxlan.remote_skipped", node=remote.node_name, reason=str(exc))
        return None
    v6 = local.ipv6
    if (vtep_ip.version == 6) != v6 or (node_ip.version == 6) != v6:
        return None
    if remote_mac == mac:
        log.warning("vxlan.remote_conflict", node=remote.node_name, vtep=str(vtep_ip), mac=remote_mac)
        return None
    return NeighEntry(str(vtep_ip), remote_mac), FDBEntry(remote_mac, str(node_ip))


def _vtep_keys(vtep: RemoteVTEP) -> tuple[str, str]:
    """(tunnel address, MAC) as the kernel entries are keyed; raw text where it does not parse."""
    try:
        ip = str(parse_interface(vtep.tunnel_address).ip)
    except ValueError:
        ip = vtep.tunnel_address
    try:
        mac = normalise_mac(vtep.mac)
    except ValueError:
        mac = vtep.mac
    return ip, mac


class VTEPSet:
    """The remote VTEPs by node, indexed by tunnel address and MAC (the dataplane thread's copy).

    Why the indexes: a change of one node is applied as that node's two entries (O(1)), unless it
    touches an address or MAC that another node also claims; then which node wins is decided by
    :func:`calculate_vxlan` over all of them (the datastore should never allow it).
    """

    def __init__(self) -> None:
        self.by_node: dict[str, RemoteVTEP] = {}
        self._ip: dict[str, set[str]] = {}
        self._mac: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.by_node)

    def values(self) -> list[RemoteVTEP]:
        return list(self.by_node.values())

    def get(self, node: str) -> RemoteVTEP | None:
        return self.by_node.get(node)

    def set(self, node: str, vtep: RemoteVTEP | None) -> RemoteVTEP | None:
        """Set (None: remove) one node's VTEP; returns the previous one."""
        old = self.by_node.pop(node, None)
        if old is not None:
            ip, mac = _vtep_keys(old)
            self._ip[ip].discard(node)
            self._mac[mac].discard(node)
            if not self._ip[ip]:
                del self._ip[ip]
            if not self._mac[mac]:
                del self._mac[mac]
        if vtep is not None:
            self.by_node[node] = vtep
            ip, mac = _vtep_keys(vtep)
            self._ip.setdefault(ip, set()).add(node)
            self._mac.setdefault(mac, set()).add(node)
        return old

    def shared(self, node: str, vtep: RemoteVTEP | None) -> bool:
        """Does another node claim ``vtep``'s tunnel address or MAC?"""
        if vtep is None:
            return False
        ip, mac = _vtep_keys(vtep)
        return bool(self._ip.get(ip, set()) - {node} or self._mac.get(mac, set()) - {node})


class VXLANManager:
    """Keeps one namespace's VXLAN device (v4 or v6) equal to :func:`calculate_vxlan`'s answer.

    Stateless between calls on purpose: each :meth:`apply` reads the kernel, so hand edits,
    reboots and earlier failures are all repaired by the next call, and a no-op writes nothing.
    """

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._log = log.bind(netns=netns or "")

    def apply(self, local: VXLANLocal, remotes: Iterable[RemoteVTEP]) -> TunnelResult:
        """Reconcile device, addresses, neighbours and FDB. Never raises for kernel trouble: see ``error``."""
        v6 = local.ipv6
        result = TunnelResult(VXLAN_V6_DEVICE if v6 else VXLAN_DEVICE)
        try:
            with iproute(self.netns) as ipr:
                parent = link_index(ipr, local.interface)
                if parent is None:
                    raise DeviceError(f"parent interface {local.interface} not found")
                nic_mtu = int(get_link(ipr, parent).get("IFLA_MTU"))
                desired = calculate_vxlan(local, remotes, nic_mtu)
                index = self._sync_device(ipr, desired.device, parent, result)
                self._sync_neighbours(ipr, index, desired, result)
                self._sync_fdb(ipr, index, desired, result)
        except (DeviceError, NetlinkError, OSError, ValueError) as exc:
            result.error = str(exc)
            self._log.error("vxlan.failed", device=result.device, error=result.error, changes=result.changes)
            return result
        self._log.info(
            "vxlan.applied",
            device=result.device,
            changes=result.changes,
            writes=result.writes,
            recreated=result.recreated,
            neighbours=len(desired.neighbours),
            fdb=len(desired.fdb),
        )
        return result

    def apply_changes(self, local: VXLANLocal, vteps: VTEPSet, changed: dict[str, RemoteVTEP | None]) -> TunnelResult:
        """Apply what changed for the nodes in ``changed`` (node -> its VTEP before), against the
        device :meth:`apply` made: each node's neighbour and FDB entry written or deleted, nothing
        dumped, so a Node change is O(1) however many nodes there are. Falls back to :meth:`apply`
        (the full reconcile) when the device is missing or a change touches an address or MAC that
        another node also claims. Never raises for kernel trouble: see ``error``."""
        if any(vteps.shared(node, old) or vteps.shared(node, vteps.get(node)) for node, old in changed.items()):
            return self.apply(local, vteps.values())
        result = TunnelResult(VXLAN_V6_DEVICE if local.ipv6 else VXLAN_DEVICE)
        family = socket.AF_INET6 if local.ipv6 else socket.AF_INET
        mac = local_mac(local)
        try:
            with iproute(self.netns) as ipr:
                index = link_index(ipr, result.device)
                if index is None:
                    return self.apply(local, vteps.values())
                for node, old in sorted(changed.items()):
                    new = vteps.get(node)
                    before = remote_entries(local, mac, old) if old is not None else None
                    after = remote_entries(local, mac, new) if new is not None else None
                    if before == after:
                        continue
                    if before is not None and (after is None or after[0].ip != before[0].ip):
                        self._quiet(lambda e=before: ipr.neigh("del", dst=e[0].ip, ifindex=index, family=family))
                        result.writes += 1
                        result.changes.append(f"neigh-del {before[0].ip}")
                    if before is not None and (after is None or after[1].mac != before[1].mac):
                        self._quiet(lambda e=before: ipr.fdb("del", ifindex=index, lladdr=e[1].mac, dst=e[1].dst))
                        result.writes += 1
                        result.changes.append(f"fdb-del {before[1].mac} dst {before[1].dst}")
                    if after is not None:
                        neigh, fdb_entry = after
                        ipr.neigh("replace", dst=neigh.ip, lladdr=neigh.mac, ifindex=index, state=NUD_PERMANENT,
                                  family=family)
                        ipr.fdb("replace", ifindex=index, lladdr=fdb_entry.mac, dst=fdb_entry.dst,
                                state=NUD_PERMANENT, flags=NTF_SELF)
                        result.writes += 2
                        result.changes.append(f"vtep-set {node} {neigh.ip} {neigh.mac} dst {fdb_entry.dst}")
        except (NetlinkError, OSError, ValueError) as exc:
            result.error = str(exc)
            self._log.error("vxlan.failed", device=result.device, error=result.error, changes=result.changes)
            return result
        self._log.debug("vxlan.changes_applied", device=result.device, changes=result.changes, writes=result.writes)
        return result

    @staticmethod
    def _quiet(op: Callable[[], object]) -> None:
        """A delete of an entry that may be gone already (ENOENT/ESRCH: the goal is reached)."""
        try:
            op()
        except NetlinkError as exc:
            if exc.code not in (2, 3):
                raise

    def remove(self, ipv6: bool = False) -> TunnelResult:
        """Delete the device (no VXLAN pool left). Its neighbours, FDB entries and routes go with it."""
        result = TunnelResult(VXLAN_V6_DEVICE if ipv6 else VXLAN_DEVICE)
        try:
            with iproute(self.netns) as ipr:
                index = link_index(ipr, result.device)
                if index is not None:
                    ipr.link("del", index=index)
                    result.writes += 1
                    result.changes.append("deleted")
        except (NetlinkError, OSError) as exc:
            result.error = str(exc)
        self._log.info("vxlan.removed", device=result.device, changes=result.changes, error=result.error)
        return result

    # -- device -----------------------------------------------------------------------------

    @staticmethod
    def _mismatches(link, spec: VXLANDeviceSpec, parent: int) -> list[str]:  # type: ignore[no-untyped-def]
        """Attributes that can only be fixed by recreating the device."""
        if link_kind(link) != "vxlan":
            return [f"kind {link_kind(link)}"]
        data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
        local = data.get("IFLA_VXLAN_LOCAL6") if ":" in spec.local else data.get("IFLA_VXLAN_LOCAL")
        have = {
            "vni": data.get("IFLA_VXLAN_ID"),
            "port": data.get("IFLA_VXLAN_PORT"),
            "local": str(ipaddress.ip_address(local)) if local else None,
            "parent": data.get("IFLA_VXLAN_LINK"),
            "learning": bool(data.get("IFLA_VXLAN_LEARNING")),
        }
        want = {"vni": spec.vni, "port": spec.port, "local": spec.local, "parent": parent, "learning": spec.learning}
        return [f"{key} {have[key]}->{want[key]}" for key in want if have[key] != want[key]]

    def _create(self, ipr, spec: VXLANDeviceSpec, parent: int, result: TunnelResult) -> int:  # type: ignore[no-untyped-def]
        local_key = "vxlan_local6" if ":" in spec.local else "vxlan_local"
        ipr.link(
            "add",
            ifname=spec.name,
            kind="vxlan",
            vxlan_id=spec.vni,
            vxlan_port=spec.port,
            vxlan_link=parent,
            vxlan_learning=int(spec.learning),
            mtu=spec.mtu,
            address=spec.mac,
            **{local_key: spec.local},
        )
        result.writes += 1
        index = link_index(ipr, spec.name)
        if index is None:
            raise DeviceError(f"{spec.name} vanished right after creation")
        return index

    def _sync_device(self, ipr, spec: VXLANDeviceSpec, parent: int, result: TunnelResult) -> int:  # type: ignore[no-untyped-def]
        index = link_index(ipr, spec.name)
        if index is not None:
            wrong = self._mismatches(get_link(ipr, index), spec, parent)
            if wrong:
                self._log.warning("vxlan.recreate", device=spec.name, mismatches=wrong)
                ipr.link("del", index=index)
                result.writes += 1
                result.changes.append("recreate " + ", ".join(wrong))
                result.recreated = True
                index = None
        if index is None:
            index = self._create(ipr, spec, parent, result)
            if not result.recreated:
                result.changes.append("created")
        link = get_link(ipr, index)
        if link.get("IFLA_MTU") != spec.mtu:
            ipr.link("set", index=index, mtu=spec.mtu)
            result.writes += 1
            result.changes.append(f"mtu {link.get('IFLA_MTU')}->{spec.mtu}")
        mac = link.get("IFLA_ADDRESS")
        if mac is None or normalise_mac(mac) != spec.mac:
            ipr.link("set", index=index, address=spec.mac)
            result.writes += 1
            result.changes.append(f"mac {mac}->{spec.mac}")
        wanted = parse_interface(spec.address)
        family = socket.AF_INET6 if wanted.version == 6 else socket.AF_INET
        sync_addresses(ipr, index, spec.name, wanted, result, family)
        if not is_up(link):
            ipr.link("set", index=index, state="up")
            result.writes += 1
            result.changes.append("up")
        return index

    # -- neighbours and FDB -----------------------------------------------------------------

    def _sync_neighbours(self, ipr, index: int, desired: VXLANDesired, result: TunnelResult) -> None:  # type: ignore[no-untyped-def]
        family = socket.AF_INET6 if ":" in desired.device.local else socket.AF_INET
        have: dict[str, tuple[str | None, int]] = {}
        for msg in ipr.neigh("dump", family=family):
            if msg["ifindex"] != index or msg.get("NDA_DST") is None:
                continue
            dst = str(ipaddress.ip_address(msg.get("NDA_DST")))
            if family == socket.AF_INET6 and ipaddress.ip_address(dst).is_multicast:
                continue
            lladdr = msg.get("NDA_LLADDR")
            have[dst] = (normalise_mac(lladdr) if lladdr else None, msg["state"])
        want = {entry.ip: entry.mac for entry in desired.neighbours}
        for ip, mac in sorted(want.items()):
            current = have.get(ip)
            if current is not None and current[0] == mac and current[1] & NUD_PERMANENT:
                continue
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT, family=family)
            result.writes += 1
            result.changes.append(f"neigh-set {ip} {mac}")
        for ip in sorted(set(have) - set(want)):
            try:
                ipr.neigh("del", dst=ip, ifindex=index, family=family)
            except NetlinkError as exc:
                self._log.warning("vxlan.neigh_del_failed", device=desired.device.name, ip=ip, error=str(exc))
                continue
            result.writes += 1
            result.changes.append(f"neigh-del {ip}")

    def _sync_fdb(self, ipr, index: int, desired: VXLANDesired, result: TunnelResult) -> None:  # type: ignore[no-untyped-def]
        have: set[FDBEntry] = set()
        for msg in ipr.fdb("dump", ifindex=index):
            if msg["ifindex"] != index or msg.get("NDA_LLADDR") is None:
                continue
            dst = msg.get("NDA_DST")
            have.add(FDBEntry(normalise_mac(msg.get("NDA_LLADDR")), str(ipaddress.ip_address(dst)) if dst else ""))
        have_macs = {entry.mac for entry in have}
        for entry in sorted(desired.fdb - have):
            # replace: the kernel keeps one destination per unicast MAC (append adds more only to
            # the all-zeros and multicast MACs), so a moved node's entry is rewritten in place.
            ipr.fdb("replace", ifindex=index, lladdr=entry.mac, dst=entry.dst, state=NUD_PERMANENT, flags=NTF_SELF)
            result.writes += 1
            result.changes.append(f"fdb-set {entry.mac} dst {entry.dst}")
            if entry.mac in have_macs:
                have = {h for h in have if h.mac != entry.mac or h.dst == entry.dst}
                have.add(entry)
        for entry in sorted(have - desired.fdb):
            kwargs = {"dst": entry.dst} if entry.dst else {}
            try:
                ipr.fdb("del", ifindex=index, lladdr=entry.mac, **kwargs)
            except NetlinkError as exc:
                self._log.warning("vxlan.fdb_del_failed", device=desired.device.name, mac=entry.mac, error=str(exc))
                continue
            result.writes += 1
            result.changes.append(f"fdb-del {entry.mac} dst {entry.dst or '-'}")
