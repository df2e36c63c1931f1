"""Small shared helpers for the tunnel managers (VXLAN, IPIP): netlink handles, link facts, addresses.

Why a separate module: both tunnel managers open a pyroute2 handle inside the node's namespace,
read a link's MTU, and keep exactly one tunnel address on a device they own. Keeping those
steps here means both managers make the same decisions (e.g. which addresses count as "ours"
to remove) and report them with the same structlog keys.

Only pyroute2 is used (no ``ip`` subprocesses): the managers run on every datastore event and
must not fork for a no-op.
"""

from __future__ import annotations

import ipaddress
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from felix_like.netns import iproute as _netns_iproute

log = structlog.get_logger("tabby.felix_like.devices")

#: ``ifa_flags`` bit asking the kernel to skip duplicate address detection (linux/if_addr.h).
IFA_F_NODAD = 0x02
#: Neighbour state "permanent" (linux/neighbour.h): never aged out, never re-resolved.
NUD_PERMANENT = 0x80
#: Neighbour state "noarp": the kernel adds it to permanent FDB entries of VXLAN devices.
NUD_NOARP = 0x40

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class DeviceError(RuntimeError):
    """A device cannot be made right (missing kernel support, missing parent NIC, kernel refusal)."""


@dataclass
class TunnelResult:
    """What one reconcile pass of a tunnel manager did, for logs, the agent and tests.

    ``changes`` lists human-readable actions ("created", "mtu 1500->1450", "fdb-del ...") in the
    order they were made; ``writes`` counts mutating netlink requests (0 proves a no-op);
    ``recreated`` tells the agent that routes through the device were lost with it and the route
    programmer must resync; ``error`` is set (and the pass stopped) when the device cannot be
    made right.
    """

    device: str
    changes: list[str] = field(default_factory=list)
    writes: int = 0
    recreated: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def iproute(netns: str | None) -> AbstractContextManager[IPRoute]:
    """A pyroute2 handle whose socket lives in ``netns`` (None: the caller's namespace); always closed.

    Fork-free (see felix_like.netns): ``IPRoute(netns=...)`` forks, which crashes under gRPC threads.
    """
    return _netns_iproute(netns)


def link_index(ipr: IPRoute, name: str) -> int | None:
    """The ifindex of ``name`` or None when there is no such link."""
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def get_link(ipr: IPRoute, index: int):  # type: ignore[no-untyped-def]
    """The RTM_NEWLINK message of one link (pyroute2 message object)."""
    return ipr.link("get", index=index)[0]


def link_kind(link) -> str | None:  # type: ignore[no-untyped-def]
    """The rtnl link kind ("vxlan", "ipip", "veth", ...) or None for links without one (lo, physical)."""
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None


def is_up(link) -> bool:  # type: ignore[no-untyped-def]
    """True when the link is administratively up (IFF_UP)."""
    return bool(link["flags"] & 0x1)


def parse_interface(address: str, host: bool = True) -> IPInterface:
    """``address`` (bare or CIDR) as an interface; with ``host`` the prefix is forced to /32 or /128.

    Tunnel addresses are always host addresses (Calico's rule): a wider prefix on the tunnel
    device would add a connected route for the pool and steal traffic from block routes.
    """
    iface = ipaddress.ip_interface(address)
    if host:
        iface = ipaddress.ip_interface(f"{iface.ip}/{iface.max_prefixlen}")
    return iface


def sync_addresses(
    ipr: IPRoute, index: int, device: str, wanted: IPInterface | None, result: TunnelResult, family: int
) -> None:
    """Make ``wanted`` the only global address of ``family`` on a device Tabby owns.

    IPv6 link-local addresses (fe80::/10) are the kernel's own and stay. The new address is
    added before stale ones go, so a change of tunnel address never leaves the device without one.
    """
    have: list[IPInterface] = []
    for msg in ipr.get_addr(index=index, family=family):
        addr = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if addr is None:
            continue
        iface = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")
        if iface.version == 6 and iface.ip.is_link_local:
            continue
        have.append(iface)
    if wanted is not None and wanted not in have:
        kwargs = {}
        if wanted.version == 6:
            kwargs["IFA_FLAGS"] = IFA_F_NODAD  # a tunnel /128 has no neighbours to collide with
        ipr.addr("add", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen, **kwargs)
        result.writes += 1
        result.changes.append(f"addr-add {wanted}")
    for iface in have:
        if iface != wanted:
            try:
                ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            except NetlinkError as exc:
                log.warning("device.addr_del_failed", device=device, address=str(iface), error=str(exc))
                continue
            result.writes += 1
            result.changes.append(f"addr-del {iface}")
