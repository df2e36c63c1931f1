"""One allocation = one transaction; `check` finds seeded damage; release_from_report re-checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from datastore import Datastore, EtcdConfig
from datastore.keys import affinity_key, block_key, handle_key
from ipam import IPAMClient
from ipam.block import Block
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
)
from ipam.model import handle_doc

from .conftest import add_pool


def run(config: EtcdConfig, body: Callable[[Datastore], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with Datastore(config) as ds:
            return await body(ds)

    return asyncio.run(go())


class Counter:
    """Wraps a Datastore's RPC methods and counts calls."""

    def __init__(self, ds: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, int] = {}
        for name in ("txn", "get", "list", "put", "delete"):
            orig = getattr(ds, name)

            def wrap(orig: Any = orig, name: str = name) -> Any:
                async def counted(*a: Any, **k: Any) -> Any:
                    self.calls[name] = self.calls.get(name, 0) + 1
                    return await orig(*a, **k)
                return counted

            monkeypatch.setattr(ds, name, wrap())

    def reset(self) -> None:
        self.calls.clear()


def test_warm_allocation_and_release_are_one_transaction_each(
    etcd_config: EtcdConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(ds: Datastore) -> None:
        await add_pool(ds, "p", "10.30.0.0/16")
        c = IPAMClient(ds)  # default cache_ttl: the agent's configuration
        await c.auto_assign(node="n1", handle_id="warmup")  # claims the affine block
        counter = Counter(ds, monkeypatch)
        for i in range(20):
            counter.reset()
            r = await c.auto_assign(node="n1", handle_id=f"pod{i}")
            assert counter.calls == {"txn": 1}, f"allocation {i}: {counter.calls}"
            counter.reset()
            assert await c.release_by_handle(f"pod{i}") == r.v4
            assert counter.calls == {"txn": 1}, f"release {i}: {counter.calls}"
        # The block and handle writes are in that one transaction: both are there or neither.
        r = await c.auto_assign(node="n1", handle_id="last")
        hkv = await ds.get(handle_key("last"))
        bkv = await ds.get(block_key(_block(r.v4[0])))
        assert hkv is not None and bkv is not None and hkv.mod_revision == bkv.mod_revision

    run(etcd_config, body)


def test_stale_cache_is_corrected_by_compare(etcd_config: EtcdConfig) -> None:
    """Two clients for one node: each one's cache goes stale; compares keep every IP unique."""

    async def body(ds: Datastore) -> None:
        await add_pool(ds, "p", "10.31.0.0/24")
        a, b = IPAMClient(ds), IPAMClient(ds)
        ips = []
        for i in range(40):
            cl = a if i % 3 else b
            ips += (await cl.auto_assign(node="n1", handle_id=f"h{i}")).v4
            if i % 5 == 0:
                await (b if cl is a else a).release_by_handle(f"h{i}")
                ips.pop()
        assert len(ips) == len(set(ips))
        assert (await a.check()).ok

    run(etcd_config, body)


def _block(ip: str) -> str:
    import ipaddress

    return str(ipaddress.ip_network(f"{ip}/26", strict=False))


def test_check_finds_each_seeded_problem(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore) -> None:
        await add_pool(ds, "p", "10.32.0.0/24")
        c = IPAMClient(ds, cache_ttl=0)
        live = (await c.auto_assign(node="n1", handle_id="live")).v4[0]
        leak = (await c.auto_assign(node="n1", handle_id="leak")).v4[0]
        assert (await c.check()).ok
        # missing handle: allocation whose handle record vanished
        lost = (await c.auto_assign(node="n1", handle_id="lost")).v4[0]
        await ds.delete(handle_key("lost"))
        # orphaned handle
        await ds.put(handle_key("ghost"), handle_doc("ghost", {"10.32.0.0/26": 2}))
        # count mismatch
        await ds.put(handle_key("live"), handle_doc("live", {_block(live): 3}))
        # invalid block (bad JSON) and a block outside every pool
        await ds.put(block_key("10.32.0.192/26"), b"{oops")
        outside = Block.new("172.16.0.0/26", "host:n9")
        outside.allocate(1, "out")
        await ds.put(block_key(outside.cidr), outside.to_json())
        await ds.put(handle_key("out"), handle_doc("out", {outside.cidr: 1}))
        # duplicate: a /27 overlapping n1's /26 that also hands out the same first address
        dup = Block.new(_block(live).replace("/26", "/27"))
        dup.allocate(1, "dup")
        await ds.put(block_key(dup.cidr), dup.to_json())
        await ds.put(handle_key("dup"), handle_doc("dup", {dup.cidr: 1}))
        # affinity to a missing block
        await ds.put(affinity_key("n5", "10.32.0.128/26"), {"state": "pending", "deleted": False})

        rep = await c.check(in_use={live: "live", "10.32.0.100": "phantom"})
        kinds = rep.counts()
        for kind in (MISSING_HANDLE, ORPHANED_HANDLE, HANDLE_MISMATCH, INVALID_BLOCK, OUTSIDE_POOL, DUPLICATE_IP,
                     DANGLING_AFFINITY, LEAKED_IP, NOT_ALLOCATED):
            assert kinds[kind] >= 1, (kind, rep.to_dict())
        assert not rep.ok
        assert {p.ip for p in rep.by_kind(MISSING_HANDLE)} == {lost}
        assert [p.handle_id for p in rep.by_kind(ORPHANED_HANDLE)] == ["ghost"]
        assert [p.ip for p in rep.by_kind(OUTSIDE_POOL)] == ["172.16.0.0"]
        assert [p.ip for p in rep.by_kind(DUPLICATE_IP)] == [live]
        assert [p.ip for p in rep.by_kind(NOT_ALLOCATED)] == ["10.32.0.100"]
        assert leak in {p.ip for p in rep.by_kind(LEAKED_IP)}
        json.dumps(rep.to_dict())  # serialisable for `ipam check -o`

    run(etcd_config, body)


def test_release_from_report_only_releases_still_leaked(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore) -> None:
        await add_pool(ds, "p", "10.33.0.0/30", blockSize=30)
        c = IPAMClient(ds, cache_ttl=0)
        ips = {h: (await c.auto_assign(node="n1", handle_id=h)).v4[0] for h in ("live", "leak1", "leak2", "leak3")}
        report = (await c.check(in_use={ips["live"]: "live"})).to_dict()
        report = json.loads(json.dumps(report))  # as read back from report.json
        assert sorted(p["ip"] for p in report["problems"] if p["kind"] == LEAKED_IP) == sorted(
            ips[h] for h in ("leak1", "leak2", "leak3"))
        # Since the report: leak2's address was released and reused by a new pod (same IP, new
        # sequence number); leak3 was released by its owner.
        await c.release_by_handle("leak2")
        reused = (await c.auto_assign(node="n1", handle_id="newpod")).v4[0]
        assert reused == ips["leak2"]
        await c.release_by_handle("leak3")
        released = await c.release_from_report(report)
        assert released == [ips["leak1"]]
        info = await c.ip_info(ips["leak2"])
        assert info is not None and info.allocated and info.handle_id == "newpod"
        assert (await c.ip_info(ips["live"])).allocated  # type: ignore[union-attr]
        assert await ds.get(handle_key("leak1")) is None
        assert (await c.check()).ok

    run(etcd_config, body)
