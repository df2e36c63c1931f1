"""The cluster controller takes its settings from KubeControllersConfiguration `default` at every
cycle, as calico-kube-controllers does, on real etcd: leakGracePeriod sets the IPAM GC grace
(0 = GC off), reconcilerPeriod the cycle, logSeverityScreen the log level; a set environment
variable wins; status.runningConfig and status.environmentVars say what runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from common import logs
from controller.cluster.config import ControllerConfig
from controller.cluster.kcc import KEY
from controller.cluster.service import Controller
from datastore import Datastore, EtcdConfig
from ipam import IPAMClient

from .helpers import NETWORK, add_node, add_pool, allocate_pod


def kcc_doc(**node: str) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "KubeControllersConfiguration",
            "metadata": {"name": "default"},
            "spec": {"logSeverityScreen": "Debug", "controllers": {"node": node}}}


async def _wait(cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def test_kcc_sets_grace_period_cycle_and_log_level(etcd_config: EtcdConfig) -> None:
    level = logs.current_level()

    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            await add_pool(ds, "p", "10.61.0.0/16")
            await add_node(ds, "n1")
            ipam = IPAMClient(ds)
            leak1 = uuid.uuid4().hex[:12]
            await allocate_pod(ipam, "n1", leak1)  # an allocation no WorkloadEndpoint names: a leak

            async def held(cid: str) -> bool:
                return bool(await ipam.ips_by_handle(f"{NETWORK}.{cid}"))

            config = ControllerConfig(etcd=etcd_config, interval=0.2, leader_ttl=2, gc_grace=900.0, identity="kcc")
            controller = Controller(config, environ={})
            stop = asyncio.Event()
            run = asyncio.create_task(controller.run(stop))
            try:
                await asyncio.sleep(1.5)
                assert await held(leak1), "released inside the 15 min default grace"
                await ds.put(KEY, kcc_doc(leakGracePeriod="1s", reconcilerPeriod="300ms"))
                await _wait(lambda: _not(held(leak1)), 10, "the leak released after the KCC's 1 s grace")
                st = controller.status()["settings"]
                assert st == {"interval": 0.3, "gc_grace": 1.0, "log_level": "debug",
                              "sources": {"controllers.node.reconcilerPeriod": "kcc",
                                          "controllers.node.leakGracePeriod": "kcc", "logSeverityScreen": "kcc"}}
                assert logs.current_level() == "debug"
                status = await _status(ds)
                assert status["runningConfig"]["controllers"]["node"] == {"leakGracePeriod": "1s",
                                                                          "reconcilerPeriod": "0.3s"}
                assert status["runningConfig"]["logSeverityScreen"] == "Debug"
                assert "environmentVars" not in status

                # leakGracePeriod 0: IPAM garbage collection off (Calico's meaning)
                await ds.put(KEY, kcc_doc(leakGracePeriod="0s"))
                await _wait(lambda: _grace_is(controller, None), 5, "GC off")
                leak2 = uuid.uuid4().hex[:12]
                await allocate_pod(ipam, "n1", leak2)
                await asyncio.sleep(2.5)
                assert await held(leak2), "GC ran with leakGracePeriod 0"
                assert (await _status(ds))["runningConfig"]["controllers"]["node"]["leakGracePeriod"] == "0s"
            finally:
                stop.set()
                await run

            # a set environment variable wins over the KCC, and is reported
            controller = Controller(config, environ={"TABBY_IPAM_GC_GRACE": "900"})
            await ds.put(KEY, kcc_doc(leakGracePeriod="1s"))
            stop = asyncio.Event()
            run = asyncio.create_task(controller.run(stop))
            try:
                await _wait(lambda: _env_reported(ds), 10, "status.environmentVars")
                await asyncio.sleep(2.0)
                assert await held(leak2), "the KCC's grace won over TABBY_IPAM_GC_GRACE"
                assert controller.status()["settings"]["gc_grace"] == 900.0
                assert (await _status(ds))["runningConfig"]["controllers"]["node"]["leakGracePeriod"] == "900s"
            finally:
                stop.set()
                await run

    try:
        asyncio.run(go())
    finally:
        logs.set_level(level)


async def _not(aw: Awaitable[bool]) -> bool:
    return not await aw


async def _grace_is(controller: Controller, grace: float | None) -> bool:
    return controller.settings.gc_grace == grace


async def _status(ds: Datastore) -> dict[str, Any]:
    import json

    kv = await ds.get(KEY)
    assert kv is not None
    return json.loads(kv.value).get("status") or {}


async def _env_reported(ds: Datastore) -> bool:
    return (await _status(ds)).get("environmentVars") == {"TABBY_IPAM_GC_GRACE": "900"}
