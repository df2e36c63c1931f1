"""IPAM garbage collection against real etcd: leaks are freed after the grace period, live pods never.

The churn test runs the collector in a tight loop while "pods" are created the way the agent
creates them (allocate, then a while later write the WorkloadEndpoint) and deleted the way DEL
deletes them: no live pod may lose its address, every real leak must be freed, `ipam check`
against the live set ends clean.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest

from controller.cluster.ipam_gc import HANDLE, TUNNEL, WORKLOAD, IpamGC
from controller.cluster.nodes import read_view
from controller.node.inuse import live_allocations
from datastore import Datastore, EtcdConfig
from datastore.keys import handle_key
from ipam import IPAMClient
from ipam.model import handle_doc

from .helpers import NETWORK, add_node, add_pool, allocate_pod, wep_key, write_wep

pytestmark = pytest.mark.slow


def test_leaks_freed_after_grace_live_pods_kept(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            await add_pool(ds, "p", "10.50.0.0/16", ipipMode="Always")
            await add_node(ds, "n1")
            ipam = IPAMClient(ds)
            live_ip = await allocate_pod(ipam, "n1", "live")
            await write_wep(ds, "n1", "live", live_ip)
            leaked_ip = await allocate_pod(ipam, "n1", "crashed")  # ADD died before the WorkloadEndpoint
            await ds.put(handle_key("leftover"), handle_doc("leftover", {}))  # a handle holding nothing
            tunnel = await ipam.assign_tunnel_address(node="gone-node", kind="ipip")  # no Node resource
            manual = await ipam.auto_assign(node="n1", handle_id="by-hand", num_v4=1)  # not a CNI allocation
            now = [100.0]
            counts: dict[str, int] = {}

            def count(action: str, n: int) -> None:
                counts[action] = counts.get(action, 0) + n

            gc = IpamGC(ds, IPAMClient(ds), grace=10.0, count=count, clock=lambda: now[0])
            first = await gc.run_once()
            assert first.candidates == 3 and not first.released_handles
            reasons = {c.handle_id: c.reason for c, _ in gc._seen.values()}
            assert reasons == {f"{NETWORK}.crashed": WORKLOAD, "leftover": HANDLE,
                               "ipip-tunnel-addr-gone-node": TUNNEL}
            now[0] += 9.9
            assert not (await gc.run_once()).released_handles  # still inside the grace period
            now[0] += 0.2
            done = await gc.run_once()
            assert sorted(done.released_handles) == sorted(reasons)
            assert sorted(done.released_ips) == sorted([leaked_ip, tunnel])
            assert await ipam.ips_by_handle(f"{NETWORK}.live") == [live_ip]
            assert await ipam.ips_by_handle("by-hand") == list(manual.v4)
            assert await ds.get(handle_key("leftover")) is None
            assert counts == {"gc_released_workload": 1, "gc_released_handle": 1, "gc_released_tunnel": 1,
                              "gc_released_addresses": 2}
            report = await ipam.check(in_use={**await live_allocations(ds), manual.v4[0]: "by-hand"})
            assert report.ok, report.problems

    asyncio.run(go())


def test_a_changed_candidate_restarts_its_clock_and_a_late_wep_saves_it(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            await add_pool(ds, "p", "10.51.0.0/16")
            ipam = IPAMClient(ds)
            now = [0.0]
            gc = IpamGC(ds, IPAMClient(ds), grace=5.0, clock=lambda: now[0])
            ip = await allocate_pod(ipam, "n1", "slow")
            await gc.run_once()
            now[0] = 4.0
            # The same container retried its ADD: leftovers released, a new address (new sequence number).
            await ipam.release_by_handle(f"{NETWORK}.slow")
            ip2 = await allocate_pod(ipam, "n1", "slow")
            await gc.run_once()
            now[0] = 6.0
            assert not (await gc.run_once()).released_handles  # the new state is only 2 s old
            await write_wep(ds, "n1", "slow", ip2)  # ...and the ADD finished
            now[0] = 20.0
            assert not (await gc.run_once()).released_handles
            assert await ipam.ips_by_handle(f"{NETWORK}.slow") == [ip2]
            assert ip2 != ip  # the retry got a new address: FIFO reuse

    asyncio.run(go())


def test_release_is_all_or_none_per_handle(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            await add_pool(ds, "p", "10.52.0.0/16")
            ipam = IPAMClient(ds)
            res = await ipam.auto_assign(node="n1", handle_id="h2", num_v4=2,
                                         attrs={"node": "n1", "namespace": "x", "container": "c"})
            a, b = res.v4
            info_a, info_b = await ipam.ip_info(a), await ipam.ip_info(b)
            assert info_a and info_b
            good = {a: info_a.sequence_number, b: info_b.sequence_number}
            # Judged with a stale sequence number for one address: nothing is released.
            assert await ipam.release_handle_if_unchanged("h2", {**good, b: (good[b] or 0) + 100}) is None
            assert sorted(await ipam.ips_by_handle("h2")) == sorted([a, b])
            # Judged on one address only, but the handle holds two: nothing is released.
            assert await ipam.release_handle_if_unchanged("h2", {a: good[a]}) is None
            assert sorted(await ipam.ips_by_handle("h2")) == sorted([a, b])
            assert sorted(await ipam.release_handle_if_unchanged("h2", good) or []) == sorted([a, b])
            assert await ipam.ips_by_handle("h2") == []
            assert (await ipam.check()).ok

    asyncio.run(go())


def test_gc_under_pod_churn_never_frees_a_live_pod(etcd_config: EtcdConfig) -> None:
    """Pods created and deleted while the collector runs every 50 ms with a 1.5 s grace period."""
    grace = 1.5
    max_add = 0.6  # the slowest simulated ADD (allocate -> WorkloadEndpoint); well inside the grace

    async def go() -> None:
        async with Datastore(etcd_config) as ds, Datastore(etcd_config) as gc_ds:
            await add_pool(ds, "p", "10.53.0.0/16")
            for n in ("n1", "n2"):
                await add_node(ds, n)
            rng = random.Random(12)
            live: dict[str, tuple[str, str]] = {}  # container -> (node, ip), WorkloadEndpoint written
            leaked: dict[str, str] = {}
            stop = asyncio.Event()
            gc = IpamGC(gc_ds, IPAMClient(gc_ds), grace=grace)
            released: list[str] = []

            async def collector() -> None:
                while not stop.is_set():
                    result = await gc.run_once()
                    released.extend(result.released_handles)
                    await asyncio.sleep(0.05)

            async def pods(worker: int) -> None:
                ipam = IPAMClient(ds)
                node = f"n{worker % 2 + 1}"
                deadline = time.monotonic() + 5.0
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    cid = f"w{worker}-{i}-{uuid.uuid4().hex[:6]}"
                    ip = await allocate_pod(ipam, node, cid)
                    if rng.random() < 0.15:
                        leaked[cid] = ip  # the ADD "crashes": no WorkloadEndpoint ever
                        continue
                    await asyncio.sleep(rng.uniform(0, max_add))
                    await write_wep(ds, node, cid, ip)
                    live[cid] = (node, ip)
                    if len(live) > 12 and rng.random() < 0.5:  # a DEL of an older pod
                        old = rng.choice(sorted(live))
                        onode, _ = live.pop(old)
                        await ipam.release_by_handle(f"{NETWORK}.{old}")
                        await ds.delete(wep_key(onode, old))

            gc_task = asyncio.create_task(collector())
            await asyncio.gather(*(pods(w) for w in range(4)))
            await asyncio.sleep(grace + 0.5)  # every leak confirmed and freed
            stop.set()
            await gc_task
            assert live and leaked
            ipam = IPAMClient(ds)
            for cid, (_node, ip) in sorted(live.items()):
                assert await ipam.ips_by_handle(f"{NETWORK}.{cid}") == [ip], f"live pod {cid} lost {ip}"
            assert {f"{NETWORK}.{c}" for c in leaked} <= set(released)
            assert not {f"{NETWORK}.{c}" for c in live} & set(released)
            report = await ipam.check(in_use=await live_allocations(ds))
            assert report.ok, report.problems
            view = await read_view(ds)
            assert len(view.weps) == len(live)

    asyncio.run(go())
