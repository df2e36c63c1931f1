"""Helpers for IPAM against the session etcd: write pools, nodes and config as the resource API would."""

from __future__ import annotations

from typing import Any

from datastore import Datastore
from datastore.keys import resource_key


def pool_doc(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    v6 = ":" in cidr
    full = {
        "cidr": cidr,
        "blockSize": 122 if v6 else 26,
        "nodeSelector": "all()",
        "disabled": False,
        "allowedUses": ["Workload", "Tunnel"],
        "ipipMode": "Never",
        "vxlanMode": "Never",
        "natOutgoing": False,
        "disableBGPExport": False,
    }
    full.update(spec)
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name}, "spec": full}


async def add_pool(ds: Datastore, name: str, cidr: str, **spec: Any) -> None:
    await ds.put(resource_key("ippools", name), pool_doc(name, cidr, **spec))


async def add_node(ds: Datastore, name: str, labels: dict[str, str] | None = None) -> None:
    await ds.put(resource_key("nodes", name), {
        "apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}}, "spec": {},
    })
