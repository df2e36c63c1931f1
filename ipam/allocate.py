"""Allocation: auto_assign (affine blocks, then new claims, then borrowing), specific addresses, tunnels."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog

from datastore import Conflict, Delete, Put, mod_is, retry_on_conflict
from datastore.client import Compare
from datastore.keys import handle_key
from ipam._shared import _check_handle, _HandleExists, _parse_ip, block_key
from ipam.block import ATTR_NODE, ATTR_TYPE, block_cidr_for, host_affinity
from ipam.errors import HandleInUse, IPAlreadyAllocated, IPAMError, IPNotInPool, PoolsExhausted
from ipam.model import TUNNEL_TYPES, USE_TUNNEL, USE_WORKLOAD, AssignResult, Pool, handle_doc
from ipam.release import Releases

log = structlog.get_logger("tabby.ipam")

# Extra writes that must land in the SAME transaction as the allocation (the CNI handler's
# WorkloadEndpoint): called with every address of the request and ``fresh`` (True after a failed
# compare: re-read what the compares are based on), it returns (compares, ops).
ExtraOps = Callable[[list[str], bool], Awaitable[tuple[list[Compare], list[Put | Delete]]]]


class _Extra:
    """The caller's extra ops and whether they have been committed yet (they ride on the last txn)."""

    def __init__(self, build: ExtraOps, before: list[str]) -> None:
        self.build = build
        self.before = before  # addresses of the request committed in earlier transactions
        self.done = False


