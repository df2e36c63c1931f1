"""Read-only reporting: utilisation, one address's story, pool counts, `ipam check`."""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from datastore.keys import BLOCKS, IPAM
from ipam._shared import _parse_block, _parse_ip, _Target
from ipam.batch import GroupCommit
from ipam.block import Block, block_cidr_for
from ipam.check import LEAKED_IP, CheckReport, analyse
from ipam.errors import IPAMError
from ipam.model import BlockUtilisation, IPInfo, PoolUtilisation

log = structlog.get_logger("tabby.ipam")


class Reports(GroupCommit):
    """Reports and repair from a check report."""

    # -- reporting -----------------------------------------------------------------------
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
