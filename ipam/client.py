"""IPAMClient: Calico's block allocator over etcd.

Every state change is one etcd transaction that compares the mod_revision of every key it
writes, so concurrent allocators (one agent per node, the CLI, the garbage collector) never
lose an update: the loser re-reads and tries again (bounded, with jitter).

Why the client caches: a node agent allocates from blocks it owns, so the block it read last
time is almost always still current. The client keeps each block and handle it has read or
written together with its mod_revision and writes against that; if someone else wrote in
between, the compare fails and the client re-reads. That makes a warm allocation (the node
already has a block with room) exactly one transaction: block + handle, both compared, both
written. Pools, node labels and the IPAMConfiguration are cached for ``cache_ttl`` seconds
(default 2 s), so a long-lived agent honours a pool being disabled within that time; a fresh
client (every CLI command) always reads them fresh. The cache never decides correctness:
mod_revision compares do.

Key layout (relative to the datastore prefix, helpers in ``datastore.keys``):
``ipam/v2/block/<cidr>``, ``ipam/v2/affinity/<node>/<cidr>``, ``ipam/v2/handle/<id>``;
inputs at ``resources/v3/ippools/<name>``, ``resources/v3/nodes/<name>``,
``resources/v3/ipamconfigurations/default``. Formats: docs/ipam.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import structlog

from datastore import KV, Conflict, Datastore, Delete, Put, mod_is, retry_on_conflict, staged
from datastore.keys import (
    BLOCKS,
    IPAM,
    affinity_key,
    affinity_prefix,
    handle_key,
    key_to_cidr,
    parse_affinity_key,
    resource_key,
    resource_prefix,
)
from datastore.keys import block_key as _block_key
from ipam.block import ATTR_NODE, ATTR_TYPE, Block, BlockFormatError, block_cidr_for, block_search_order, host_affinity
from ipam.check import LEAKED_IP, CheckReport, analyse
from ipam.errors import InvalidHandle, IPAlreadyAllocated, IPAMError, IPNotInPool, NoPoolsError, PoolsExhausted
from ipam.model import (
    AFFINITY_CONFIRMED,
    AFFINITY_PENDING,
    TUNNEL_TYPES,
    USE_TUNNEL,
    USE_WORKLOAD,
    AssignResult,
    BlockUtilisation,
    IPAMConfig,
    IPInfo,
    Pool,
    PoolUtilisation,
    ReleasedAffinities,
    affinity_doc,
    handle_blocks,
    handle_doc,
    new_ipam_config_resource,
)

log = structlog.get_logger("tabby.ipam")


@lru_cache(maxsize=65536)
def block_key(cidr: str) -> str:
    """datastore.keys.block_key, cached: it parses the CIDR, and the hot path asks for few keys."""
    return _block_key(cidr)

IPAM_CONFIG_KEY = resource_key("ipamconfigurations", "default")
POOLS_PREFIX = resource_prefix("ippools")
_HANDLE_CACHE_SIZE = 4096


class _HandleExists(Exception):
    """Internal: a handle that had to be new exists already (someone else won the race)."""


@dataclass
class _Target:
    """One address to release and the conditions it must still meet."""

    ordinal: int
    handle_id: str | None = None
    sequence_number: int | None = None


class IPAMClient:
    """Allocate and release addresses from IP pools cut into node-affine blocks."""

    def __init__(self, ds: Datastore, *, cache_ttl: float = 2.0, conflict_attempts: int = 50) -> None:
        self.ds = ds
        self.cache_ttl = cache_ttl
        self.conflict_attempts = conflict_attempts
        self._pools: tuple[float, list[Pool]] | None = None
        self._labels: dict[str, tuple[float, dict[str, str]]] = {}
        self._config: tuple[float, IPAMConfig] | None = None
        self._blocks: dict[str, tuple[Block, int]] = {}
        self._affine: dict[str, list[str]] = {}
        self._handles: OrderedDict[str, tuple[dict[str, int], int]] = OrderedDict()
        self._node_locks: dict[str, asyncio.Lock] = {}
        # (version, node, wanted, use) -> (pools list it was computed from, labels dict, result)
        self._selected: dict[tuple[Any, ...], tuple[list[Pool], dict[str, str] | None, list[Pool]]] = {}

    # ================================================================================
    # cached reads
    # ================================================================================
    def invalidate(self) -> None:
        """Forget every cached value (tests, or after an operator changed things by hand)."""
        self._pools = None
        self._labels.clear()
        self._config = None
        self._blocks.clear()
        self._affine.clear()
        self._handles.clear()
        self._selected.clear()

    def _fresh(self, stamp: float) -> bool:
        return time.monotonic() - stamp < self.cache_ttl

    async def _all_pools(self, fresh: bool = False) -> list[Pool]:
        if not fresh and self._pools is not None and self._fresh(self._pools[0]):
            return self._pools[1]
        kvs, _ = await staged.read_resolved(self.ds, POOLS_PREFIX)  # a large apply in flight: old pools
        pools = []
        for kv in kvs:
            try:
                pools.append(Pool.from_resource(kv.json()))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ipam.pool_unreadable", key=kv.key, error=str(exc))
        self._pools = (time.monotonic(), pools)
        return pools

    async def _node_labels(self, node: str) -> dict[str, str]:
        hit = self._labels.get(node)
        if hit is not None and self._fresh(hit[0]):
            return hit[1]
        kv = await staged.get_resolved(self.ds, resource_key("nodes", node))
        labels: dict[str, str] = {}
        if kv is not None:
            try:
                labels = dict(((kv.json().get("metadata") or {}).get("labels")) or {})
            except ValueError:
                log.warning("ipam.node_unreadable", node=node)
        self._labels[node] = (time.monotonic(), labels)
        return labels

    async def _cached_config(self) -> IPAMConfig:
        if self._config is not None and self._fresh(self._config[0]):
            return self._config[1]
        return await self.get_config()

    def _cache_block(self, cidr: str, block: Block | None, rev: int) -> None:
        if block is None:
            self._blocks.pop(cidr, None)
        else:
            self._blocks[cidr] = (block, rev)

    def _cache_handle(self, handle_id: str, blocks: dict[str, int] | None, rev: int) -> None:
        self._handles.pop(handle_id, None)
        if blocks is not None:
            self._handles[handle_id] = (blocks, rev)
            while len(self._handles) > _HANDLE_CACHE_SIZE:
                self._handles.popitem(last=False)
        else:
            # A handle known to be absent is worth remembering too (rev 0): the next
            # release or allocation for it needs no read.
            self._handles[handle_id] = ({}, 0)

    async def _read_block(self, cidr: str) -> tuple[Block | None, int]:
        kv = await self.ds.get(block_key(cidr))
        if kv is None:
            self._cache_block(cidr, None, 0)
            return None, 0
        block = _parse_block(kv)
        self._cache_block(cidr, block, kv.mod_revision)
        return block, kv.mod_revision

    async def _block(self, cidr: str) -> tuple[Block | None, int]:
        hit = self._blocks.get(cidr)
        if hit is not None:
            return hit
        return await self._read_block(cidr)

    # Rule for the caches: a cached value may drive a write (the write's compare catches it
    # if it was stale), but a conclusion that needs no write ("nothing to release", "this
    # handle holds nothing") must come from a fresh read.

    async def _read_handle(self, handle_id: str) -> tuple[dict[str, int] | None, int]:
        kv = await self.ds.get(handle_key(handle_id))
        if kv is None:
            self._cache_handle(handle_id, None, 0)
            return None, 0
        try:
            blocks = handle_blocks(kv.json())
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidHandle(f"handle {handle_id}: stored record is unreadable ({exc}); run `ipam check`") from exc
        self._cache_handle(handle_id, blocks, kv.mod_revision)
        return blocks, kv.mod_revision

    async def _handle(self, handle_id: str, *, assume_new: bool = False) -> tuple[dict[str, int] | None, int]:
        """The handle's block counts and mod_revision; ``assume_new`` skips the read on a cache miss.

        Assuming "absent" for a handle never seen is right for nearly every pod (each sandbox
        has a new handle); when wrong, the transaction's compare fails and we read it.
        """
        hit = self._handles.get(handle_id)
        if hit is not None:
            self._handles.move_to_end(handle_id)
            return (hit[0] if hit[1] else None), hit[1]
        if assume_new:
            return None, 0
        return await self._read_handle(handle_id)

    def _forget(self, cidrs: Sequence[str] = (), handles: Sequence[str] = ()) -> None:
        for c in cidrs:
            self._blocks.pop(c, None)
        for h in handles:
            self._handles.pop(h, None)

    # ================================================================================
    # configuration
    # ================================================================================
    async def get_config(self) -> IPAMConfig:
        """The IPAMConfiguration ``default`` (Calico defaults when none is stored)."""
        kv = await self.ds.get(IPAM_CONFIG_KEY)
        config = IPAMConfig.from_resource(kv.json() if kv is not None else None)
        self._config = (time.monotonic(), config)
        return config

    async def set_config(
        self,
        *,
        strict_affinity: bool | None = None,
        auto_allocate_blocks: bool | None = None,
        max_blocks_per_host: int | None = None,
    ) -> IPAMConfig:
        """Change some IPAMConfiguration fields, keeping the rest of the resource as stored."""
        if max_blocks_per_host is not None and max_blocks_per_host < 0:
            raise IPAMError(f"maxBlocksPerHost must be 0 (no limit) or more, got {max_blocks_per_host}")

        async def step() -> IPAMConfig:
            kv = await self.ds.get(IPAM_CONFIG_KEY)
            doc: dict[str, Any] = kv.json() if kv is not None else new_ipam_config_resource(IPAMConfig())
            spec = {**IPAMConfig().to_spec(), **(doc.get("spec") or {})}
            if strict_affinity is not None:
                spec["strictAffinity"] = bool(strict_affinity)
            if auto_allocate_blocks is not None:
                spec["autoAllocateBlocks"] = bool(auto_allocate_blocks)
            if max_blocks_per_host is not None:
                spec["maxBlocksPerHost"] = int(max_blocks_per_host)
            doc["spec"] = spec
            (doc.get("metadata") or {}).pop("resourceVersion", None)
            res = await self.ds.txn([mod_is(IPAM_CONFIG_KEY, kv.mod_revision if kv else 0)],
                                    [Put(IPAM_CONFIG_KEY, doc)])
            if not res.succeeded:
                raise Conflict
            return IPAMConfig.from_resource(doc)

        config = await retry_on_conflict(step, attempts=self.conflict_attempts, what="update IPAMConfiguration")
        self._config = (time.monotonic(), config)
        log.info("ipam.config_set", **config.to_spec())
        return config

    # ================================================================================
    # pool selection
    # ================================================================================
    async def _select_pools(
        self, version: int, node: str, wanted: Sequence[str] | None, use: str, *, fresh: bool = False
    ) -> list[Pool]:
        """The pools a request may use; memoised for as long as the cached pools and labels are fresh."""
        memo_key = (version, node, tuple(wanted) if wanted else None, use)
        if not fresh and self._pools is not None and self._fresh(self._pools[0]):
            hit = self._selected.get(memo_key)
            labels = self._labels.get(node)
            if hit is not None and hit[0] is self._pools[1] and (wanted or (labels and labels[1] is hit[1])):
                return hit[2]
        chosen = await self._select_pools_uncached(version, node, wanted, use, fresh=fresh)
        assert self._pools is not None
        labels = self._labels.get(node)
        self._selected[memo_key] = (self._pools[1], labels[1] if labels else None, chosen)
        return chosen

    async def _select_pools_uncached(
        self, version: int, node: str, wanted: Sequence[str] | None, use: str, *, fresh: bool = False
    ) -> list[Pool]:
        pools = await self._all_pools(fresh=fresh)
        if wanted:
            chosen: list[Pool] = []
            for want in wanted:
                pool = _find_pool(pools, want)
                if pool is None:
                    if not fresh:
                        return await self._select_pools_uncached(version, node, wanted, use, fresh=True)
                    raise NoPoolsError(f"the requested IP pool {want!r} does not exist")
                if pool.version != version:
                    continue
                if pool.disabled:
                    raise NoPoolsError(f"the requested IP pool {pool.name} ({pool.cidr}) is disabled")
                if use not in pool.allowed_uses:
                    raise NoPoolsError(f"the requested IP pool {pool.name} ({pool.cidr}) does not allow use {use}"
                                       f" (allowedUses {list(pool.allowed_uses)})")
                chosen.append(pool)
            if not chosen:
                raise NoPoolsError(f"none of the requested IP pools {list(wanted)} is an IPv{version} pool")
            return chosen
        labels = await self._node_labels(node)
        chosen = [p for p in pools if p.version == version and not p.disabled and use in p.allowed_uses
                  and p.matches(labels)]
        if not chosen:
            if not fresh:
                return await self._select_pools_uncached(version, node, wanted, use, fresh=True)
            raise NoPoolsError(
                f"no enabled IPv{version} IP pool with allowedUses {use} selects node {node!r}"
                " (create one, or check the pools' nodeSelector and the node's labels)"
            )
        return chosen

    # ================================================================================
    # allocation
    # ================================================================================
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
    ) -> AssignResult:
        """Allocate ``num_v4`` + ``num_v6`` addresses for ``handle_id`` on ``node``.

        Order, as in Calico: blocks affine to the node; then a newly claimed block (if
        autoAllocateBlocks and under maxBlocksPerHost); then, with strictAffinity false, free
        addresses in other nodes' blocks. All-or-nothing: if the second family fails the
        first is released again.
        """
        _check_handle(handle_id)
        if num_v4 < 0 or num_v6 < 0:
            raise IPAMError("the number of addresses to assign must not be negative")
        secondary = {**(attrs or {})}
        secondary.setdefault(ATTR_NODE, node)
        v4: list[str] = []
        v6: list[str] = []
        try:
            if num_v4:
                v4 = await self._assign_family(4, num_v4, node, handle_id, secondary, pools, use)
            if num_v6:
                v6 = await self._assign_family(6, num_v6, node, handle_id, secondary, pools, use)
        except Exception:
            if v4:
                await self.release_ips(v4, handle_id=handle_id)
            raise
        return AssignResult(v4=v4, v6=v6)

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
    ) -> list[str]:
        pools = await self._select_pools(version, node, wanted, use)
        got: list[str] = []
        async with self._lock(node):
            try:
                await self._fill(got, num, version, node, handle_id, secondary, pools, handle_must_be_new)
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
    ) -> None:
        """Append addresses to ``got`` until it holds ``num`` (or raise PoolsExhausted)."""

        async def take(cidr: str, affine_to: str | None) -> None:
            got.extend(await self._alloc_in_block(cidr, num - len(got), node, handle_id, secondary,
                                                  affine_to=affine_to, handle_must_be_new=handle_must_be_new))

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

    async def _affine_blocks(self, node: str, pools: Sequence[Pool] | None, *, refresh: bool = False) -> list[str]:
        """CIDRs of blocks affine to ``node`` (within ``pools`` when given)."""
        cidrs = self._affine.get(node)
        if cidrs is None or refresh:
            cidrs = await self._load_affinities(node)
        if pools is None:
            return list(cidrs)
        return [c for c in cidrs if any(p.contains(c) for p in pools)]

    async def _load_affinities(self, node: str) -> list[str]:
        kvs, _ = await self.ds.list(affinity_prefix(node))
        cidrs: list[str] = []
        for kv in kvs:
            try:
                owner, cidr = parse_affinity_key(kv.key)
                state = kv.json().get("state")
            except (ValueError, AttributeError):
                continue
            if owner != node:
                continue  # a longer node name sharing the prefix
            if state == AFFINITY_CONFIRMED:
                cidrs.append(cidr)
            elif state == AFFINITY_PENDING:
                # A claim interrupted after the pending write: finish it if the block is ours.
                block, _ = await self._read_block(cidr)
                if block is not None and block.affinity == host_affinity(node):
                    await self._confirm_affinity(node, cidr)
                    cidrs.append(cidr)
        cidrs.sort(key=_net_key)
        self._affine[node] = cidrs
        return cidrs

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
    ) -> list[str]:
        """Take up to ``num`` addresses from one block in ONE transaction (block + handle)."""
        bkey, hkey = block_key(cidr), handle_key(handle_id)

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
            hblocks, hrev = await self._handle(handle_id, assume_new=True)
            if handle_must_be_new and hblocks:
                raise _HandleExists
            new = block.copy()
            ords = new.allocate(num, handle_id, secondary)
            newh = dict(hblocks or {})
            newh[cidr] = newh.get(cidr, 0) + len(ords)
            try:
                res = await self.ds.txn(
                    [mod_is(bkey, brev), mod_is(hkey, hrev)],
                    [Put(bkey, new.to_json()), Put(hkey, handle_doc(handle_id, newh))],
                )
            except BaseException:
                self._forget([cidr], [handle_id])  # outcome unknown: read afresh next time
                raise
            if res.succeeded:
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
                return [cur.ip(o) for o in ords]
            raise Conflict

        return await retry_on_conflict(step, attempts=self.conflict_attempts, what=f"allocate in block {cidr}")

    def _drop_affine(self, node: str, cidr: str) -> None:
        cidrs = self._affine.get(node)
        if cidrs and cidr in cidrs:
            cidrs.remove(cidr)

    # -- block claims (Calico's protocol) ------------------------------------------------
    async def _claim_new_block(self, node: str, pools: Sequence[Pool], config: IPAMConfig) -> str | None:
        """Claim the first unclaimed block in the node's search order; None if every block exists."""
        kvs, _ = await self.ds.list(BLOCKS)
        existing = set()
        for kv in kvs:
            try:
                existing.add(ipaddress.ip_network(key_to_cidr(kv.key[len(BLOCKS):])))
            except ValueError:
                continue
        for pool in pools:
            taken = [n for n in existing if n.version == pool.version and n.overlaps(pool.network)]  # type: ignore
            for cidr in block_search_order(pool.cidr, pool.block_size, node):
                net = ipaddress.ip_network(cidr)
                if any(net.overlaps(t) for t in taken):  # type: ignore[arg-type]
                    continue
                if await self._claim(node, cidr, config):
                    return cidr
                taken.append(net)
        return None

    async def _claim(self, node: str, cidr: str, config: IPAMConfig) -> bool:
        """Write pending affinity -> create block (must not exist) -> confirm affinity.

        Returns False if another node owns the block (our pending affinity is removed again).
        A crash between the steps leaves a pending affinity that the next claim or
        ``_load_affinities`` completes, or that ``ipam check`` reports as dangling.
        """
        akey, bkey = affinity_key(node, cidr), block_key(cidr)
        akv = await self.ds.get(akey)
        if akv is None:
            res = await self.ds.txn([mod_is(akey, 0)], [Put(akey, affinity_doc(AFFINITY_PENDING))])
            if not res.succeeded:
                akv = await self.ds.get(akey)
        block = Block.new(cidr, host_affinity(node), config.strict_affinity)
        block.touch()
        res = await self.ds.txn([mod_is(bkey, 0)], [Put(bkey, block.to_json())])
        if res.succeeded:
            self._cache_block(cidr, block, res.revision)
        else:
            current, _ = await self._read_block(cidr)
            if current is None or current.affinity != host_affinity(node):
                akv = await self.ds.get(akey)
                if akv is not None and akv.json().get("state") == AFFINITY_PENDING:
                    await self.ds.txn([mod_is(akey, akv.mod_revision)], [Delete(akey)])
                log.info("ipam.claim_lost", node=node, block=cidr)
                return False
        await self._confirm_affinity(node, cidr)
        affine = self._affine.setdefault(node, [])
        if cidr not in affine:
            affine.append(cidr)
        log.info("ipam.block_claimed", node=node, block=cidr)
        return True

    async def _confirm_affinity(self, node: str, cidr: str) -> None:
        akey = affinity_key(node, cidr)

        async def step() -> None:
            kv = await self.ds.get(akey)
            if kv is not None and kv.json().get("state") == AFFINITY_CONFIRMED:
                return
            res = await self.ds.txn([mod_is(akey, kv.mod_revision if kv else 0)],
                                    [Put(akey, affinity_doc(AFFINITY_CONFIRMED))])
            if not res.succeeded:
                raise Conflict

        await retry_on_conflict(step, attempts=self.conflict_attempts, what=f"confirm affinity {cidr}")

    async def _borrow_candidates(self, node: str, pools: Sequence[Pool]) -> list[str]:
        """Existing blocks of other nodes (or of none) with free addresses, in the node's search order."""
        kvs, _ = await self.ds.list(BLOCKS)
        blocks: dict[str, Block] = {}
        for kv in kvs:
            try:
                block = _parse_block(kv)
            except IPAMError:
                continue
            self._cache_block(block.cidr, block, kv.mod_revision)
            if block.affinity != host_affinity(node) and block.free and not block.deleted:
                blocks[block.cidr] = block
        out: list[str] = []
        for pool in pools:
            inside = {c for c in blocks if pool.contains(c)}
            if not inside:
                continue
            # Walk the node's search order only as far as needed to rank the candidates.
            rank = {}
            for i, cidr in enumerate(block_search_order(pool.cidr, pool.block_size, node)):
                if cidr in inside:
                    rank[cidr] = i
                    if len(rank) == len(inside):
                        break
            out.extend(sorted(inside, key=lambda c: rank.get(c, 1 << 62)))
        if out:
            log.info("ipam.borrowing", node=node, candidates=len(out))
        return out

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

    # ================================================================================
    # release
    # ================================================================================
    async def release_ips(
        self,
        ips: Sequence[str],
        *,
        handle_id: str | None = None,
        sequence_numbers: Mapping[str, int] | None = None,
    ) -> list[str]:
        """Free addresses; returns those that were not released (not allocated, or refused).

        With ``handle_id`` only addresses held by that handle are freed. ``sequence_numbers``
        (ip -> the block's sequence number at allocation, as ``ip_info`` and ``check`` report
        it) makes the release refuse an address that was freed and reused since.
        """
        wanted = [_parse_ip(ip) for ip in ips]
        pools = await self._all_pools()
        by_block: dict[str, dict[int, _Target]] = {}
        missing: list[str] = []
        unknown: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for addr in wanted:
            pool = next((p for p in pools if p.contains(str(addr))), None)
            if pool is None:
                unknown.append(addr)
                continue
            cidr = block_cidr_for(addr, pool.block_size)
            self._add_target(by_block, cidr, addr, handle_id, sequence_numbers)
        if unknown:
            # Blocks of a deleted pool: find them by listing.
            cidrs = await self._block_cidrs()
            for addr in unknown:
                cidr = next((c for c in cidrs if addr in ipaddress.ip_network(c)), None)
                if cidr is None:
                    missing.append(str(addr))
                else:
                    self._add_target(by_block, cidr, addr, handle_id, sequence_numbers)
        if not by_block:
            return missing
        _, refused = await self._release(by_block)
        return missing + refused

    @staticmethod
    def _add_target(
        by_block: dict[str, dict[int, _Target]],
        cidr: str,
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
        handle_id: str | None,
        sequence_numbers: Mapping[str, int] | None,
    ) -> None:
        ordinal = int(addr) - int(ipaddress.ip_network(cidr).network_address)
        seq = None
        if sequence_numbers:
            seq = sequence_numbers.get(str(addr))
        by_block.setdefault(cidr, {})[ordinal] = _Target(ordinal, handle_id, seq)

    async def _block_cidrs(self) -> list[str]:
        kvs, _ = await self.ds.list(BLOCKS)
        out = []
        for kv in kvs:
            try:
                out.append(key_to_cidr(kv.key[len(BLOCKS):]))
            except ValueError:
                continue
        return out

    async def _release(self, by_block: Mapping[str, Mapping[int, _Target]]) -> tuple[list[str], list[str]]:
        """Release ordinals across blocks in ONE transaction that also fixes every handle touched.

        Returns (released ips, not released ips). The first try works from cached blocks and
        handles; a failed compare, or a target that looks not releasable in a cached copy,
        makes the next try read everything fresh.
        """
        attempt = 0

        async def step() -> tuple[list[str], list[str]]:
            nonlocal attempt
            attempt += 1
            use_cache = attempt == 1
            compares = []
            ops: list[Put | Delete] = []
            released: list[str] = []
            refused: list[str] = []
            deltas: dict[str, dict[str, int]] = {}
            new_blocks: dict[str, Block] = {}
            for cidr, targets in by_block.items():
                cached = use_cache and cidr in self._blocks
                block, brev = await (self._block(cidr) if use_cache else self._read_block(cidr))
                if block is None:
                    refused.extend(str(ipaddress.ip_network(cidr).network_address + o) for o in targets)
                    continue
                new = block.copy()
                for t in targets.values():
                    hid = block.handle_of(t.ordinal)
                    out = new.release(
                        [t.ordinal],
                        handle_id=t.handle_id,
                        sequence_numbers={t.ordinal: t.sequence_number} if t.sequence_number is not None else None,
                    )
                    if out.released:
                        released.append(block.ip(t.ordinal))
                        if hid is not None:
                            d = deltas.setdefault(hid, {})
                            d[cidr] = d.get(cidr, 0) + 1
                    elif cached:
                        raise Conflict  # judged on a cached copy: confirm with a fresh read
                    else:
                        refused.append(block.ip(t.ordinal))
                if new.sequence_number != block.sequence_number:
                    compares.append(mod_is(block_key(cidr), brev))
                    ops.append(Put(block_key(cidr), new.to_json()))
                    new_blocks[cidr] = new
            if not ops:
                return released, refused
            new_handles: dict[str, dict[str, int] | None] = {}
            for hid, per_block in deltas.items():
                hblocks, hrev = await (self._handle(hid) if use_cache else self._read_handle(hid))
                compares.append(mod_is(handle_key(hid), hrev))
                if hblocks is None:
                    continue  # an allocation without its handle (see `ipam check`): nothing to fix
                left = dict(hblocks)
                for cidr, n in per_block.items():
                    remaining = left.get(cidr, 0) - n
                    if remaining > 0:
                        left[cidr] = remaining
                    else:
                        left.pop(cidr, None)
                if left:
                    ops.append(Put(handle_key(hid), handle_doc(hid, left)))
                    new_handles[hid] = left
                else:
                    ops.append(Delete(handle_key(hid)))
                    new_handles[hid] = None
            try:
                res = await self.ds.txn(compares, ops)
            except BaseException:
                self._forget(list(by_block), list(deltas))
                raise
            if not res.succeeded:
                self._forget(list(by_block), list(deltas))
                raise Conflict
            for cidr, new in new_blocks.items():
                self._cache_block(cidr, new, res.revision)
            for hid, left in new_handles.items():
                self._cache_handle(hid, left, res.revision)
            return released, refused

        return await retry_on_conflict(step, attempts=self.conflict_attempts, what="release addresses")

    async def release_by_handle(self, handle_id: str) -> list[str]:
        """Free every address the handle holds, and the handle; idempotent (second call: [])."""
        _check_handle(handle_id)
        released_all: list[str] = []
        for attempt in range(self.conflict_attempts):
            hblocks, hrev = await self._handle(handle_id)
            if hrev == 0 and attempt == 0:
                # "Absent" must be authoritative here: read it rather than trust the cache.
                hblocks, hrev = await self._read_handle(handle_id)
            if not hblocks:
                if hblocks is not None:
                    await self._delete_empty_handle(handle_id, hrev)
                return released_all
            by_block: dict[str, dict[int, _Target]] = {}
            for cidr, count in hblocks.items():
                block, _ = await self._block(cidr)
                ords = block.ordinals_for_handle(handle_id) if block is not None else []
                if len(ords) != count:
                    # The cached copy disagrees with the handle: believe neither, read the block.
                    block, _ = await self._read_block(cidr)
                    ords = block.ordinals_for_handle(handle_id) if block is not None else []
                for o in ords:
                    by_block.setdefault(cidr, {})[o] = _Target(o, handle_id)
            if not by_block and hrev and attempt == 0:
                # Nothing found on the strength of a cached handle: read it before concluding.
                self._forget(handles=[handle_id])
                continue
            if not by_block:
                # The handle names blocks that hold none of its addresses: drop the stale record.
                await self._delete_empty_handle(handle_id, hrev)
                return released_all
            released, _ = await self._release(by_block)
            released_all.extend(released)
            # Loop: if the handle still names addresses (it grew meanwhile), release those too.
        raise IPAMError(f"handle {handle_id}: kept changing while being released")

    async def _delete_empty_handle(self, handle_id: str, rev: int) -> None:
        """Delete a handle judged empty at mod_revision ``rev`` (only if it is still that version)."""
        await self.ds.txn([mod_is(handle_key(handle_id), rev)], [Delete(handle_key(handle_id))])
        self._forget(handles=[handle_id])

    async def ips_by_handle(self, handle_id: str) -> list[str]:
        """The addresses a handle holds now (read fresh; CNI CHECK and crash recovery use it)."""
        _check_handle(handle_id)
        hblocks, _ = await self._read_handle(handle_id)
        out: list[str] = []
        for cidr in sorted(hblocks or {}):
            block, _ = await self._read_block(cidr)
            if block is not None:
                out.extend(block.ip(o) for o in block.ordinals_for_handle(handle_id))
        return out

    # -- affinities ---------------------------------------------------------------------
    async def release_affinity(self, *, node: str, cidr: str | None = None) -> list[str]:
        """Give up the node's EMPTY blocks (all, or the one given); returns the CIDRs released.

        Blocks that still hold addresses are kept, affinity and all.
        """
        result = await self._release_affinities(node, cidr, keep_non_empty=True)
        return result.released

    async def release_host_affinities(self, node: str) -> ReleasedAffinities:
        """The node is gone: delete its empty blocks; keep non-empty ones but without affinity.

        As in Calico, addresses in the kept blocks stay allocated until released (the GC
        does that once their workloads are gone); then the block can be claimed again.
        """
        return await self._release_affinities(node, None, keep_non_empty=False)

    async def _release_affinities(self, node: str, only: str | None, *, keep_non_empty: bool) -> ReleasedAffinities:
        kvs, _ = await self.ds.list(affinity_prefix(node))
        out = ReleasedAffinities()
        for kv in kvs:
            try:
                owner, cidr = parse_affinity_key(kv.key)
            except ValueError:
                continue
            if owner != node or (only is not None and ipaddress.ip_network(only) != ipaddress.ip_network(cidr)):
                continue
            akey, bkey = kv.key, block_key(cidr)

            async def step(akey: str = akey, bkey: str = bkey, cidr: str = cidr) -> str | None:
                akv = await self.ds.get(akey)
                if akv is None:
                    return None
                block, brev = await self._read_block(cidr)
                if block is None or block.affinity != host_affinity(node):
                    res = await self.ds.txn([mod_is(akey, akv.mod_revision), mod_is(bkey, brev)], [Delete(akey)])
                    if not res.succeeded:
                        raise Conflict
                    return "released"
                if block.is_empty:
                    res = await self.ds.txn([mod_is(akey, akv.mod_revision), mod_is(bkey, brev)],
                                            [Delete(bkey), Delete(akey)])
                    if not res.succeeded:
                        raise Conflict
                    self._cache_block(cidr, None, 0)
                    return "released"
                if keep_non_empty:
                    return None
                new = block.copy()
                new.affinity = None
                new.touch()
                res = await self.ds.txn([mod_is(akey, akv.mod_revision), mod_is(bkey, brev)],
                                        [Put(bkey, new.to_json()), Delete(akey)])
                if not res.succeeded:
                    raise Conflict
                self._cache_block(cidr, new, res.revision)
                return "unaffined"

            what = await retry_on_conflict(step, attempts=self.conflict_attempts, what=f"release affinity {cidr}")
            if what == "released":
                out.released.append(cidr)
            elif what == "unaffined":
                out.unaffined.append(cidr)
            if what:
                self._drop_affine(node, cidr)
                log.info("ipam.affinity_released", node=node, block=cidr, outcome=what)
        return out

    # ================================================================================
    # reporting
    # ================================================================================
    async def _all_blocks(self) -> list[tuple[Block, int]]:
        kvs, _ = await self.ds.list(BLOCKS)
        out = []
        for kv in kvs:
            try:
                out.append((_parse_block(kv), kv.mod_revision))
            except IPAMError:
                log.warning("ipam.block_unreadable", key=kv.key)
        return out

    async def get_utilisation(self) -> list[PoolUtilisation]:
        """Per pool (sorted by name): size, in use, free, and each block's numbers."""
        pools = await self._all_pools(fresh=True)
        blocks = await self._all_blocks()
        out = []
        for pool in sorted(pools, key=lambda p: p.name):
            rows = [
                BlockUtilisation(cidr=b.cidr, node=b.node, total=b.size, in_use=b.in_use, free=b.free)
                for b, _ in blocks if pool.contains(b.cidr)
            ]
            in_use = sum(r.in_use for r in rows)
            total = pool.network.num_addresses
            out.append(PoolUtilisation(name=pool.name, cidr=pool.cidr, total=total, in_use=in_use,
                                       free=total - in_use, blocks=rows))
        return out

    async def ip_info(self, ip: str) -> IPInfo | None:
        """Pool, block, affinity and holder of one address; None if IPAM knows nothing of it."""
        addr = _parse_ip(ip)
        pools = await self._all_pools(fresh=True)
        pool = next((p for p in pools if p.contains(str(addr))), None)
        block: Block | None = None
        if pool is not None:
            block, _ = await self._read_block(block_cidr_for(addr, pool.block_size))
        else:
            for b, _ in await self._all_blocks():
                if b.contains(addr):
                    block = b
                    break
        if pool is None and block is None:
            return None
        if block is None:
            return IPInfo(ip=str(addr), pool=pool.name if pool else None, block=None, affinity=None, allocated=False)
        o = block.ordinal(addr)
        allocated = block.allocations[o] is not None
        return IPInfo(
            ip=str(addr),
            pool=pool.name if pool else None,
            block=block.cidr,
            affinity=block.affinity,
            allocated=allocated,
            handle_id=block.handle_of(o) if allocated else None,
            attrs=block.secondary_of(o),
            sequence_number=block.seq_for_alloc.get(o) if allocated else None,
        )

    async def pool_allocation_count(self, cidr: str) -> int:
        """Addresses allocated inside ``cidr`` (refuse deleting a pool while this is not 0)."""
        net = ipaddress.ip_network(cidr, strict=False)
        return sum(
            b.in_use for b, _ in await self._all_blocks()
            if b.network.version == net.version and b.network.overlaps(net)  # type: ignore[arg-type]
        )

    async def pool_allocation_counts(self, cidrs: Sequence[str]) -> dict[str, int]:
        """``pool_allocation_count`` for many pools from ONE read of the blocks (deleting 3,000
        pools must not read every block 3,000 times); pools do not overlap, so bisect finds each
        block's pool."""
        import bisect

        nets = sorted(
            (ipaddress.ip_network(c, strict=False) for c in cidrs), key=lambda n: (n.version, int(n.network_address))
        )
        starts = [(n.version, int(n.network_address)) for n in nets]
        counts = {str(n): 0 for n in nets}
        for block, _ in await self._all_blocks():
            bn = block.network
            i = bisect.bisect_right(starts, (bn.version, int(bn.network_address))) - 1
            if i >= 0 and nets[i].version == bn.version and nets[i].overlaps(bn):  # type: ignore[arg-type]
                counts[str(nets[i])] += block.in_use
        return {c: counts[str(ipaddress.ip_network(c, strict=False))] for c in cidrs}

    async def check(self, in_use: Mapping[str, str] | None = None) -> CheckReport:
        """Find inconsistencies (see ipam.check); ``in_use`` maps live workload IPs to their handle."""
        pools = await self._all_pools(fresh=True)
        kvs, rev = await self.ds.list(IPAM)  # blocks, handles and affinities at one revision
        report = analyse(kvs, pools, in_use, revision=rev)
        log.info("ipam.check", **{k: v for k, v in report.summary().items() if k != "by_kind"})
        return report

    async def release_from_report(self, report: Mapping[str, Any] | CheckReport) -> list[str]:
        """Release the leaked addresses a check report lists, and only those still leaked.

        Each address is released only if it is still allocated to the handle named in the
        report with the same allocation sequence number, so an address that was released
        and handed to a new workload since the report was made is left alone.
        """
        rep = report if isinstance(report, CheckReport) else CheckReport.from_dict(report)
        leaks = [p for p in rep.problems if p.kind == LEAKED_IP and p.ip and p.block]
        if not leaks:
            return []
        by_block: dict[str, dict[int, _Target]] = {}
        for p in leaks:
            assert p.ip is not None and p.block is not None
            ordinal = int(ipaddress.ip_address(p.ip)) - int(ipaddress.ip_network(p.block).network_address)
            by_block.setdefault(p.block, {})[ordinal] = _Target(ordinal, p.handle_id, p.sequence_number)
        self._forget(list(by_block), [p.handle_id for p in leaks if p.handle_id])
        released, refused = await self._release(by_block)
        log.info("ipam.released_from_report", released=released, skipped=refused)
        return released


# ====================================================================================
def _parse_block(kv: KV) -> Block:
    try:
        return Block.from_json(kv.json())
    except (ValueError, BlockFormatError) as exc:
        raise IPAMError(f"block {kv.key} is unreadable ({exc}); run `ipam check`") from exc


def _net_key(cidr: str) -> tuple[int, int]:
    net = ipaddress.ip_network(cidr)
    return net.version, int(net.network_address)


def _parse_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(ip.split("/")[0].strip())
    except ValueError as exc:
        raise IPAMError(f"{ip!r} is not an IP address") from exc


def _check_handle(handle_id: str) -> None:
    if not handle_id or not isinstance(handle_id, str) or "/" in handle_id or handle_id.strip() != handle_id:
        raise InvalidHandle(f"invalid handle id {handle_id!r}: must be non-empty, without '/' or surrounding spaces")


def _find_pool(pools: Sequence[Pool], want: str) -> Pool | None:
    for p in pools:
        if p.name == want:
            return p
    try:
        net = ipaddress.ip_network(want, strict=False)
    except ValueError:
        return None
    return next((p for p in pools if p.network == net), None)
