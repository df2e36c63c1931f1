"""IPAM garbage collection, as calico-kube-controllers does it: slowly and safely.

Candidates (read at one datastore revision per cycle):

* ``workload``: an address allocated by the CNI plugin (its attributes name a namespace or a
  container) whose handle no WorkloadEndpoint names: a pod deleted without a DEL, or an ADD that
  crashed after allocating;
* ``tunnel``: an IPIP/VXLAN tunnel address of a node that has no Node resource;
* ``handle``: a handle record holding no address (left by a crashed ADD or release).

A candidate is remembered with the time it was first seen and the exact state seen (the
handle's addresses and their allocation sequence numbers, or the handle's mod_revision). It is
**confirmed** only when it was seen in that same state for ``grace`` seconds (Calico's
leakGracePeriod, default 15 minutes): a pod whose ADD is still running has its address without
a WorkloadEndpoint for a moment, and the grace period is what keeps it. Right before releasing,
the WorkloadEndpoints (or the Node) are read again, and the release itself is one transaction
that frees **all** of the handle's addresses and the handle or nothing, and only if the handle
still holds exactly the addresses with the sequence numbers judged leaked
(``IPAMClient.release_handle_if_unchanged``). Every release is logged
(``controller.gc_released``) and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from controller.cluster.nodes import ClusterView, read_view
from controller.node.inuse import allocations_from
from datamodel.resources.workloadendpoint import ANNOTATION_HANDLE
from datastore import Datastore
from datastore.keys import HANDLES
from ipam import IPAMClient
from ipam.block import ATTR_NODE, ATTR_TYPE
from ipam.model import TUNNEL_TYPES, handle_blocks

log = structlog.get_logger("tabby.controller.ipam_gc")

DEFAULT_GRACE = 900.0
WORKLOAD, TUNNEL, HANDLE = "workload", "tunnel", "handle"


@dataclass(frozen=True)
class Candidate:
    """One handle judged possibly leaked, and the exact state it was judged in."""

    handle_id: str
    reason: str
    ips: tuple[tuple[str, int | None], ...] = ()  # (ip, allocation sequence number)
    handle_revision: int = 0  # for HANDLE: the mod_revision of the empty handle record
    node: str = ""


@dataclass
class GCResult:
    candidates: int = 0
    confirmed: int = 0
    released_handles: list[str] = field(default_factory=list)
    released_ips: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def find_candidates(view: ClusterView) -> dict[str, Candidate]:
    """Pure: every possibly-leaked handle in one cycle's view (see the module docstring)."""
    weps = [doc for _kv, doc in view.weps]
    nodes = [doc for kv in view.nodes.values() if (doc := _doc(kv)) is not None]
    live_handles = set(allocations_from(weps, []).values())
    for doc in weps:  # a WorkloadEndpoint without ipNetworks still protects its handle
        handle = ((doc.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_HANDLE)
        if handle:
            live_handles.add(handle)
    node_names = {str((d.get("metadata") or {}).get("name", "")) for d in nodes}
    tunnel_types = set(TUNNEL_TYPES.values())

    per_handle: dict[str, list[tuple[str, int | None]]] = {}
    reasons: dict[str, tuple[str, str]] = {}
    held: set[str] = set()
    for block, _rev in view.blocks():
        for o in block.allocated_ordinals():
            hid = block.handle_of(o)
            if hid is None:
                continue  # an address without a handle: `ipam check` reports it; never freed blindly
            held.add(hid)
            attrs = block.secondary_of(o)
            node = attrs.get(ATTR_NODE, "")
            if attrs.get(ATTR_TYPE) in tunnel_types:
                if node and node not in node_names and node not in view.live:
                    per_handle.setdefault(hid, []).append((block.ip(o), block.seq_for_alloc.get(o)))
                    reasons[hid] = (TUNNEL, node)
                continue
            if not ("namespace" in attrs or "container" in attrs):
                continue  # not a CNI workload allocation (tabbyctl, IPAM-only users): not ours to judge
            if hid in live_handles:
                continue
            per_handle.setdefault(hid, []).append((block.ip(o), block.seq_for_alloc.get(o)))
            reasons[hid] = (WORKLOAD, node)
    out = {
        hid: Candidate(hid, reasons[hid][0], tuple(sorted(ips, key=lambda x: x[0])), node=reasons[hid][1])
        for hid, ips in per_handle.items()
    }
    for kv in view.ipam:
        if not kv.key.startswith(HANDLES):
            continue
        hid = kv.key[len(HANDLES):]
        if hid in held or hid in live_handles:
            continue
        try:
            handle_blocks(kv.json())
        except (ValueError, TypeError, AttributeError):
            continue  # unreadable: `ipam check` reports it
        out[hid] = Candidate(hid, HANDLE, handle_revision=kv.mod_revision)
    return out


def _doc(kv: object) -> dict | None:  # type: ignore[type-arg]
    try:
        doc = kv.json()  # type: ignore[attr-defined]
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class IpamGC:
    """Remember candidates across cycles, release the confirmed ones."""

    def __init__(
        self,
        ds: Datastore,
        ipam: IPAMClient,
        *,
        grace: float = DEFAULT_GRACE,
        count: Callable[[str, int], None] = lambda action, n: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ds = ds
        self.ipam = ipam
        self.grace = grace
        self.count = count
        self.clock = clock
        #: handle -> (candidate as first seen, when)
        self._seen: dict[str, tuple[Candidate, float]] = {}

    @property
    def pending(self) -> int:
        return len(self._seen)

    def forget(self) -> None:
        """Drop every candidate's first-seen time (GC turned off: when it comes back, each waits its
        full grace period again instead of being released at once)."""
        self._seen.clear()

    async def run_once(self, view: ClusterView | None = None) -> GCResult:
        view = view if view is not None else await read_view(self.ds)
        now = self.clock()
        found = find_candidates(view)
        # Forget candidates that are no longer candidates or changed (a new state restarts the clock).
        for hid in list(self._seen):
            if found.get(hid) != self._seen[hid][0]:
                self._seen.pop(hid)
        for hid, cand in found.items():
            self._seen.setdefault(hid, (cand, now))
        result = GCResult(candidates=len(found))
        confirmed = [(c, first) for c, first in sorted(self._seen.values(), key=lambda x: x[0].handle_id)
                     if now - first >= self.grace]
        if not confirmed:
            return result
        # Re-check right before releasing: a WorkloadEndpoint written since this cycle's read, a
        # Node that came back or a handle that changed takes the candidate off the list.
        again = find_candidates(await read_view(self.ds))
        for cand, first in confirmed:
            hid = cand.handle_id
            result.confirmed += 1
            self._seen.pop(hid, None)
            released = await self._release(cand) if again.get(hid) == cand else None
            if released is None:
                result.skipped.append(hid)
                self.count("gc_skipped", 1)
                log.info("controller.gc_skipped", handle=hid, reason=cand.reason, why="changed since judged leaked")
                continue
            result.released_handles.append(hid)
            result.released_ips.extend(released)
            self.count(f"gc_released_{cand.reason}", 1)
            self.count("gc_released_addresses", len(released))
            log.warning("controller.gc_released", handle=hid, reason=cand.reason, ips=released, node=cand.node,
                        leaked_for=round(now - first, 1))
        return result

    async def _release(self, cand: Candidate) -> list[str] | None:
        """All-or-none release against fresh reads of the handle and its blocks; None = left alone."""
        if cand.reason == HANDLE:
            ok = await self.ipam.delete_handle_if_empty(cand.handle_id, cand.handle_revision)
            return [] if ok else None
        return await self.ipam.release_handle_if_unchanged(cand.handle_id, dict(cand.ips))
