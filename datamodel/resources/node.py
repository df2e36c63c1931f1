"""Node: one host of the cluster, its BGP identity and tunnel addresses.

`spec.bgp.ipv4Address` is an address *with its prefix length* ("10.0.0.1/24"): CrossSubnet
encapsulation decides "same subnet" from it, so host bits are expected here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from datamodel.resources.common import (
    CIDR,
    DEFAULT_AS_NUMBER,
    ASNumber,
    CalicoModel,
    CIDRv4,
    CIDRv6,
    IPv4Addr,
    IPv6Addr,
    MACAddr,
    Resource,
)
from datamodel.resources.errors import Problems


class NodeBGPSpec(CalicoModel):
    """spec.bgp: the node's BGP addresses, AS and route-reflector cluster ID."""

    asNumber: ASNumber | None = None
    ipv4Address: CIDRv4 | None = None
    ipv6Address: CIDRv6 | None = None
    ipv4IPIPTunnelAddr: IPv4Addr | None = None
    routeReflectorClusterID: IPv4Addr | None = None


class NodeAddress(CalicoModel):
    """One of the node's addresses and where it came from."""

    address: CIDR
    type: Literal["CalicoNodeIP", "InternalIP", "ExternalIP"] | None = None


class OrchRef(CalicoModel):
    """Which orchestrator knows this node, and under what name."""

    orchestrator: str
    nodeName: str | None = None


class NodeWireguardSpec(CalicoModel):
    """WireGuard interface addresses (accepted for compatibility; Tabby does not run WireGuard)."""

    interfaceIPv4Address: IPv4Addr | None = None
    interfaceIPv6Address: IPv6Addr | None = None


class NodeSpec(CalicoModel):
    """spec of a Node."""

    bgp: NodeBGPSpec | None = None
    ipv4VXLANTunnelAddr: IPv4Addr | None = None
    vxlanTunnelMACAddr: MACAddr | None = None
    ipv6VXLANTunnelAddr: IPv6Addr | None = None
    vxlanTunnelMACAddrV6: MACAddr | None = None
    orchRefs: list[OrchRef] | None = None
    addresses: list[NodeAddress] | None = None
    wireguard: NodeWireguardSpec | None = None

    @model_validator(mode="after")
    def _rules(self) -> NodeSpec:
        problems = Problems()
        if self.bgp is not None and not self.bgp.model_dump(exclude_none=True):
            problems.add("bgp", "must not be empty (omit spec.bgp instead)")
        problems.raise_if_any()
        return self


class Node(Resource):
    """projectcalico.org/v3 Node (cluster-scoped). `status` is free-form and read-only."""

    KIND: ClassVar[str] = "Node"
    PLURAL: ClassVar[str] = "nodes"
    ALIASES: ClassVar[tuple[str, ...]] = ("node", "nodes", "no", "nos")

    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: dict[str, Any] | None = None

    def ps_row(self) -> dict[str, str]:
        return {"NAME": self.name}

    def wide_row(self, default_asn: int | str = DEFAULT_AS_NUMBER) -> dict[str, str]:
        """calicoctl prints the global AS in parentheses when the node has none of its own;
        pass the cluster's BGPConfiguration asNumber as `default_asn` when it is not 64512."""
        bgp = self.spec.bgp
        asn = ""
        if bgp is not None:
            asn = str(bgp.asNumber) if bgp.asNumber is not None else f"({default_asn})"
        return {
            "NAME": self.name,
            "ASN": asn,
            "IPV4": (bgp.ipv4Address or "") if bgp else "",
            "IPV6": (bgp.ipv6Address or "") if bgp else "",
        }
