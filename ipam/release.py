"""Releasing addresses (by IP, by handle, from a check report's leaks) and a node's affinities."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

import structlog

from datastore import Conflict, Delete, Put, mod_is, retry_on_conflict
from datastore.keys import BLOCKS, affinity_prefix, handle_key, key_to_cidr, parse_affinity_key
from ipam._shared import _check_handle, _parse_ip, _Target, block_key
from ipam.block import Block, block_cidr_for, host_affinity
from ipam.claim import Claims
from ipam.errors import IPAMError
from ipam.model import ReleasedAffinities, handle_doc

log = structlog.get_logger("tabby.ipam")


class Releases(Claims):
    """Releasing addresses and affinities."""

    # -- release -------------------------------------------------------------------------
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
