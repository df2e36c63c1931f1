"""Node lifecycle: expire Nodes whose agent is gone, clean up after deleted Nodes.

What the controller does, and why each rule is safe:

* **Expiry** (off unless ``node_grace`` > 0): a Node carrying ``tabby.io/liveness-ttl`` (its
  agent keeps a liveness lease, controller/node/liveness.py) whose ``nodestatus/live/<node>``
  key has been absent for longer than ``node_grace`` is deleted (compare on mod_revision). A
  Node written by hand, without the annotation, is never expired.
* **Cleanup** of a node that has no Node resource but still owns something in the datastore
  (block affinities, blocks affine to it, tunnel addresses, WorkloadEndpoints): only once the
  Node has been absent AND its agent not alive for ``cleanup_delay`` (an agent whose Node is
  deleted by hand registers again at once and keeps its pods). Then, as libcalico-go's node
  deletion does: its WorkloadEndpoints are deleted (their addresses become garbage the IPAM GC
  frees after its grace period), its tunnel addresses released, its affinities released
  (empty blocks deleted; non-empty blocks keep their addresses without affinity), and empty
  blocks affine to no node deleted so the pool can hand them out again.
* BGP and routes need no action here: every agent computes its mesh peers from the Node
  resources and routes from blocks and BGP, so a deleted Node leaves the mesh and its routes are
  withdrawn by the other nodes on their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from controller.node.liveness import ANNOTATION_LIVENESS
from datastore import KV, Datastore, Delete, mod_is, staged
from datastore.keys import BLOCKS, IPAM, LIVENESS, resource_key, resource_prefix
from ipam import IPAMClient
from ipam.block import Block, BlockFormatError
from ipam.model import TUNNEL_TYPES

log = structlog.get_logger("tabby.controller.nodes")

TUNNEL_HANDLES = tuple(f"{kind}-tunnel-addr-" for kind in TUNNEL_TYPES)


@dataclass
class ClusterView:
    """One cycle's reads: Nodes, live agents, WorkloadEndpoints and the IPAM keys."""

    nodes: dict[str, KV] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    weps: list[tuple[KV, dict[str, Any]]] = field(default_factory=list)
    ipam: list[KV] = field(default_factory=list)
    ipam_revision: int = 0
    #: Node and endpoint keys a large apply holds staged: read as their visible value, never written
    busy: set[str] = field(default_factory=set)

    def blocks(self) -> list[tuple[Block, int]]:
        out = []
        for kv in self.ipam:
            if kv.key.startswith(BLOCKS):
                try:
                    out.append((Block.from_json(json.loads(kv.value)), kv.mod_revision))
                except (ValueError, BlockFormatError):
                    continue
        return out

    def referenced_nodes(self) -> set[str]:
        """Every node name something in the datastore belongs to."""
        out: set[str] = set()
        for kv in self.ipam:
            rest = kv.key[len(IPAM):]
            if rest.startswith("affinity/"):
                out.add(rest[len("affinity/"):].rpartition("/")[0])
            elif rest.startswith("handle/"):
                hid = rest[len("handle/"):]
                for prefix in TUNNEL_HANDLES:
                    if hid.startswith(prefix):
                        out.add(hid[len(prefix):])
        for block, _ in self.blocks():
            if block.node:
                out.add(block.node)
        for _kv, doc in self.weps:
            node = (doc.get("spec") or {}).get("node")
            if node:
                out.add(node)
        out.discard("")
        return out


async def read_view(ds: Datastore) -> ClusterView:
    view = ClusterView()
    # Resources as readers must see them: a large apply's staged values as their previous value until it
    # commits (a raw read took a staged endpoint for one without a node, and a staged create for a Node
    # that exists). Staged keys are also kept out of every delete below: an intent holds them.
    nodes_raw, _ = await ds.list(resource_prefix("nodes"))
    weps_raw, _ = await ds.list(resource_prefix("workloadendpoints"))
    view.busy = {kv.key for kv in (*nodes_raw, *weps_raw) if staged.kv_is_staged(kv)}
    nodes, weps = nodes_raw, weps_raw
    if view.busy:
        states = await staged.intent_states(ds)
        nodes = [r for kv in nodes_raw if (r := staged.resolve_kv(kv, states)) is not None]
        weps = [r for kv in weps_raw if (r := staged.resolve_kv(kv, states)) is not None]
    view.nodes = {kv.key[len(resource_prefix("nodes")):]: kv for kv in nodes}
    live, _ = await ds.list(LIVENESS)
    view.live = {kv.key[len(LIVENESS):] for kv in live}
    view.weps = [(kv, doc) for kv in weps if (doc := _json(kv)) is not None]
    view.ipam, view.ipam_revision = await ds.list(IPAM)
    return view


