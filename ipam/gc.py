"""Releases for the cluster controller's IPAM garbage collection: all-or-none, and only if unchanged.

Why a module of its own: the collector judges a handle leaked at one moment and releases it a
grace period later; every method here re-reads what it is about to release and compares every
key it writes, so an address handed to a new workload in between is never freed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import structlog

from datastore import Delete, Put, mod_is
from datastore.keys import handle_key
from ipam._shared import _check_handle, _parse_ip, block_key
from ipam.block import Block, block_cidr_for
from ipam.report import Reports

log = structlog.get_logger("tabby.ipam")


class GarbageCollection(Reports):
    """The collector's releases (tabby-controller)."""

    async def release_handle_if_unchanged(self, handle_id: str, expected: Mapping[str, int | None]) -> list[str] | None:
        """Release ALL of a handle's addresses and the handle in one transaction, or nothing.

        ``expected`` is what the garbage collector judged leaked (ip -> allocation sequence
        number). The handle is released only if, read fresh right now, it holds exactly those
        addresses with exactly those sequence numbers: an address released and handed to a new
        workload since (a newer sequence number), an address added to the handle, or a write
        racing ours (the transaction compares every block and the handle) leaves everything
        allocated and returns None. Returns the released addresses.
        """
        _check_handle(handle_id)
        want = {str(_parse_ip(ip)): seq for ip, seq in expected.items()}
        pools = await self._all_pools(fresh=True)
        for _attempt in range(self.conflict_attempts):
            hblocks, hrev = await self._read_handle(handle_id)
            cidrs = set(hblocks or {})
            for ip in want:
                pool = next((p for p in pools if p.contains(ip)), None)
                if pool is not None:
                    cidrs.add(block_cidr_for(ip, pool.block_size))
                else:
                    cidrs.update(c for c in await self._block_cidrs() if ipaddress.ip_address(ip) in
                                 ipaddress.ip_network(c))
            found: dict[str, int | None] = {}
            compares = [mod_is(handle_key(handle_id), hrev)]
            ops: list[Put | Delete] = []
            new_blocks: dict[str, Block] = {}
            for cidr in sorted(cidrs):
                block, brev = await self._read_block(cidr)
                if block is None:
                    continue
                ords = block.ordinals_for_handle(handle_id)
                if not ords:
                    continue
                for o in ords:
                    found[block.ip(o)] = block.seq_for_alloc.get(o)
                new = block.copy()
                out = new.release(ords, handle_id=handle_id)
                if len(out.released) != len(ords):
                    return None
                compares.append(mod_is(block_key(cidr), brev))
                ops.append(Put(block_key(cidr), new.to_json()))
                new_blocks[cidr] = new
            if found != want or not ops:
                log.info("ipam.gc_release_skipped", handle=handle_id, reason="changed since judged leaked",
                         expected=sorted(want), found=sorted(found))
                return None
            if hrev:
                ops.append(Delete(handle_key(handle_id)))
            res = await self.ds.txn(compares, ops)
            if not res.succeeded:
                self._forget(list(cidrs), [handle_id])
                continue
            for cidr, new in new_blocks.items():
                self._cache_block(cidr, new, res.revision)
            self._cache_handle(handle_id, None, 0)
            return sorted(found)
        return None

    async def delete_handle_if_empty(self, handle_id: str, mod_revision: int) -> bool:
        """Delete a leaked handle record (one holding no address), only if still at ``mod_revision``."""
        _check_handle(handle_id)
        hblocks, hrev = await self._read_handle(handle_id)
        if hblocks is None or hrev != mod_revision:
            return False
        compares = [mod_is(handle_key(handle_id), hrev)]
        for cidr in hblocks:
            block, brev = await self._read_block(cidr)
            if block is not None and block.ordinals_for_handle(handle_id):
                return False
            compares.append(mod_is(block_key(cidr), brev))
        res = await self.ds.txn(compares, [Delete(handle_key(handle_id))])
        self._forget(handles=[handle_id])
        return res.succeeded

    async def delete_empty_unaffined_block(self, cidr: str) -> bool:
        """Delete an empty block that no node holds (left by a deleted node), so it can be claimed again.

        A claim creates a block only where none exists, so an orphaned empty block would keep its
        addresses out of every node's reach forever. The delete compares the block's revision:
        an allocation that borrowed from it meanwhile keeps it.
        """
        block, brev = await self._read_block(cidr)
        if block is None or not block.is_empty or block.affinity is not None:
            return False
        res = await self.ds.txn([mod_is(block_key(cidr), brev)], [Delete(block_key(cidr))])
        self._forget([cidr])
        if res.succeeded:
            log.info("ipam.block_deleted", block=cidr, reason="empty and affine to no node")
        return res.succeeded

