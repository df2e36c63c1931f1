"""What is really using addresses: the live set ``ipam check`` compares allocations against.

Why from the datastore and not from kernels: every workload the agents plumbed is recorded as
a WorkloadEndpoint (with its IPAM handle in the ``tabby.io/handle`` annotation), and every
tunnel address in its Node; an allocation that neither explains is a leak candidate.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from datamodel.resources.workloadendpoint import ANNOTATION_HANDLE
from datastore import staged
from datastore.keys import resource_prefix

DEFAULT_NETWORK = "k8s-pod-network"


def allocations_from(weps: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> dict[str, str]:
    """ip -> handle id, from WorkloadEndpoint and Node documents. Pure."""
    out: dict[str, str] = {}
    for wep in weps:
        spec = wep.get("spec") or {}
        ann = (wep.get("metadata") or {}).get("annotations") or {}
        handle = ann.get(ANNOTATION_HANDLE) or f"{DEFAULT_NETWORK}.{spec.get('containerID', '')}"
        for net in spec.get("ipNetworks") or []:
            try:
                out[str(ipaddress.ip_interface(net).ip)] = handle
            except ValueError:
                continue
    for node in nodes:
        name = (node.get("metadata") or {}).get("name", "")
        spec = node.get("spec") or {}
        ipip = (spec.get("bgp") or {}).get("ipv4IPIPTunnelAddr")
        if ipip:
            out[str(ipaddress.ip_address(ipip))] = f"ipip-tunnel-addr-{name}"
        vxlan = spec.get("ipv4VXLANTunnelAddr")
        if vxlan:
            out[str(ipaddress.ip_address(vxlan))] = f"vxlan-tunnel-addr-{name}"
    return out


async def live_allocations(ds: Any) -> dict[str, str]:
    """ip -> handle of every address a live workload or tunnel uses (for ``tabbyctl ipam check``)."""
    # Staged values (a large apply in flight, or committed and not yet cleaned up) as readers see them.
    weps, _ = await staged.read_resolved(ds, resource_prefix("workloadendpoints"))
    nodes, _ = await staged.read_resolved(ds, resource_prefix("nodes"))

    def docs(kvs: list[Any]) -> list[dict[str, Any]]:
        out = []
        for kv in kvs:
            try:
                value = json.loads(kv.value)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    return allocations_from(docs(weps), docs(nodes))
