"""Datastore seeding for the controller tests: pools, Nodes and pods written as the agent writes them."""

from __future__ import annotations

from typing import Any

from datamodel.resources.workloadendpoint import ANNOTATION_HANDLE, ANNOTATION_NETWORK
from datastore import Datastore, staged
from datastore.keys import resource_key
from ipam import IPAMClient

NETWORK = "k8s-pod-network"
#: the intent id the staging helpers use
INTENT = "0123456789abcdef0123456789abcdef"


def pool_doc(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    full = {"cidr": cidr, "blockSize": 26, "nodeSelector": "all()", "disabled": False,
            "allowedUses": ["Workload", "Tunnel"], "ipipMode": "Never", "vxlanMode": "Never",
            "natOutgoing": False, "disableBGPExport": False}
    full.update(spec)
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name}, "spec": full}


async def add_pool(ds: Datastore, name: str, cidr: str, **spec: Any) -> None:
    await ds.put(resource_key("ippools", name), pool_doc(name, cidr, **spec))


async def add_node(ds: Datastore, name: str, annotations: dict[str, str] | None = None) -> None:
    await ds.put(resource_key("nodes", name), {
        "apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": name, "annotations": annotations or {}}, "spec": {},
    })


def wep_key(node: str, container: str) -> str:
    return resource_key("workloadendpoints", f"{node}-cni-{container}-eth0", "default")


async def allocate_pod(ipam: IPAMClient, node: str, container: str) -> str:
    """The ADD's IPAM step, with the attributes the agent writes (controller/node/cni_handlers.py)."""
    res = await ipam.auto_assign(node=node, handle_id=f"{NETWORK}.{container}", num_v4=1,
                                 attrs={"node": node, "namespace": "default", "pod": "", "container": container})
    return res.v4[0]


async def write_wep(ds: Datastore, node: str, container: str, ip: str) -> None:
    """The ADD's last step: the WorkloadEndpoint naming the handle."""
    await ds.put(wep_key(node, container), {
        "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{node}-cni-{container}-eth0", "namespace": "default",
                     "annotations": {ANNOTATION_HANDLE: f"{NETWORK}.{container}", ANNOTATION_NETWORK: NETWORK}},
        "spec": {"node": node, "orchestrator": "cni", "endpoint": "eth0", "containerID": container,
                 "interfaceName": f"tab{container[:11]}", "ipNetworks": [f"{ip}/32"]},
    })


async def stage(ds: Datastore, key: str, new: dict[str, Any] | None, state: str, intent: str = INTENT) -> bytes:
    """Put ``key`` under a staging envelope of ``intent`` (its previous value kept in it), as a large
    ``tabbyctl apply`` does, with the intent's record in ``state``; returns the envelope bytes."""
    old = await ds.get(key)
    op = staged.StagedOp(key, new, old.mod_revision if old else 0, old.value if old else None)
    envelope = staged._encode_op(op, intent).envelope
    await ds.put(key, envelope)
    await ds.put(staged.RECORDS + intent, {"intent": intent, "state": state, "keys": 1})
    return envelope
