"""The check analysis, fed hand-made datastore contents: every finding kind, and a clean state."""

from __future__ import annotations

import json
from typing import Any

from datastore import KV
from datastore.keys import affinity_key, block_key, handle_key
from ipam.block import Block, host_affinity
from ipam.check import (
    DANGLING_AFFINITY,
    DUPLICATE_IP,
    HANDLE_MISMATCH,
    INVALID_BLOCK,
    LEAKED_IP,
    MISSING_HANDLE,
    NOT_ALLOCATED,
    ORPHANED_HANDLE,
    OUTSIDE_POOL,
    CheckReport,
    analyse,
)
from ipam.model import Pool, affinity_doc, handle_doc

POOL = Pool(name="p", cidr="10.0.0.0/24", block_size=26)


def kv(key: str, value: Any) -> KV:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return KV(key=key, value=raw, mod_revision=1)


def healthy() -> list[KV]:
    b = Block.new("10.0.0.0/26", host_affinity("n1"))
    b.allocate(2, "h1", {"node": "n1"})
    return [
        kv(block_key(b.cidr), b.to_json()),
        kv(handle_key("h1"), handle_doc("h1", {b.cidr: 2})),
        kv(affinity_key("n1", b.cidr), affinity_doc("confirmed")),
    ]


def test_clean_state_is_ok() -> None:
    rep = analyse(healthy(), [POOL])
    assert rep.ok, rep.problems
    assert rep.allocated_ips == 2 and rep.blocks == 1 and rep.handles == 1 and rep.affinities == 1


def test_missing_handle() -> None:
    kvs = [k for k in healthy() if "handle" not in k.key]
    rep = analyse(kvs, [POOL])
    assert {p.ip for p in rep.by_kind(MISSING_HANDLE)} == {"10.0.0.0", "10.0.0.1"}


def test_handle_count_mismatch_and_orphan() -> None:
    kvs = [k for k in healthy() if "handle" not in k.key]
    kvs.append(kv(handle_key("h1"), handle_doc("h1", {"10.0.0.0/26": 5})))
    kvs.append(kv(handle_key("ghost"), handle_doc("ghost", {"10.0.0.0/26": 1})))
    rep = analyse(kvs, [POOL])
    assert [p.handle_id for p in rep.by_kind(HANDLE_MISMATCH)] == ["h1"]
    assert [p.handle_id for p in rep.by_kind(ORPHANED_HANDLE)] == ["ghost"]


def test_duplicate_ip_in_overlapping_blocks() -> None:
    kvs = healthy()
    big = Block.new("10.0.0.0/25")
    big.allocate(1, "h2")
    kvs += [kv(block_key(big.cidr), big.to_json()), kv(handle_key("h2"), handle_doc("h2", {big.cidr: 1}))]
    rep = analyse(kvs, [Pool(name="p", cidr="10.0.0.0/24", block_size=26)])
    assert [p.ip for p in rep.by_kind(DUPLICATE_IP)] == ["10.0.0.0"]
    assert rep.by_kind(INVALID_BLOCK)  # the /25 has the wrong size for a blockSize 26 pool


def test_outside_pool() -> None:
    b = Block.new("192.168.0.0/26")
    b.allocate(1, "h9")
    kvs = [*healthy(), kv(block_key(b.cidr), b.to_json()), kv(handle_key("h9"), handle_doc("h9", {b.cidr: 1}))]
    rep = analyse(kvs, [POOL])
    assert [p.ip for p in rep.by_kind(OUTSIDE_POOL)] == ["192.168.0.0"]


def test_invalid_blocks() -> None:
    bad_partition = Block.new("10.0.0.64/26")
    bad_partition.unallocated.pop()
    wrong_cidr = Block.new("10.0.0.128/26")
    kvs = [
        *healthy(),
        kv(block_key("10.0.0.192/26"), b"{not json"),
        kv(block_key("10.0.0.64/26"), bad_partition.to_json()),
        kv(block_key("10.0.0.0/27"), wrong_cidr.to_json()),
    ]
    rep = analyse(kvs, [POOL])
    blocks = sorted(p.block or "" for p in rep.by_kind(INVALID_BLOCK))
    assert blocks == ["10.0.0.0/27", "10.0.0.192/26", "10.0.0.64/26"]


def test_dangling_affinities() -> None:
    kvs = [
        *healthy(),
        kv(affinity_key("n2", "10.0.0.128/26"), affinity_doc("pending")),  # no block
        kv(affinity_key("n3", "10.0.0.0/26"), affinity_doc("confirmed")),  # block belongs to n1
    ]
    rep = analyse(kvs, [POOL])
    assert sorted((p.node, p.block) for p in rep.by_kind(DANGLING_AFFINITY)) == [
        ("n2", "10.0.0.128/26"), ("n3", "10.0.0.0/26")]


def test_in_use_comparison_and_tunnel_addresses_skipped() -> None:
    kvs = healthy()
    b = Block.new("10.0.0.64/26", host_affinity("n2"))
    b.allocate(1, "ipip-tunnel-addr-n2", {"node": "n2", "type": "ipipTunnelAddress"})
    kvs += [kv(block_key(b.cidr), b.to_json()),
            kv(handle_key("ipip-tunnel-addr-n2"), handle_doc("ipip-tunnel-addr-n2", {b.cidr: 1}))]
    rep = analyse(kvs, [POOL], in_use={"10.0.0.0": "h1", "10.0.0.9/32": "h7"})
    leaks = rep.by_kind(LEAKED_IP)
    assert [(p.ip, p.handle_id, p.node) for p in leaks] == [("10.0.0.1", "h1", "n1")]
    assert leaks[0].sequence_number == 1
    assert [p.ip for p in rep.by_kind(NOT_ALLOCATED)] == ["10.0.0.9"]


def test_report_roundtrip() -> None:
    kvs = [k for k in healthy() if "handle" not in k.key]
    rep = analyse(kvs, [POOL], in_use={}, revision=42)
    data = json.loads(json.dumps(rep.to_dict()))
    assert data["summary"]["ok"] is False and data["summary"]["revision"] == 42
    assert data["summary"]["by_kind"] == {MISSING_HANDLE: 2, LEAKED_IP: 2}
    back = CheckReport.from_dict(data)
    assert back.problems == rep.problems and back.revision == 42
