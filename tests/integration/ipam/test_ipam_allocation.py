"""IPAMClient against a real etcd: affinity, claims, limits, borrowing, selectors, release rules."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from datastore import Datastore, EtcdConfig
from datastore.keys import AFFINITIES, BLOCKS, affinity_key, block_key, handle_key, resource_key
from ipam import (
    InvalidHandle,
    IPAlreadyAllocated,
    IPAMClient,
    IPNotInPool,
    NoPoolsError,
    PoolsExhausted,
)
from ipam.block import Block

from .conftest import add_node, add_pool


def run(config: EtcdConfig, body: Callable[[Datastore, IPAMClient], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with Datastore(config) as ds:
            return await body(ds, IPAMClient(ds, cache_ttl=0))

    return asyncio.run(go())


async def block_of(ds: Datastore, cidr: str) -> Block:
    kv = await ds.get(block_key(cidr))
    assert kv is not None, f"no block {cidr}"
    return Block.from_json(kv.json())


def net(ip: str, prefix: int) -> str:
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def test_claims_affine_block_fills_it_then_claims_next(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.10.0.0/24", blockSize=29)
        first = await c.auto_assign(node="n1", handle_id="h0")
        b1 = net(first.v4[0], 29)
        blk = await block_of(ds, b1)
        assert blk.affinity == "host:n1" and blk.handle_of(0) == "h0" and blk.secondary_of(0) == {"node": "n1"}
        aff = await ds.get(affinity_key("n1", b1))
        assert aff is not None and aff.json()["state"] == "confirmed"
        h = await ds.get(handle_key("h0"))
        assert h is not None and h.json() == {"handleID": "h0", "block": {b1: 1}, "deleted": False}
        ips = list(first.v4)
        for i in range(1, 8):
            ips += (await c.auto_assign(node="n1", handle_id=f"h{i}")).v4
        assert {net(ip, 29) for ip in ips} == {b1}, "fills its affine block before claiming another"
        nxt = await c.auto_assign(node="n1", handle_id="h8")
        b2 = net(nxt.v4[0], 29)
        assert b2 != b1 and (await block_of(ds, b2)).affinity == "host:n1"
        assert len(set(ips + nxt.v4)) == 9

    run(etcd_config, body)


def test_v4_and_v6_together(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p4", "10.11.0.0/16")
        await add_pool(ds, "p6", "fd00:11::/64")
        r = await c.auto_assign(node="n1", handle_id="h", num_v4=1, num_v6=2)
        assert len(r.v4) == 1 and len(r.v6) == 2
        assert all(ipaddress.ip_address(ip).version == 6 for ip in r.v6)
        b6 = net(r.v6[0], 122)
        assert (await block_of(ds, b6)).affinity == "host:n1"
        assert sorted(await c.release_by_handle("h")) == sorted(r.v4 + r.v6)
        assert await ds.get(handle_key("h")) is None
        assert (await c.check()).ok

    run(etcd_config, body)


def test_no_pools_and_second_family_failure_rolls_back(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        with pytest.raises(NoPoolsError, match="no enabled IPv4 IP pool"):
            await c.auto_assign(node="n1", handle_id="h")
        await add_pool(ds, "p4", "10.12.0.0/24")
        with pytest.raises(NoPoolsError, match="IPv6"):
            await c.auto_assign(node="n1", handle_id="h", num_v4=1, num_v6=1)
        assert await ds.get(handle_key("h")) is None, "the IPv4 address was given back"
        assert (await c.get_utilisation())[0].in_use == 0
        with pytest.raises(NoPoolsError, match="does not exist"):
            await c.auto_assign(node="n1", handle_id="h", pools=["nope"])
        with pytest.raises(InvalidHandle):
            await c.auto_assign(node="n1", handle_id="")

    run(etcd_config, body)


def test_max_blocks_per_host_and_strict_affinity(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.13.0.0/24", blockSize=30)
        await c.set_config(max_blocks_per_host=1, strict_affinity=True)
        got = [(await c.auto_assign(node="n1", handle_id=f"h{i}")).v4[0] for i in range(4)]
        assert len({net(ip, 30) for ip in got}) == 1
        with pytest.raises(PoolsExhausted, match="maxBlocksPerHost is 1"):
            await c.auto_assign(node="n1", handle_id="h4")
        kvs, _ = await ds.list(AFFINITIES)
        assert len(kvs) == 1

    run(etcd_config, body)


def test_auto_allocate_blocks_false(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.14.0.0/24")
        await c.set_config(auto_allocate_blocks=False)
        with pytest.raises(PoolsExhausted, match="autoAllocateBlocks is off"):
            await c.auto_assign(node="n1", handle_id="h")
        assert (await ds.list(BLOCKS))[0] == []
        # A specific address still works: assign_ip claims its block.
        await c.assign_ip(ip="10.14.0.5", handle_id="h", node="n1")
        await c.set_config(auto_allocate_blocks=True)
        r = await c.auto_assign(node="n1", handle_id="h2")
        assert net(r.v4[0], 26) == "10.14.0.0/26", "uses the block that assign_ip claimed"

    run(etcd_config, body)


def test_borrowing_when_not_strict_and_refusal_when_strict(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.15.0.0/29", blockSize=30)  # two blocks of 4
        a = [(await c.auto_assign(node="a", handle_id=f"a{i}")).v4[0] for i in range(2)]
        b = [(await c.auto_assign(node="b", handle_id=f"b{i}")).v4[0] for i in range(4)]
        assert len({net(ip, 30) for ip in b}) == 1 and net(a[0], 30) != net(b[0], 30)
        await c.set_config(strict_affinity=True)
        with pytest.raises(PoolsExhausted, match="strictAffinity"):
            await c.auto_assign(node="b", handle_id="b4")
        await c.set_config(strict_affinity=False)
        borrowed = (await c.auto_assign(node="b", handle_id="b4")).v4[0]
        blk = await block_of(ds, net(a[0], 30))
        assert net(borrowed, 30) == blk.cidr and blk.affinity == "host:a", "block stays a's"
        o = blk.ordinal(borrowed)
        assert blk.handle_of(o) == "b4" and blk.secondary_of(o)["node"] == "b", "borrower recorded for routing"
        info = await c.ip_info(borrowed)
        assert info is not None and info.attrs["node"] == "b" and info.affinity == "host:a"
        assert (await c.check()).ok

    run(etcd_config, body)


def test_node_selector_on_pools(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "east", "10.16.0.0/24", nodeSelector="zone == 'east'")
        await add_pool(ds, "west", "10.17.0.0/24", nodeSelector="zone == 'west'")
        await add_pool(ds, "off", "10.18.0.0/24", disabled=True)
        await add_node(ds, "e1", {"zone": "east"})
        await add_node(ds, "w1", {"zone": "west"})
        e = (await c.auto_assign(node="e1", handle_id="e")).v4[0]
        w = (await c.auto_assign(node="w1", handle_id="w")).v4[0]
        assert e.startswith("10.16.") and w.startswith("10.17.")
        with pytest.raises(NoPoolsError, match="selects node 'nolabels'"):
            await c.auto_assign(node="nolabels", handle_id="x")
        # Explicitly requested pools bypass the selector (as Calico's ipv4_pools do) ...
        x = (await c.auto_assign(node="nolabels", handle_id="x", pools=["10.16.0.0/24"])).v4[0]
        assert x.startswith("10.16.")
        # ... but never a disabled one.
        with pytest.raises(NoPoolsError, match="disabled"):
            await c.auto_assign(node="e1", handle_id="y", pools=["off"])

    run(etcd_config, body)


def test_release_returns_to_tail_and_release_by_handle_idempotent(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.19.0.0/24", blockSize=29)
        ips = [(await c.auto_assign(node="n1", handle_id=f"h{i}")).v4[0] for i in range(3)]
        blk = await block_of(ds, net(ips[0], 29))
        assert await c.release_ips([ips[0]]) == []
        after = await block_of(ds, blk.cidr)
        assert after.unallocated[-1] == blk.ordinal(ips[0]), "released to the tail"
        assert after.sequence_number > blk.sequence_number
        assert await ds.get(handle_key("h0")) is None, "handle emptied by the release goes away"
        assert await c.release_ips([ips[0]]) == [ips[0]], "second release: not allocated"
        assert await c.release_ips([ips[1]], handle_id="someone-else") == [ips[1]]
        assert await c.release_by_handle("h1") == [ips[1]]
        assert await c.release_by_handle("h1") == []
        assert await c.release_by_handle("never-existed") == []
        # Free list order: next allocation takes the longest-free address, not the one just freed.
        nxt = (await c.auto_assign(node="n1", handle_id="h9")).v4[0]
        assert nxt not in ips[:2]
        assert (await c.check()).ok

    run(etcd_config, body)


def test_release_with_sequence_number_refuses_reused_ip(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.20.0.0/30", blockSize=30)
        ips = [(await c.auto_assign(node="n1", handle_id=f"h{i}")).v4[0] for i in range(4)]
        old = await c.ip_info(ips[0])
        assert old is not None and old.sequence_number is not None
        await c.release_by_handle("h0")
        again = (await c.auto_assign(node="n1", handle_id="new")).v4[0]
        assert again == ips[0], "only free address: reused"
        assert await c.release_ips([ips[0]], sequence_numbers={ips[0]: old.sequence_number}) == [ips[0]]
        now = await c.ip_info(ips[0])
        assert now is not None and now.allocated and now.handle_id == "new"

    run(etcd_config, body)


def test_assign_ip_conflicts(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.21.0.0/24")
        await c.assign_ip(ip="10.21.0.77", handle_id="h1", node="n1", attrs={"pod": "a"})
        info = await c.ip_info("10.21.0.77")
        assert info is not None and info.allocated and info.handle_id == "h1" and info.attrs["pod"] == "a"
        assert info.block == "10.21.0.64/26" and info.affinity == "host:n1"
        with pytest.raises(IPAlreadyAllocated, match="h1"):
            await c.assign_ip(ip="10.21.0.77", handle_id="h2", node="n2")
        with pytest.raises(IPNotInPool):
            await c.assign_ip(ip="192.168.1.1", handle_id="h3", node="n1")
        # auto_assign on the same node uses the block but never hands out .77 again
        got = [(await c.auto_assign(node="n1", handle_id=f"x{i}")).v4[0] for i in range(63)]
        assert "10.21.0.77" not in got and all(net(ip, 26) == "10.21.0.64/26" for ip in got)
        assert await c.pool_allocation_count("10.21.0.0/24") == 64
        assert (await c.check()).ok

    run(etcd_config, body)


def test_tunnel_addresses_idempotent(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "plain", "10.22.0.0/24")
        assert await c.assign_tunnel_address(node="n1", kind="ipip") is None
        await add_pool(ds, "ipip", "10.23.0.0/24", ipipMode="Always", allowedUses=["Tunnel"])
        await add_pool(ds, "vx", "10.24.0.0/24", vxlanMode="CrossSubnet")
        ip1 = await c.assign_tunnel_address(node="n1", kind="ipip")
        assert ip1 is not None and ip1.startswith("10.23.")
        assert await c.assign_tunnel_address(node="n1", kind="ipip") == ip1
        assert await IPAMClient(ds).assign_tunnel_address(node="n1", kind="ipip") == ip1, "fresh client too"
        vx = await c.assign_tunnel_address(node="n1", kind="vxlan")
        assert vx is not None and vx.startswith("10.24.")
        info = await c.ip_info(ip1)
        assert info is not None and info.handle_id == "ipip-tunnel-addr-n1"
        assert info.attrs == {"node": "n1", "type": "ipipTunnelAddress"}
        # Concurrent callers for the same node end with one address.
        results = await asyncio.gather(*[IPAMClient(ds).assign_tunnel_address(node="n2", kind="ipip")
                                         for _ in range(5)])
        assert len(set(results)) == 1
        assert await IPAMClient(ds).ips_by_handle("ipip-tunnel-addr-n2") == [results[0]]
        # A workload-only pool is never used for tunnels and vice versa.
        with pytest.raises(NoPoolsError):
            await c.auto_assign(node="n1", handle_id="w", pools=["ipip"])

    run(etcd_config, body)


def test_release_affinity_and_host_affinities(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.25.0.0/24", blockSize=30)
        ips = [(await c.auto_assign(node="n1", handle_id=f"h{i}")).v4[0] for i in range(6)]
        b1, b2 = net(ips[0], 30), net(ips[5], 30)
        assert b1 != b2
        assert await c.release_affinity(node="n1") == [], "both blocks hold addresses"
        await c.release_by_handle("h4")
        await c.release_by_handle("h5")
        assert await c.release_affinity(node="n1", cidr=b1) == [], "b1 not empty"
        assert await c.release_affinity(node="n1") == [b2]
        assert await ds.get(block_key(b2)) is None and await ds.get(affinity_key("n1", b2)) is None
        res = await c.release_host_affinities("n1")
        assert res.released == [] and res.unaffined == [b1]
        blk = await block_of(ds, b1)
        assert blk.affinity is None and blk.in_use == 4
        assert await ds.get(affinity_key("n1", b1)) is None
        assert (await c.check()).ok
        # Another node may borrow from the unaffine block once its own are full? It claims first:
        r = await c.auto_assign(node="n2", handle_id="z")
        assert net(r.v4[0], 30) != b1

    run(etcd_config, body)


def test_config_roundtrip_keeps_resource(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        cfg = await c.get_config()
        assert (cfg.strict_affinity, cfg.auto_allocate_blocks, cfg.max_blocks_per_host) == (False, True, 0)
        await c.set_config(strict_affinity=True)
        kv = await ds.get(resource_key("ipamconfigurations", "default"))
        assert kv is not None
        doc = kv.json()
        assert doc["kind"] == "IPAMConfiguration" and doc["metadata"]["name"] == "default"
        assert doc["spec"] == {"strictAffinity": True, "autoAllocateBlocks": True, "maxBlocksPerHost": 0}
        doc["metadata"]["labels"] = {"keep": "me"}
        await ds.put(kv.key, doc)
        cfg = await c.set_config(max_blocks_per_host=3)
        assert cfg.strict_affinity and cfg.max_blocks_per_host == 3
        doc2 = (await ds.get(kv.key)).json()  # type: ignore[union-attr]
        assert doc2["metadata"]["labels"] == {"keep": "me"} and doc2["metadata"]["uid"] == doc["metadata"]["uid"]

    run(etcd_config, body)


def test_claim_race_loser_drops_pending_affinity(etcd_config: EtcdConfig) -> None:
    """Two nodes race for the only block: exactly one wins; the loser leaves no affinity behind."""

    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.26.0.0/26")  # a single block
        await c.set_config(strict_affinity=True)
        clients = [IPAMClient(ds) for _ in range(4)]
        res = await asyncio.gather(*[cl.auto_assign(node=f"n{i}", handle_id=f"h{i}") for i, cl in enumerate(clients)],
                                   return_exceptions=True)
        winners = [r for r in res if not isinstance(r, BaseException)]
        assert len(winners) == 1
        assert all(isinstance(r, PoolsExhausted) for r in res if isinstance(r, BaseException))
        kvs, _ = await ds.list(AFFINITIES)
        assert len(kvs) == 1 and kvs[0].json()["state"] == "confirmed"
        assert (await c.check()).ok

    run(etcd_config, body)


def test_interrupted_claim_is_completed(etcd_config: EtcdConfig) -> None:
    """A crash after 'create block' but before 'confirm': the next allocation confirms and uses it."""

    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.27.0.0/26")
        blk = Block.new("10.27.0.0/26", "host:n1")
        await ds.put(block_key(blk.cidr), blk.to_json())
        await ds.put(affinity_key("n1", blk.cidr), {"state": "pending", "deleted": False})
        r = await c.auto_assign(node="n1", handle_id="h")
        assert r.v4 == ["10.27.0.0"]
        assert (await ds.get(affinity_key("n1", blk.cidr))).json()["state"] == "confirmed"  # type: ignore[union-attr]

    run(etcd_config, body)
