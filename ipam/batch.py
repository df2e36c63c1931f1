"""Group commit: concurrent IPv4 allocations on one node coalesced into one transaction per block.

Why: a node starting 30 pods at once would otherwise queue 30 allocations on the node's lock,
one etcd round trip each. Here the requests that arrive while a transaction is in flight are
gathered and committed together: ONE transaction carries the block (all of them allocated in it),
every request's handle (each compared: it must still be absent) and every request's extra ops
(the CNI handler's WorkloadEndpoint, each compared against its own revision). No timer: the batch
is whatever queued up during the previous commit, so a lone request pays nothing extra.

Exactly-once is kept the simple way: anything unusual leaves the fast path. A failed compare is
checked for "our own transaction landed" (the reply was lost); otherwise every request of that
transaction falls back to the one-request path (``Allocation.auto_assign``), which re-reads, claims
and borrows as before. A datastore error is raised to every request of that transaction, as the
one-request path would raise it to its caller: the outcome is unknown, and the caller reconciles
(``ips_by_handle``) the same way in both paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from datastore import Delete, Put, mod_is
from datastore.client import Compare
from datastore.keys import handle_key
from ipam._shared import _check_handle, block_key
from ipam.allocate import Allocation, ExtraOps
from ipam.block import ATTR_NODE, host_affinity
from ipam.errors import HandleInUse, IPAMError
from ipam.model import USE_WORKLOAD, AssignResult, handle_doc

log = structlog.get_logger("tabby.ipam")

MAX_BATCH = 64


@dataclass(eq=False)
class _Pending:
    """One queued request; ``fut`` gets the addresses, None (take the one-request path) or an error."""

    handle_id: str
    num: int
    secondary: dict[str, str]
    extra: ExtraOps | None
    new_handle: bool
    fut: asyncio.Future[list[str] | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Allocation):
    """auto_assign with concurrent IPv4-only requests of one node committed together."""

    def __init__(self, *args: Any, batching: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batching = batching  # off: every request is its own transaction (benchmarks compare both)
        self._batch_queues: dict[tuple[object, ...], list[_Pending]] = {}
        self._batch_tasks: dict[tuple[object, ...], asyncio.Task[None]] = {}
        self.grouped_requests = 0  # requests committed in a transaction shared with others (tests, benchmarks)

    async def auto_assign(
        self,
        *,
        node: str,
        handle_id: str,
        num_v4: int = 1,
        num_v6: int = 0,
        attrs: Mapping[str, str] | None = None,
        pools: Sequence[str] | None = None,
        use: str = USE_WORKLOAD,
        extra_ops: ExtraOps | None = None,
        new_handle: bool = False,
    ) -> AssignResult:
        """As :meth:`Allocation.auto_assign`; IPv4-only requests go through the group commit."""
        kwargs = {"node": node, "handle_id": handle_id, "num_v4": num_v4, "num_v6": num_v6, "attrs": attrs,
                  "pools": pools, "use": use, "extra_ops": extra_ops, "new_handle": new_handle}
        if not self.batching or num_v6 or num_v4 <= 0:
            return await super().auto_assign(**kwargs)  # type: ignore[arg-type]
        _check_handle(handle_id)
        secondary = {**(attrs or {})}
        secondary.setdefault(ATTR_NODE, node)
        key = (node, tuple(pools) if pools else None, use)
        queues, tasks = self._batch_queues, self._batch_tasks
        p = _Pending(handle_id, num_v4, secondary, extra_ops, new_handle)
        queues.setdefault(key, []).append(p)
        if key not in tasks:
            tasks[key] = asyncio.create_task(self._drain(key), name=f"ipam-group-commit-{node}")
        got = await p.fut
        if got is None:
            return await super().auto_assign(**kwargs)  # type: ignore[arg-type]
        return AssignResult(v4=got, v6=[])

    async def _drain(self, key: tuple[object, ...]) -> None:
        """Commit what is queued for ``key``, batch after batch, until the queue is empty."""
        queues, tasks = self._batch_queues, self._batch_tasks
        queue = queues[key]
        try:
            while queue:
                batch = queue[:MAX_BATCH]
                del queue[: len(batch)]
                try:
                    await self._commit(key, batch)
                except BaseException as exc:
                    for p in batch:
                        if not p.fut.done():
                            p.fut.set_exception(exc if isinstance(exc, Exception) else IPAMError(str(exc)))
                    if not isinstance(exc, Exception):
                        raise
        finally:
            del tasks[key]
            for p in queue:  # only if this task was cancelled: let the callers go the one-request way
                if not p.fut.done():
                    p.fut.set_result(None)
            queue.clear()

    async def _commit(self, key: tuple[object, ...], batch: list[_Pending]) -> None:
        node, wanted, use = key
        assert isinstance(node, str) and isinstance(use, str)
        live = [p for p in batch if not p.fut.done()]
        pools = await self._select_pools(4, node, wanted, use)  # type: ignore[arg-type]
        async with self._lock(node):
            for cidr in await self._affine_blocks(node, pools):
                if not live:
                    break
                block, _ = await self._block(cidr)
                if block is None or block.deleted or block.affinity != host_affinity(node) or not block.free:
                    continue
                reserved = block.ordinals_within(await self._reserved_networks())
                room = block.free - sum(1 for o in block.unallocated if o in reserved) if reserved else block.free
                take = []
                for p in live:
                    if p.num <= room:
                        take.append(p)
                        room -= p.num
                if take:
                    await self._commit_block(cidr, take)
                    live = [p for p in live if p not in take]
        for p in live:  # no affine block with room (or none cached): claim/borrow the usual way
            if not p.fut.done():
                p.fut.set_result(None)

    async def _commit_block(self, cidr: str, take: list[_Pending]) -> None:
        """ONE transaction: the block with every request's addresses, each handle, each extra op."""
        block, brev = await self._block(cidr)
        if block is None:
            for p in take:
                p.fut.set_result(None)
            return
        new = block.copy()
        reserved = block.ordinals_within(await self._reserved_networks())  # IPReservations: never auto-assigned
        compares: list[Compare] = [mod_is(block_key(cidr), brev)]
        ops: list[Put | Delete] = []
        members: list[tuple[_Pending, list[int], int, dict[str, int]]] = []
        for p in take:
            hblocks, hrev = await self._handle(p.handle_id, assume_new=True)
            if hblocks:
                if p.new_handle:
                    p.fut.set_exception(HandleInUse(f"handle {p.handle_id} already holds addresses"))
                else:
                    p.fut.set_result(None)  # a handle that grows: the one-request path
                continue
            ords = new.allocate(p.num, p.handle_id, p.secondary, skip=reserved)
            if len(ords) < p.num:  # cannot happen (room counts reservations); if it does, no batch here
                for q in take:
                    if not q.fut.done():
                        q.fut.set_result(None)
                return
            ips = [new.ip(o) for o in ords]
            if p.extra is not None:
                try:
                    ec, eo = await p.extra(ips, False)
                except Exception as exc:
                    # Its addresses are taken in ``new`` already: give up this block's batch.
                    p.fut.set_exception(exc)
                    for q in take:
                        if not q.fut.done():
                            q.fut.set_result(None)
                    return
                compares += ec
                ops += eo
            newh = {cidr: len(ords)}
            compares.append(mod_is(handle_key(p.handle_id), hrev))
            ops.append(Put(handle_key(p.handle_id), handle_doc(p.handle_id, newh)))
            members.append((p, ords, new.sequence_number, newh))
        if not members:
            return
        ops.insert(0, Put(block_key(cidr), new.to_json()))
        handles = [p.handle_id for p, *_ in members]
        try:
            res = await self.ds.txn(compares, ops)
        except BaseException:
            self._forget([cidr], handles)  # outcome unknown: the callers reconcile, as on the one-request path
            raise
        if res.succeeded:
            self._cache_block(cidr, new, res.revision)
            for p, ords, _seq, newh in members:
                self._cache_handle(p.handle_id, newh, res.revision)
                p.fut.set_result([new.ip(o) for o in ords])
            if len(members) > 1:
                self.grouped_requests += len(members)
                log.debug("ipam.group_commit", block=cidr, requests=len(members))
            return
        self._forget([cidr], handles)
        cur, _ = await self._read_block(cidr)
        landed = cur is not None and all(
            cur.handle_of(o) == p.handle_id and cur.seq_for_alloc.get(o) == seq
            for p, ords, seq, _ in members for o in ords
        )
        for p, ords, _seq, _ in members:
            if landed:
                p.fut.set_result([cur.ip(o) for o in ords])  # type: ignore[union-attr]
            else:
                p.fut.set_result(None)  # lost a race: the one-request path re-reads and retries
        if landed:
            log.info("ipam.group_commit_landed_on_retry", block=cidr, requests=len(members))
