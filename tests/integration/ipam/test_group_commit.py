"""Group commit (ipam/batch.py) against a real etcd: concurrent allocations on one node share
transactions, each handle and each extra op lands with its addresses, exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from datastore import Datastore, EtcdConfig, Put, mod_is
from datastore.keys import handle_key
from ipam import HandleInUse, IPAMClient

from .conftest import add_pool


def run(config: EtcdConfig, body: Any) -> Any:
    async def go() -> Any:
        async with Datastore(config) as ds:
            return await body(ds)

    return asyncio.run(go())


class CountingTxns:
    """Counts the transactions a Datastore sends (the real one does the work)."""

    def __init__(self, ds: Datastore) -> None:
        self.n = 0
        self._txn = ds.txn

        async def txn(*a: Any, **kw: Any) -> Any:
            self.n += 1
            return await self._txn(*a, **kw)

        ds.txn = txn  # type: ignore[method-assign]


def test_thirty_concurrent_allocations_share_few_transactions(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore) -> None:
        await add_pool(ds, "gc1", "10.77.0.0/24", blockSize=26)
        c = IPAMClient(ds)
        await c.auto_assign(node="gnode", handle_id="gnode.warm")  # claims the block
        count = CountingTxns(ds)

        def extra(i: int) -> Any:
            async def build(ips: list[str], fresh: bool) -> Any:
                key = f"test/extra/{i}"
                return [mod_is(key, 0)], [Put(key, {"ips": ips})]
            return build

        results = await asyncio.gather(*(
            c.auto_assign(node="gnode", handle_id=f"gnode.p{i}", extra_ops=extra(i), new_handle=True)
            for i in range(30)
        ))
        ips = [r.v4[0] for r in results]
        assert len(set(ips)) == 30
        assert count.n <= 6, f"{count.n} transactions for 30 concurrent allocations"
        assert c.grouped_requests >= 20
        for i, ip in enumerate(ips):
            kv = await ds.get(f"test/extra/{i}")
            assert kv is not None and kv.json() == {"ips": [ip]}, i
            assert await c.ips_by_handle(f"gnode.p{i}") == [ip]
        # A handle that already holds an address: new_handle refuses, the others are unaffected.
        res = await asyncio.gather(
            c.auto_assign(node="gnode", handle_id="gnode.p0", new_handle=True),
            c.auto_assign(node="gnode", handle_id="gnode.q1", new_handle=True),
            return_exceptions=True,
        )
        assert isinstance(res[0], HandleInUse), res
        assert not isinstance(res[1], BaseException) and len(res[1].v4) == 1
        # Without new_handle the handle grows (through the one-request path).
        grown = await c.auto_assign(node="gnode", handle_id="gnode.p0")
        assert sorted(await IPAMClient(ds).ips_by_handle("gnode.p0")) == sorted([ips[0], grown.v4[0]])
        report = await IPAMClient(ds).check()
        assert report.ok, report.to_dict()

    run(etcd_config, body)


@pytest.mark.parametrize("batching", [True, False])
def test_burst_spanning_blocks_claims_more(etcd_config: EtcdConfig, batching: bool) -> None:
    """More concurrent requests than the affine block holds: the rest claim a new block, none twice."""

    async def body(ds: Datastore) -> None:
        await add_pool(ds, f"gc2{int(batching)}", f"10.78.{int(batching)}.0/24", blockSize=28)
        c = IPAMClient(ds, batching=batching)
        node = f"gspan{int(batching)}"
        await c.auto_assign(node=node, handle_id=f"{node}.warm")
        results = await asyncio.gather(*(c.auto_assign(node=node, handle_id=f"{node}.p{i}") for i in range(40)))
        ips = [ip for r in results for ip in r.v4]
        assert len(ips) == 40 and len(set(ips)) == 40
        kv = await ds.get(handle_key(f"{node}.p39"))
        assert kv is not None
        report = await IPAMClient(ds).check()
        assert report.ok, report.to_dict()

    run(etcd_config, body)