class Allocation(Releases):
    """Allocating addresses."""

    # -- allocation ----------------------------------------------------------------------
    def _lock(self, node: str) -> asyncio.Lock:
        lock = self._node_locks.get(node)
        if lock is None:
            lock = self._node_locks[node] = asyncio.Lock()
        return lock

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
        """Allocate ``num_v4`` + ``num_v6`` addresses for ``handle_id`` on ``node``.

        Order, as in Calico: blocks affine to the node; then a newly claimed block (if
        autoAllocateBlocks and under maxBlocksPerHost); then, with strictAffinity false, free
        addresses in other nodes' blocks. All-or-nothing: if the second family fails the
        first is released again.

        ``extra_ops`` (see :data:`ExtraOps`) are written in the transaction that completes the
        request, so e.g. a WorkloadEndpoint and its address become visible together or not at all.
        ``new_handle``: the handle must not hold addresses yet (raise :class:`HandleInUse`
        otherwise) -- lets a caller that expects a fresh handle skip reading it first.
        """
        _check_handle(handle_id)
        if num_v4 < 0 or num_v6 < 0:
            raise IPAMError("the number of addresses to assign must not be negative")
        secondary = {**(attrs or {})}
        secondary.setdefault(ATTR_NODE, node)
        v4: list[str] = []
        v6: list[str] = []
        extra = _Extra(extra_ops, []) if extra_ops is not None else None
        try:
            try:
                if num_v4:
                    v4 = await self._assign_family(4, num_v4, node, handle_id, secondary, pools, use,
                                                   handle_must_be_new=new_handle,
                                                   extra=None if num_v6 else extra)
                if num_v6:
                    if extra is not None:
                        extra.before = list(v4)
                    v6 = await self._assign_family(6, num_v6, node, handle_id, secondary, pools, use,
                                                   handle_must_be_new=new_handle and not v4, extra=extra)
            except _HandleExists:
                raise HandleInUse(f"handle {handle_id} already holds addresses") from None
            if extra is not None and not extra.done:
                await self._write_extra(extra, [*v4, *v6])  # nothing allocated (0 + 0 addresses)
        except Exception:
            if v4 or v6:
                await self.release_ips([*v4, *v6], handle_id=handle_id)
            raise
        return AssignResult(v4=v4, v6=v6)

    async def _write_extra(self, extra: _Extra, ips: list[str]) -> None:
        async def step() -> None:
            compares, ops = await extra.build(ips, step_no[0] > 0)
            step_no[0] += 1
            if ops and not (await self.ds.txn(compares, ops)).succeeded:
                raise Conflict
            extra.done = True

        step_no = [0]
        await retry_on_conflict(step, attempts=self.conflict_attempts, what="write the allocation's extra records")

    async def _assign_family(
        self,
        version: int,
        num: int,
        node: str,
        handle_id: str,
        secondary: dict[str, str],
        wanted: Sequence[str] | None,
        use: str,
        *,
        handle_must_be_new: bool = False,
        extra: _Extra | None = None,
    ) -> list[str]:
        pools = await self._select_pools(version, node, wanted, use)
        got: list[str] = []
        async with self._lock(node):
            try:
                await self._fill(got, num, version, node, handle_id, secondary, pools, handle_must_be_new, extra)
            except Exception:
                if got:
                    await self.release_ips(got, handle_id=handle_id)
                raise
        return got

    async def _fill(
        self,
        got: list[str],
        num: int,
        version: int,
        node: str,
        handle_id: str,
        secondary: dict[str, str],
        pools: list[Pool],
        handle_must_be_new: bool,
        extra: _Extra | None = None,
    ) -> None:
        """Append addresses to ``got`` until it holds ``num`` (or raise PoolsExhausted)."""

        async def take(cidr: str, affine_to: str | None) -> None:
            must_be_new = handle_must_be_new and not got
            got.extend(await self._alloc_in_block(cidr, num - len(got), node, handle_id, secondary,
                                                  affine_to=affine_to, handle_must_be_new=must_be_new,
                                                  extra=extra, got=got))

        # 1. Blocks affine to this node: as cached first; if they are full, as stored now
        #    (another client may have claimed a block for this node or freed addresses).
        for refresh in (False, True):
            cidrs = await self._affine_blocks(node, pools, refresh=refresh)
            if refresh:
                self._forget(cidrs)
            for cidr in cidrs:
                await take(cidr, node)
                if len(got) >= num:
                    return
        # 2. Claim new blocks.
        config = await self.get_config()
        if config.auto_allocate_blocks:
            while len(got) < num:
                affine = await self._affine_blocks(node, None)
                if config.max_blocks_per_host and len(affine) >= config.max_blocks_per_host:
                    log.info("ipam.max_blocks_reached", node=node, blocks=len(affine),
                             max_blocks_per_host=config.max_blocks_per_host)
                    break
                cidr = await self._claim_new_block(node, pools, config)
                if cidr is None:
                    break
                await take(cidr, node)
        # 3. Borrow from other nodes' blocks.
        if len(got) < num and not config.strict_affinity and config.auto_allocate_blocks:
            for cidr in await self._borrow_candidates(node, pools):
                await take(cidr, None)
                if len(got) >= num:
                    return
        if len(got) < num:
            why = []
            if config.strict_affinity:
                why.append("strictAffinity is on, so other nodes' blocks are not borrowed from")
            if not config.auto_allocate_blocks:
                why.append("autoAllocateBlocks is off")
            if config.max_blocks_per_host:
                why.append(f"maxBlocksPerHost is {config.max_blocks_per_host}")
            detail = f" ({'; '.join(why)})" if why else ""
            raise PoolsExhausted(
                f"no free IPv{version} address for node {node} in pool(s) "
                f"{', '.join(p.name for p in pools)}: needed {num}, got {len(got)}{detail}"
            )

    async def _alloc_in_block(
        self,
        cidr: str,
        num: int,
        node: str,
        handle_id: str,
        secondary: Mapping[str, str],
        *,
        affine_to: str | None,
        handle_must_be_new: bool = False,
        extra: _Extra | None = None,
        got: Sequence[str] = (),
    ) -> list[str]:
        """Take up to ``num`` addresses from one block in ONE transaction (block + handle).

        With ``extra``, the transaction that completes the request (all ``num`` addresses taken
        here) also carries the caller's extra compares and ops.
        """
        bkey, hkey = block_key(cidr), handle_key(handle_id)
        failed = [False]

        async def step() -> list[str]:
            block, brev = await self._block(cidr)
            if block is None or block.deleted:
                self._drop_affine(node, cidr)
                return []
            if affine_to is not None and block.affinity != host_affinity(affine_to):
                self._drop_affine(node, cidr)
                return []
            if block.free == 0:
                return []
            reserved = block.ordinals_within(await self._reserved_networks())
            if reserved and all(o in reserved for o in block.unallocated):
                return []  # every free address is held back by an IPReservation
            hblocks, hrev = await self._handle(handle_id, assume_new=True)
            if handle_must_be_new and hblocks:
                raise _HandleExists
            new = block.copy()
            ords = new.allocate(num, handle_id, secondary, skip=reserved)
            newh = dict(hblocks or {})
            newh[cidr] = newh.get(cidr, 0) + len(ords)
            compares = [mod_is(bkey, brev), mod_is(hkey, hrev)]
            ops: list[Put | Delete] = [Put(bkey, new.to_json()), Put(hkey, handle_doc(handle_id, newh))]
            with_extra = extra is not None and len(ords) == num
            if with_extra:
                assert extra is not None
                ec, eo = await extra.build([*extra.before, *got, *(new.ip(o) for o in ords)], failed[0])
                compares += ec
                ops += eo
            try:
                res = await self.ds.txn(compares, ops)
            except BaseException:
                self._forget([cidr], [handle_id])  # outcome unknown: read afresh next time
                raise
            if res.succeeded:
                if with_extra:
                    assert extra is not None
                    extra.done = True
                self._cache_block(cidr, new, res.revision)
                self._cache_handle(handle_id, newh, res.revision)
                return [new.ip(o) for o in ords]
            # Lost the race, or our own earlier attempt landed and its reply was lost (etcd
            # restarted mid-call and the client re-sent): tell the two apart before retrying.
            cur, _ = await self._read_block(cidr)
            curh, _ = await self._read_handle(handle_id)
            if cur is not None and ords and all(
                cur.handle_of(o) == handle_id and cur.seq_for_alloc.get(o) == new.sequence_number for o in ords
            ) and curh and curh.get(cidr, 0) >= len(ords):
                log.info("ipam.allocation_landed_on_retry", block=cidr, handle=handle_id)
                if with_extra:
                    assert extra is not None
                    extra.done = True  # same transaction: it landed with the block
                return [cur.ip(o) for o in ords]
            failed[0] = True
            raise Conflict

        return await retry_on_conflict(step, attempts=self.conflict_attempts, what=f"allocate in block {cidr}")

    # -- specific addresses -------------------------------------------------------------
    async def assign_ip(
        self, *, ip: str, handle_id: str, node: str, attrs: Mapping[str, str] | None = None
    ) -> None:
        """Allocate one given address (claiming its block for ``node`` if nobody has it)."""
        _check_handle(handle_id)
        addr = _parse_ip(ip)
        pools = await self._all_pools(fresh=True)
        pool = next((p for p in pools if not p.disabled and p.contains(str(addr))), None)
        if pool is None:
            raise IPNotInPool(f"{addr} is not in any enabled IP pool")
        cidr = block_cidr_for(addr, pool.block_size)
        secondary = {**(attrs or {})}
        secondary.setdefault(ATTR_NODE, node)
        bkey, hkey = block_key(cidr), handle_key(handle_id)

        async def step() -> None:
            block, brev = await self._read_block(cidr)
            if block is None:
                config = await self._cached_config()
                await self._claim(node, cidr, config)
                raise Conflict  # re-read whoever's block it is now
            ordinal = block.ordinal(addr)
            if block.allocations[ordinal] is not None:
                raise IPAlreadyAllocated(f"{addr} is already allocated (handle {block.handle_of(ordinal)})")
            hblocks, hrev = await self._read_handle(handle_id)
            new = block.copy()
            new.assign(ordinal, handle_id, secondary)
            newh = dict(hblocks or {})
            newh[cidr] = newh.get(cidr, 0) + 1
            res = await self.ds.txn(
                [mod_is(bkey, brev), mod_is(hkey, hrev)],
                [Put(bkey, new.to_json()), Put(hkey, handle_doc(handle_id, newh))],
            )
            if not res.succeeded:
                self._forget([cidr], [handle_id])
                raise Conflict
            self._cache_block(cidr, new, res.revision)
            self._cache_handle(handle_id, newh, res.revision)

        await retry_on_conflict(step, attempts=self.conflict_attempts, what=f"assign {addr}")
        log.info("ipam.ip_assigned", node=node, handle=handle_id, ip=str(addr), block=cidr)

    async def assign_tunnel_address(self, *, node: str, kind: str) -> str | None:
        """The node's IPIP or VXLAN tunnel address, allocated once and then returned as is.

        Only pools that allow use Tunnel, select the node, and enable the matching
        encapsulation (ipipMode / vxlanMode not Never) qualify; None when no pool does. An
        existing address outside the qualifying pools is released and replaced.
        """
        if kind not in TUNNEL_TYPES:
            raise IPAMError(f"tunnel kind must be one of {sorted(TUNNEL_TYPES)}, got {kind!r}")
        handle_id = f"{kind}-tunnel-addr-{node}"
        labels = await self._node_labels(node)
        pools = [
            p for p in await self._all_pools(fresh=True)
            if p.version == 4 and not p.disabled and USE_TUNNEL in p.allowed_uses and p.matches(labels)
            and (p.ipip_mode if kind == "ipip" else p.vxlan_mode) not in ("", "Never")
        ]
        if not pools:
            return None
        for _ in range(3):
            existing = await self.ips_by_handle(handle_id)
            keep = [ip for ip in existing if any(p.contains(ip) for p in pools)]
            if keep:
                return keep[0]
            if existing:
                log.info("ipam.tunnel_address_replaced", node=node, handle=handle_id, ip=existing[0])
                await self.release_by_handle(handle_id)
            try:
                got = await self._assign_family(
                    4, 1, node, handle_id, {ATTR_NODE: node, ATTR_TYPE: TUNNEL_TYPES[kind]},
                    [p.name for p in pools], USE_TUNNEL, handle_must_be_new=True,
                )
            except _HandleExists:
                continue  # someone else allocated it meanwhile: return theirs
            log.info("ipam.tunnel_address_assigned", node=node, handle=handle_id, ip=got[0])
            return got[0]
        raise IPAMError(f"could not settle the {kind} tunnel address of node {node}: it kept changing")
