"""Node liveness and cleanup against real etcd, with the agent's real lease keeper.

A node whose agent stops renewing its lease is expired after the grace period; a deleted node's
WorkloadEndpoints, tunnel address and affinities go, its addresses are freed by the GC and its
blocks return to the pool. A node whose agent is alive, and a hand-written Node without the
liveness annotation, are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from controller.cluster.config import ControllerConfig
from controller.cluster.service import Controller
from controller.node.liveness import ANNOTATION_LIVENESS, LeaseKeeper
from datastore import Datastore, EtcdConfig
from datastore.keys import AFFINITIES, BLOCKS, HANDLES, liveness_key, resource_key, resource_prefix
from ipam import IPAMClient

from .helpers import add_node, add_pool, allocate_pod, write_wep

pytestmark = pytest.mark.slow


async def _wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_lease_keeper_marks_node_and_survives_lease_loss(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            await add_node(ds, "k1")
            keeper = LeaseKeeper(etcd_config, "k1", ttl=2)
            task = asyncio.create_task(keeper.run())
            try:
                await _wait(lambda: _has(ds, liveness_key("k1")), 5, "the liveness key")
                node = (await ds.get(resource_key("nodes", "k1"))).json()  # type: ignore[union-attr]
                assert node["metadata"]["annotations"][ANNOTATION_LIVENESS] == "2"
                # Someone revokes the lease (as an expiry after a long etcd outage would): a new one is granted.
                assert keeper.lease is not None
                await ds.lease_revoke(keeper.lease)
                await _wait(lambda: _has(ds, liveness_key("k1")), 5, "the liveness key again")
                assert keeper.grants == 2
                await asyncio.sleep(2.5)  # longer than the TTL: renewals keep it
                assert await _has(ds, liveness_key("k1"))
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await _wait(lambda: _absent(ds, liveness_key("k1")), 5, "the lease to expire")

    asyncio.run(go())


def test_dead_node_expired_and_cleaned_live_and_static_nodes_kept(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            await add_pool(ds, "p", "10.60.0.0/16", ipipMode="Always")
            ipam = IPAMClient(ds)
            for name in ("dead", "alive", "static"):
                await add_node(ds, name)
                await ipam.assign_tunnel_address(node=name, kind="ipip")
                for i in range(2):
                    ip = await allocate_pod(ipam, name, f"{name}{i}")
                    await write_wep(ds, name, f"{name}{i}", ip)
            keepers = {n: LeaseKeeper(etcd_config, n, ttl=2) for n in ("dead", "alive")}
            tasks = {n: asyncio.create_task(k.run()) for n, k in keepers.items()}
            await _wait(lambda: _has(ds, liveness_key("dead")), 5, "dead's lease")
            await _wait(lambda: _has(ds, liveness_key("alive")), 5, "alive's lease")
            before_static = await ds.get(resource_key("nodes", "static"))
            config = ControllerConfig(etcd=etcd_config, interval=0.2, leader_ttl=2, gc_grace=0.5,
                                      node_grace=1.0, cleanup_delay=0.5, identity="test")
            controller = Controller(config)
            stop = asyncio.Event()
            run = asyncio.create_task(controller.run(stop))
            try:
                await asyncio.sleep(1.5)
                assert await _has(ds, resource_key("nodes", "dead"))  # still renewing: kept
                tasks["dead"].cancel()  # the agent dies (its lease expires within 2 s)
                t0 = time.monotonic()
                await _wait(lambda: _absent(ds, resource_key("nodes", "dead")), 10, "dead's Node to expire")
                assert time.monotonic() - t0 >= 1.0  # not before the grace period
                await _wait(lambda: _nothing_of(ds, "dead"), 10, "dead's blocks, handles, endpoints to go")
                # Its addresses returned to the pool; the others are untouched.
                for name in ("alive", "static"):
                    assert await _has(ds, resource_key("nodes", name))
                    assert len(await ipam.ips_by_handle(f"ipip-tunnel-addr-{name}")) == 1
                    assert len((await ds.list(resource_prefix("workloadendpoints")))[0]) == 4
                    assert (await ds.list(AFFINITIES + name + "/"))[0]
                assert (await ds.get(resource_key("nodes", "static"))).mod_revision == before_static.mod_revision  # type: ignore[union-attr]
                assert controller.actions["node_expired"] == 1
                assert controller.actions["workload_endpoints_deleted"] == 2
                assert controller.actions["tunnel_addresses_released"] == 1
                assert controller.actions["gc_released_workload"] == 2
                assert controller.actions["blocks_released"] >= 1
                assert (await IPAMClient(ds).check()).ok
            finally:
                stop.set()
                await run
                for t in tasks.values():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t

    asyncio.run(go())


async def _has(ds: Datastore, key: str) -> bool:
    return await ds.get(key) is not None


async def _absent(ds: Datastore, key: str) -> bool:
    return await ds.get(key) is None


async def _nothing_of(ds: Datastore, node: str) -> bool:
    if (await ds.list(AFFINITIES + node + "/"))[0]:
        return False
    handles, _ = await ds.list(HANDLES)
    if any(node in kv.key for kv in handles):
        return False
    weps, _ = await ds.list(resource_prefix("workloadendpoints"))
    if any(kv.json()["spec"]["node"] == node for kv in weps):
        return False
    blocks, _ = await ds.list(BLOCKS)
    # Its block is gone (an empty block affine to no node is deleted: back in the pool).
    return all(kv.json()["affinity"] not in (None, f"host:{node}") for kv in blocks)
