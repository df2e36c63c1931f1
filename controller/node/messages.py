"""The message boundary between the calculation graph and the dataplane managers.

Why typed messages (Felix's calc graph -> dataplane protobufs): the graph runs on the agent's event
loop and must never touch the kernel; the managers run on the dataplane thread and must never read
the datastore or the graph's indexes. Everything that crosses is one of these frozen values, so
each side can be tested alone and a slow kernel can never stall BGP or the CNI socket.
"""

from __future__ import annotations

from dataclasses import dataclass

from felix_like.ipip import IPIPConfig
from felix_like.nat import NATPool
from felix_like.netlink import Route
from felix_like.vxlan import RemoteVTEP, VXLANLocal


@dataclass(frozen=True)
class RouteUpdate:
    """The route wanted for ``dst`` now; ``route`` None = no route of ours for ``dst`` any more."""

    dst: str
    route: Route | None


@dataclass(frozen=True)
class VXLANUpdate:
    """This node's VTEP (None: no VXLAN pool wants it; the device is removed) and every remote VTEP."""

    local: VXLANLocal | None
    remotes: tuple[RemoteVTEP, ...]


@dataclass(frozen=True)
class IPIPUpdate:
    """tunl0's configuration (None: no IPIP pool wants it; tunl0 is left alone, as before)."""

    config: IPIPConfig | None


@dataclass(frozen=True)
class NATUpdate:
    """The pools and their natOutgoing flags; ``wanted``: any pool asks for NAT outgoing."""

    pools: tuple[NATPool, ...]
    wanted: bool


@dataclass(frozen=True)
class PolicyUpdate:
    """Changes of the policy table (controller/node/policy.py -> felix_like/policy.py): named sets
    with their full members (None: gone), policy chains with their rules (None: gone), and local
    interfaces with their (ingress, egress) policy chains (a None direction: not isolated; None for
    the pair: the interface is gone)."""

    sets: dict[str, tuple[str, frozenset[str]] | None]
    chains: dict[str, tuple[str, ...] | None]
    interfaces: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...] | None] | None]


@dataclass(frozen=True)
class InSync:
    """The graph has seen the first complete snapshot: the managers may apply (never before)."""


Message = RouteUpdate | VXLANUpdate | IPIPUpdate | NATUpdate | PolicyUpdate | InSync