def _json(kv: KV) -> dict[str, Any] | None:
    try:
        doc = json.loads(kv.value)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class NodeLifecycle:
    """Expiry and cleanup, one :meth:`reconcile` per controller cycle."""

    def __init__(
        self,
        ds: Datastore,
        ipam: IPAMClient,
        *,
        node_grace: float = 0.0,
        cleanup_delay: float = 30.0,
        count: Callable[[str, int], None] = lambda action, n: None,
    ) -> None:
        self.ds = ds
        self.ipam = ipam
        self.node_grace = node_grace
        self.cleanup_delay = cleanup_delay
        self.count = count
        #: node -> monotonic time its agent was first seen not alive (marked Nodes only)
        self._silent_since: dict[str, float] = {}
        #: node -> monotonic time it was first seen without a Node resource and without a live agent
        self._gone_since: dict[str, float] = {}

    async def reconcile(self, view: ClusterView, now: float) -> list[str]:
        """Expire silent Nodes, clean up gone ones; returns the nodes cleaned up this cycle."""
        await self._expire(view, now)
        cleaned = []
        referenced = view.referenced_nodes()
        gone = {n for n in referenced if n not in view.nodes and n not in view.live}
        for name in list(self._gone_since):
            if name not in gone:
                self._gone_since.pop(name)
        for name in sorted(gone):
            first = self._gone_since.setdefault(name, now)
            if now - first < self.cleanup_delay:
                continue
            if await self._still_gone(name):
                await self.cleanup(name, view)
                cleaned.append(name)
        await self._delete_orphan_blocks(view)
        return cleaned

    async def _expire(self, view: ClusterView, now: float) -> None:
        for name in list(self._silent_since):
            if name in view.live or name not in view.nodes:
                self._silent_since.pop(name)
        if self.node_grace <= 0:
            return
        for name, kv in sorted(view.nodes.items()):
            ann = ((_json(kv) or {}).get("metadata") or {}).get("annotations") or {}
            if ANNOTATION_LIVENESS not in ann or name in view.live or kv.key in view.busy:
                continue
            first = self._silent_since.setdefault(name, now)
            if now - first < self.node_grace:
                continue
            # Re-check right before acting: the agent may have come back this instant.
            if await self.ds.get(LIVENESS + name) is not None:
                self._silent_since.pop(name, None)
                continue
            res = await self.ds.txn([mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
            if res.succeeded:
                log.warning("controller.node_expired", node=name, silent_for=round(now - first, 1),
                            grace=self.node_grace)
                self.count("node_expired", 1)
                view.nodes.pop(name, None)
                self._silent_since.pop(name, None)

    async def _still_gone(self, name: str) -> bool:
        return (await self.ds.get(resource_key("nodes", name)) is None
                and await self.ds.get(LIVENESS + name) is None)

    async def cleanup(self, name: str, view: ClusterView) -> None:
        """Everything a deleted node leaves behind (see the module docstring)."""
        bound = log.bind(node=name)
        weps = 0
        for kv, doc in view.weps:
            if (doc.get("spec") or {}).get("node") != name or kv.key in view.busy:
                continue
            res = await self.ds.txn([mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
            if res.succeeded:
                weps += 1
        tunnels: list[str] = []
        for prefix in TUNNEL_HANDLES:
            tunnels += await self.ipam.release_by_handle(prefix + name)
        released = await self.ipam.release_host_affinities(name)
        if weps or tunnels or released.released or released.unaffined:
            bound.info("controller.node_cleaned", workload_endpoints=weps, tunnel_addresses=tunnels,
                       blocks_released=released.released, blocks_unaffined=released.unaffined)
        self.count("workload_endpoints_deleted", weps)
        self.count("tunnel_addresses_released", len(tunnels))
        self.count("blocks_released", len(released.released))
        self.count("blocks_unaffined", len(released.unaffined))

    async def _delete_orphan_blocks(self, view: ClusterView) -> None:
        """Empty blocks affine to no node (a deleted node's, once its addresses were freed)."""
        for block, _rev in view.blocks():
            if block.is_empty and block.affinity is None and await self.ipam.delete_empty_unaffined_block(block.cidr):
                self.count("blocks_released", 1)
