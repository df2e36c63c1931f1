"""Feed felix_like's tunnel (VXLAN, IPIP) and NAT-outgoing managers from the snapshot.

Why a separate step from routes: these managers read the kernel and (for NAT) run ``nft``, so
they run in a worker thread, only when pools or nodes changed, at start (before the first route
resync: routes through ``vxlan.tabby``/``tunl0`` need the device) and on the periodic resync.
A VXLAN device that had to be re-created drops its routes: the caller then resyncs the routes.
Failures are logged and retried on the next pass; they never stop the agent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import structlog

from felix_like.forward import ForwardAccepts
from felix_like.ipip import IPIPConfig, IPIPManager
from felix_like.nat import NATManager, NATPool
from felix_like.vxlan import RemoteVTEP, VXLANLocal, VXLANManager, derive_vtep_mac

log = structlog.get_logger("tabby.node.tunnels")


def _bare(addr: str | None) -> str | None:
    return str(ipaddress.ip_interface(addr).ip) if addr else None


@dataclass(frozen=True)
class TunnelInputs:
    """Plain inputs for one pass (pure function of the snapshot)."""

    vxlan_local: VXLANLocal | None
    vxlan_remotes: tuple[RemoteVTEP, ...]
    ipip: IPIPConfig | None
    nat_pools: tuple[NATPool, ...]
    wants_nat: bool


def tunnel_inputs(
    nodename: str, nodes: dict[str, dict[str, Any]], pools: list[dict[str, Any]], encaps: set[str],
    node_ip: str | None, interface: str,
) -> TunnelInputs:
    me = (nodes.get(nodename) or {}).get("spec") or {}
    vx_local = None
    remotes: list[RemoteVTEP] = []
    if "vxlan" in encaps and me.get("ipv4VXLANTunnelAddr") and node_ip and interface:
        vx_local = VXLANLocal(
            node_name=nodename, node_ip=_bare(node_ip) or "", interface=interface,
            tunnel_address=me["ipv4VXLANTunnelAddr"], mac=me.get("vxlanTunnelMACAddr") or None,
        )
        for name, doc in sorted(nodes.items()):
            spec = doc.get("spec") or {}
            addr = _bare((spec.get("bgp") or {}).get("ipv4Address"))
            if name == nodename or not spec.get("ipv4VXLANTunnelAddr") or not addr:
                continue
            remotes.append(RemoteVTEP(name, addr, spec["ipv4VXLANTunnelAddr"],
                                      spec.get("vxlanTunnelMACAddr") or derive_vtep_mac(name)))
    ipip = None
    tunnel = (me.get("bgp") or {}).get("ipv4IPIPTunnelAddr")
    if "ipip" in encaps and tunnel and interface:
        ipip = IPIPConfig(tunnel_address=tunnel, interface=interface)
    nat = tuple(
        NATPool(str(ipaddress.ip_network((p.get("spec") or {})["cidr"], strict=False)),
                bool((p.get("spec") or {}).get("natOutgoing")))
        for p in pools if (p.get("spec") or {}).get("cidr")
    )
    return TunnelInputs(vx_local, tuple(remotes), ipip, nat, any(p.nat_outgoing for p in nat))


@dataclass
class TunnelManagers:
    """The managers of one node namespace, and what they applied last."""

    netns: str | None
    vxlan: VXLANManager = field(init=False)
    ipip: IPIPManager = field(init=False)
    nat: NATManager = field(init=False)
    forward: ForwardAccepts = field(init=False)
    vxlan_on: bool = False
    nat_on: bool = False
    last: TunnelInputs | None = None

    def __post_init__(self) -> None:
        self.vxlan = VXLANManager(self.netns)
        self.ipip = IPIPManager(self.netns)
        self.nat = NATManager(self.netns)
        self.forward = ForwardAccepts(self.netns)

    def apply(self, inputs: TunnelInputs, node: str) -> bool:
        """One pass (blocking: run in a thread). Returns True when routes must be resynced."""
        resync = False
        if inputs.vxlan_local is not None:
            res = self.vxlan.apply(inputs.vxlan_local, inputs.vxlan_remotes)
            self.vxlan_on = True
            resync = bool(res.recreated)
            if res.error:
                log.warning("tunnels.vxlan_failed", node=node, error=res.error)
        elif self.vxlan_on:
            self.vxlan.remove()
            self.vxlan_on = False
        if inputs.ipip is not None:
            res = self.ipip.apply(inputs.ipip)
            if res.error:
                log.warning("tunnels.ipip_failed", node=node, error=res.error)
        if inputs.wants_nat or self.nat_on:
            nres = self.nat.apply(list(inputs.nat_pools))
            self.nat_on = True
            if nres.error:
                log.warning("tunnels.nat_failed", node=node, error=nres.error)
        # A FORWARD policy DROP in another base chain (Docker's) would drop pod traffic: accept ours there.
        self.forward.apply()
        self.last = inputs
        return resync
