"""Block affinities and Calico's block-claim protocol (pending affinity -> block -> confirmed)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import structlog

from datastore import Conflict, Delete, Put, mod_is, retry_on_conflict
from datastore.keys import BLOCKS, affinity_key, affinity_prefix, key_to_cidr, parse_affinity_key
from ipam._shared import _net_key, _parse_block, block_key
from ipam.block import Block, block_search_order, host_affinity
from ipam.config import ConfigAndPools
from ipam.errors import IPAMError
from ipam.model import AFFINITY_CONFIRMED, AFFINITY_PENDING, IPAMConfig, Pool, affinity_doc

log = structlog.get_logger("tabby.ipam")


class Claims(ConfigAndPools):
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
        reserved = await self._reserved_networks()
        for pool in pools:
            taken = [n for n in existing if n.version == pool.version and n.overlaps(pool.network)]  # type: ignore
            whole = [r for r in reserved if r.version == pool.version and r.overlaps(pool.network)]  # type: ignore
            for cidr in block_search_order(pool.cidr, pool.block_size, node):
                net = ipaddress.ip_network(cidr)
                if any(net.overlaps(t) for t in taken):  # type: ignore[arg-type]
                    continue
                if any(net.subnet_of(r) for r in whole):  # type: ignore[arg-type]
                    continue  # an IPReservation holds the whole block back: claiming it would give nothing
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
