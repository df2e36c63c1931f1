"""Consistency check of the IPAM data (``tabbyctl ipam check``), as a pure function.

The analysis takes what was read from the datastore (ideally one range read of ``ipam/v2/``
so blocks, handles and affinities are from one revision) and returns typed findings. Keeping
it free of I/O lets tests seed every kind of damage and lets the report be saved, reviewed
and fed back to ``release_from_report`` which re-checks each finding before acting.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from datastore import KV
from datastore.keys import AFFINITIES, BLOCKS, HANDLES, key_to_cidr, parse_affinity_key
from ipam.block import Block, BlockFormatError, affinity_node, host_affinity
from ipam.model import TUNNEL_TYPES, Pool, handle_blocks

INVALID_BLOCK = "invalid-block"
INVALID_HANDLE = "invalid-handle"
MISSING_HANDLE = "missing-handle"
HANDLE_MISMATCH = "handle-count-mismatch"
ORPHANED_HANDLE = "orphaned-handle"
DUPLICATE_IP = "duplicate-ip"
OUTSIDE_POOL = "allocation-outside-pool"
DANGLING_AFFINITY = "dangling-affinity"
LEAKED_IP = "allocated-not-in-use"
NOT_ALLOCATED = "in-use-not-allocated"

KINDS = (
    INVALID_BLOCK, INVALID_HANDLE, MISSING_HANDLE, HANDLE_MISMATCH, ORPHANED_HANDLE,
    DUPLICATE_IP, OUTSIDE_POOL, DANGLING_AFFINITY, LEAKED_IP, NOT_ALLOCATED,
)


@dataclass(frozen=True)
class Problem:
    """One finding. ``kind`` is one of KINDS; the other fields say where."""

    kind: str
    message: str
    ip: str | None = None
    block: str | None = None
    handle_id: str | None = None
    node: str | None = None
    sequence_number: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    revision: int = 0
    pools: int = 0
    blocks: int = 0
    handles: int = 0
    affinities: int = 0
    allocated_ips: int = 0
    #: Whether ``in_use`` was given (only then can leaks be judged).
    checked_in_use: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "revision": self.revision,
            "pools": self.pools,
            "blocks": self.blocks,
            "handles": self.handles,
            "affinities": self.affinities,
            "allocated_ips": self.allocated_ips,
            "checked_in_use": self.checked_in_use,
            "problems": len(self.problems),
            "by_kind": {k: v for k, v in self.counts().items() if v},
        }

    def by_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "problems": [p.to_dict() for p in self.problems]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckReport:
        """Rebuild a report from ``to_dict`` output (e.g. ``ipam check -o report.json``)."""
        summary = data.get("summary") or {}
        problems = []
        for p in data.get("problems") or []:
            problems.append(Problem(**{k: p.get(k) for k in Problem.__dataclass_fields__ if k in p}))
        return cls(
            problems=problems,
            revision=int(summary.get("revision") or 0),
            pools=int(summary.get("pools") or 0),
            blocks=int(summary.get("blocks") or 0),
            handles=int(summary.get("handles") or 0),
            affinities=int(summary.get("affinities") or 0),
            allocated_ips=int(summary.get("allocated_ips") or 0),
            checked_in_use=bool(summary.get("checked_in_use")),
        )


def analyse(
    ipam_kvs: Sequence[KV],
    pools: Sequence[Pool],
    in_use: Mapping[str, str] | None = None,
    revision: int = 0,
) -> CheckReport:
    """Find every inconsistency in blocks, handles and affinities (keys relative to the prefix)."""
    report = CheckReport(revision=revision, pools=len(pools), checked_in_use=in_use is not None)
    add = report.problems.append

    blocks: dict[str, Block] = {}
    handles: dict[str, dict[str, int]] = {}
    affinities: list[tuple[str, str, dict[str, Any] | None]] = []
    for kv in ipam_kvs:
        if kv.key.startswith(BLOCKS):
            report.blocks += 1
            _load_block(kv, pools, blocks, add)
        elif kv.key.startswith(HANDLES):
            report.handles += 1
            hid = kv.key[len(HANDLES) :]
            try:
                handles[hid] = handle_blocks(kv.json())
            except (ValueError, TypeError, AttributeError) as exc:
                add(Problem(INVALID_HANDLE, f"handle {hid}: unreadable record ({exc})", handle_id=hid))
        elif kv.key.startswith(AFFINITIES):
            report.affinities += 1
            try:
                node, cidr = parse_affinity_key(kv.key)
            except ValueError:
                add(Problem(DANGLING_AFFINITY, f"affinity key {kv.key} does not name a block"))
                continue
            try:
                doc = kv.json()
            except ValueError:
                doc = None
            affinities.append((node, cidr, doc))

    # Addresses, duplicates, pools.
    holders: dict[str, list[str]] = {}
    block_handle_counts: dict[str, dict[str, int]] = {}
    for cidr, block in blocks.items():
        counts = block.handle_counts()
        block_handle_counts[cidr] = counts
        pool = _pool_for(block.cidr, pools)
        allocated = block.allocated_ordinals()
        report.allocated_ips += len(allocated)
        for o in allocated:
            ip = block.ip(o)
            holders.setdefault(ip, []).append(cidr)
            if pool is None:
                add(Problem(OUTSIDE_POOL, f"{ip} is allocated in block {cidr}, which lies outside every IP pool",
                            ip=ip, block=cidr, handle_id=block.handle_of(o), node=block.node))
        for o in allocated:
            if block.handle_of(o) is None:
                ip = block.ip(o)
                add(Problem(MISSING_HANDLE, f"{ip} in block {cidr} is allocated without a handle",
                            ip=ip, block=cidr, node=block.node))
    for ip, where in sorted(holders.items()):
        if len(where) > 1:
            add(Problem(DUPLICATE_IP, f"{ip} is allocated in {len(where)} blocks: {', '.join(where)}",
                        ip=ip, block=where[0]))

    # Handles against blocks, both ways.
    for cidr, counts in block_handle_counts.items():
        block = blocks[cidr]
        for hid, n in counts.items():
            if hid not in handles:
                for o in block.ordinals_for_handle(hid):
                    ip = block.ip(o)
                    add(Problem(MISSING_HANDLE, f"{ip} in block {cidr} belongs to handle {hid}, which does not exist",
                                ip=ip, block=cidr, handle_id=hid, node=block.node))
            elif handles[hid].get(cidr, 0) != n:
                add(Problem(HANDLE_MISMATCH,
                            f"handle {hid} records {handles[hid].get(cidr, 0)} address(es) in block {cidr}, "
                            f"the block holds {n}", block=cidr, handle_id=hid))
    for hid, hblocks in sorted(handles.items()):
        held = sum(block_handle_counts.get(c, {}).get(hid, 0) for c in hblocks)
        held_anywhere = held or any(hid in c for c in block_handle_counts.values())
        if not held_anywhere:
            add(Problem(ORPHANED_HANDLE, f"handle {hid} holds no address in any block (leaked handle)",
                        handle_id=hid))
            continue
        for c, n in hblocks.items():
            if n and hid not in block_handle_counts.get(c, {}):
                add(Problem(HANDLE_MISMATCH, f"handle {hid} records {n} address(es) in block {c}, the block holds 0",
                            block=c, handle_id=hid))

    # Affinities.
    for node, cidr, doc in affinities:
        block = blocks.get(cidr)
        if doc is None:
            add(Problem(DANGLING_AFFINITY, f"affinity of {node} for {cidr} is unreadable", block=cidr, node=node))
        elif block is None:
            state = doc.get("state", "?")
            add(Problem(DANGLING_AFFINITY,
                        f"{state} affinity of node {node} points at block {cidr}, which does not exist",
                        block=cidr, node=node))
        elif block.affinity != host_affinity(node):
            add(Problem(DANGLING_AFFINITY,
                        f"affinity of node {node} for block {cidr}, but the block is affine to "
                        f"{affinity_node(block.affinity) or 'no node'}", block=cidr, node=node))

    # Live workloads against allocations.
    if in_use is not None:
        live = {_norm(ip): h for ip, h in in_use.items()}
        for cidr, block in blocks.items():
            for o in block.allocated_ordinals():
                ip = block.ip(o)
                hid = block.handle_of(o)
                if block.secondary_of(o).get("type") in TUNNEL_TYPES.values():
                    continue  # tunnel addresses belong to nodes, not workloads
                if live.get(ip) != hid:
                    add(Problem(LEAKED_IP, f"{ip} is allocated to handle {hid} but no live workload uses it",
                                ip=ip, block=cidr, handle_id=hid, node=block.secondary_of(o).get("node") or block.node,
                                sequence_number=block.seq_for_alloc.get(o)))
        for ip, hid in sorted(live.items()):
            where = holders.get(ip, [])
            ok = any(blocks[c].handle_of(blocks[c].ordinal(ip)) == hid for c in where)
            if not ok:
                add(Problem(NOT_ALLOCATED, f"{ip} is used by {hid} but not allocated to it", ip=ip, handle_id=hid))
    return report


def _load_block(kv: KV, pools: Sequence[Pool], blocks: dict[str, Block], add: Any) -> None:
    try:
        key_cidr = key_to_cidr(kv.key[len(BLOCKS) :])
    except ValueError:
        add(Problem(INVALID_BLOCK, f"block key {kv.key} does not name a CIDR"))
        return
    try:
        block = Block.from_json(json.loads(kv.value))
    except (ValueError, BlockFormatError) as exc:
        add(Problem(INVALID_BLOCK, f"block {key_cidr}: {exc}", block=key_cidr))
        return
    if block.cidr != key_cidr:
        add(Problem(INVALID_BLOCK, f"block stored at {key_cidr} says its cidr is {block.cidr}", block=key_cidr))
        return
    issues = block.problems()
    if issues:
        # Structurally broken: its allocations cannot be trusted, so they are not counted.
        add(Problem(INVALID_BLOCK, f"block {key_cidr}: {'; '.join(issues)}", block=key_cidr, node=block.node))
        return
    pool = _pool_for(block.cidr, pools)
    if pool is not None and block.network.prefixlen != pool.block_size:
        # Readable but the wrong size (e.g. left over from a pool recreated with another
        # blockSize): report it and still count its allocations, which may overlap others.
        add(Problem(INVALID_BLOCK, f"block {key_cidr} is /{block.network.prefixlen} but pool {pool.name} "
                    f"has blockSize {pool.block_size}", block=key_cidr, node=block.node))
    blocks[key_cidr] = block


def _pool_for(cidr: str, pools: Sequence[Pool]) -> Pool | None:
    for p in pools:
        if p.contains(cidr):
            return p
    return None


def _norm(ip: str) -> str:
    return str(ipaddress.ip_address(ip.split("/")[0]))
