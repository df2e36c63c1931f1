"""The IPIP tunnel device: the ``ipip`` module's own ``tunl0``, given Tabby's tunnel address and MTU.

Why ``tunl0`` and not a device of our own: like Calico, Tabby routes ``<block> via <node> dev
tunl0 onlink``; ``tunl0`` is the catch-all (any local, any remote) IPIP device, so one device
serves every remote node, and the remote end is simply the route's gateway. It exists in a
namespace as soon as the ``ipip`` module is loaded (the kernel creates it in every namespace).

Why the manager never creates it: loading the module is a host decision (``modprobe ipip`` in
the node's image or boot config) and loading it creates ``tunl0`` in *every* namespace,
including the host's root namespace. When ``tunl0`` is missing the manager reports
:data:`MODULE_MISSING` and changes nothing; the agent logs it and keeps everything else going.

Owned: ``tunl0``'s IPv4 addresses (exactly the tunnel address /32 remains), its MTU (NIC MTU -
20 unless configured) and its up state. Its tunnel parameters are the module's and untouched.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from felix_like.devices import (
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
from felix_like.routes import IPIP_DEVICE

log = structlog.get_logger("tabby.felix_like.ipip")

#: Outer IPv4 header.
OVERHEAD = 20
MODULE_MISSING = "ipip kernel module not available (no tunl0 device; load it with `modprobe ipip`)"


@dataclass(frozen=True)
class IPIPConfig:
    """This node's IPIP settings: Node.spec.bgp.ipv4IPIPTunnelAddr and the NIC whose MTU sets ours.

    ``tunnel_address`` None removes the address (IPIP no longer used) but leaves ``tunl0`` up.
    ``mtu`` None means NIC MTU minus 20.
    """

    tunnel_address: str | None
    interface: str
    mtu: int | None = None


def desired_mtu(config: IPIPConfig, nic_mtu: int) -> int:
    """The MTU ``tunl0`` should have: configured, else the NIC's minus the outer IPv4 header."""
    return config.mtu if config.mtu is not None else nic_mtu - OVERHEAD


class IPIPManager:
    """Keeps one namespace's ``tunl0`` at the configured address, MTU and up. Stateless between calls."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._log = log.bind(netns=netns or "")

    def apply(self, config: IPIPConfig) -> TunnelResult:
        """Reconcile ``tunl0``. Never raises for kernel trouble: a missing module is ``error`` == MODULE_MISSING."""
        result = TunnelResult(IPIP_DEVICE)
        try:
            with iproute(self.netns) as ipr:
                index = link_index(ipr, IPIP_DEVICE)
                if index is None:
                    result.error = MODULE_MISSING
                    self._log.error("ipip.module_missing", device=IPIP_DEVICE, error=MODULE_MISSING)
                    return result
                link = get_link(ipr, index)
                if link_kind(link) != "ipip":
                    raise DeviceError(f"{IPIP_DEVICE} exists but is a {link_kind(link)} device, not ipip")
                nic = link_index(ipr, config.interface)
                if nic is None:
                    raise DeviceError(f"interface {config.interface} not found")
                mtu = desired_mtu(config, int(get_link(ipr, nic).get("IFLA_MTU")))
                if link.get("IFLA_MTU") != mtu:
                    ipr.link("set", index=index, mtu=mtu)
                    result.writes += 1
                    result.changes.append(f"mtu {link.get('IFLA_MTU')}->{mtu}")
                wanted = parse_interface(config.tunnel_address) if config.tunnel_address else None
                if wanted is not None and wanted.version != 4:
                    raise DeviceError(f"IPIP tunnel address must be IPv4, got {config.tunnel_address}")
                sync_addresses(ipr, index, IPIP_DEVICE, wanted, result, socket.AF_INET)
                if not is_up(link):
                    ipr.link("set", index=index, state="up")
                    result.writes += 1
                    result.changes.append("up")
        except (DeviceError, NetlinkError, OSError, ValueError) as exc:
            result.error = str(exc)
            self._log.error("ipip.failed", device=IPIP_DEVICE, error=result.error, changes=result.changes)
            return result
        self._log.info("ipip.applied", device=IPIP_DEVICE, changes=result.changes, writes=result.writes)
        return result
