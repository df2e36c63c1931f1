"""IPAMConfiguration read/write and the choice of pools a request may use."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import structlog

from datastore import Conflict, Put, mod_is, retry_on_conflict
from ipam._shared import IPAM_CONFIG_KEY, _find_pool
from ipam.cache import ClientCache
from ipam.errors import IPAMError, NoPoolsError
from ipam.model import IPAMConfig, Pool, new_ipam_config_resource

log = structlog.get_logger("tabby.ipam")


class ConfigAndPools(ClientCache):
    """Configuration and pool selection."""

    # -- configuration -------------------------------------------------------------------
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
