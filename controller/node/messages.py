"""The message boundary between the calculation graph and the dataplane managers.

Why typed messages (Felix's calc graph -> dataplane protobufs): the graph runs on the agent's event
loop and must never touch the kernel; the managers run on the dataplane thread and must never read
the datastore or the graph's indexes. Everything that crosses is one of these frozen values, so
each side can be tested alone and a slow kernel can never stall BGP or the CNI socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from felix_like.ipip import IPIPConfig
from felix_like.nat import NATPool
from felix_like.netlink import Route
from felix_like.policy import EndpointPlan, RefItems
from felix_like.vxlan import RemoteVTEP, VXLANLocal
from felix_like.workload import WorkloadSpec


@dataclass(frozen=True)
class RouteUpdate:
    """The route wanted for ``dst`` now; ``route`` None = no route of ours for ``dst`` any more."""

    dst: str
    route: Route | None


@dataclass(frozen=True)
class VXLANUpdate:
    """This node's VTEP (None: no VXLAN pool wants it; the device is removed)."""

    local: VXLANLocal | None


@dataclass(frozen=True)
class VTEPUpdate:
    """One remote node's VTEP now (None: the node is gone or has no usable VTEP).

    Per node, not the whole list: a Node change costs one message and the two kernel entries of
    that node (felix_like/vxlan.py ``VXLANManager.apply_changes``), not O(nodes) (issue 8)."""

    node: str
    vtep: RemoteVTEP | None


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
    interfaces with their (ingress, egress) endpoint plans (a None direction: no chain, the verdict
    map accepts; None for the pair: the interface is gone). ``chain_refs``: for each chain in
    ``chains``, the rule ids its log statements carry (the dataplane's ``rule_refs``)."""

    sets: dict[str, tuple[str, frozenset[str]] | None]
    chains: dict[str, tuple[str, ...] | None]
    interfaces: dict[str, tuple[EndpointPlan | None, EndpointPlan | None] | None]
    chain_refs: dict[str, RefItems | None] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadDeviceUpdate:
    """A local pod's interface: made as ``spec`` says (leftovers of a half-done earlier ADD replaced),
    or deleted (``spec`` None). Fast lane only (CNI ADD/DEL): written before the pod's policy and
    routes, in the same pass, by the workload manager on the dataplane thread."""

    host_ifname: str
    spec: WorkloadSpec | None


@dataclass(frozen=True)
class InSync:
    """The graph has seen the first complete snapshot: the managers may apply (never before)."""


Message = (RouteUpdate | VXLANUpdate | VTEPUpdate | IPIPUpdate | NATUpdate | PolicyUpdate | WorkloadDeviceUpdate
           | InSync)
