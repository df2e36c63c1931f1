"""The IPAM client's caches of blocks, handles, pools, node labels and the configuration.

Why a cache at all (and why it never decides correctness): see ipam/client.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from datastore import Datastore, staged
from datastore.keys import handle_key, resource_key, resource_prefix
from ipam._shared import _HANDLE_CACHE_SIZE, POOLS_PREFIX, _parse_block, block_key
from ipam.block import Block
from ipam.errors import InvalidHandle
from ipam.model import IPAMConfig, Pool, handle_blocks

log = structlog.get_logger("tabby.ipam")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RESERVATIONS_PREFIX = resource_prefix("ipreservations")


class ClientCache:
    """The datastore handle and every cached value; the other parts of IPAMClient build on it."""

    def __init__(
        self, ds: Datastore, *, cache_ttl: float = 2.0, conflict_attempts: int = 50,
        pool_source: Callable[[], list[Pool] | None] | None = None,
        pool_filter: Callable[[str, bytes], Pool | None] | None = None,
    ) -> None:
        """``pool_source``: the caller's validated pools (the node agent's model), used instead of the
        cached etcd read; None from it means "not known yet". ``pool_filter``: how a fresh etcd read of a
        pool is validated (the agent's filter keeps a pool's last good version), default: plain parse."""
        self.ds = ds
        self.pool_source = pool_source
        self.pool_filter = pool_filter
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
        self._reserved: tuple[float, list[IPNetwork]] | None = None

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
        self._reserved = None

    def _fresh(self, stamp: float) -> bool:
        return time.monotonic() - stamp < self.cache_ttl

    async def _all_pools(self, fresh: bool = False) -> list[Pool]:
        if not fresh and self.pool_source is not None:
            known = self.pool_source()
            if known is not None:
                self._pools = (time.monotonic(), known)  # the same list object while unchanged: memo hits
                return known
        if not fresh and self._pools is not None and self._fresh(self._pools[0]):
            return self._pools[1]
        kvs, _ = await staged.read_resolved(self.ds, POOLS_PREFIX)  # a large apply in flight: old pools
        pools = []
        for kv in kvs:
            if self.pool_filter is not None:
                pool = self.pool_filter(kv.key, kv.value)
                if pool is None:
                    log.warning("ipam.pool_ignored", key=kv.key, reason="fails validation")
                else:
                    pools.append(pool)
                continue
            try:
                pools.append(Pool.from_resource(kv.json()))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ipam.pool_unreadable", key=kv.key, error=str(exc))
        self._pools = (time.monotonic(), pools)
        return pools

    async def _reserved_networks(self) -> list[IPNetwork]:
        """Every IPReservation's reservedCIDRs (auto-assign passes over them), cached for cache_ttl
        like the pools: a reservation made while an allocation is in flight may miss that one
        allocation, as in Calico, whose IPAM also reads reservations per request."""
        if self._reserved is not None and self._fresh(self._reserved[0]):
            return self._reserved[1]
        kvs, _ = await staged.read_resolved(self.ds, RESERVATIONS_PREFIX)
        nets: list[IPNetwork] = []
        for kv in kvs:
            try:
                cidrs = ((kv.json().get("spec") or {}).get("reservedCIDRs")) or []
                nets.extend(ipaddress.ip_network(str(c), strict=False) for c in cidrs)
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("ipam.reservation_unreadable", key=kv.key, error=str(exc))
        self._reserved = (time.monotonic(), nets)
        return nets

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

    def _drop_affine(self, node: str, cidr: str) -> None:
        cidrs = self._affine.get(node)
        if cidrs and cidr in cidrs:
            cidrs.remove(cidr)
