"""A node removed for good (agent, ExaBGP and namespace gone) under a running controller: after the
grace periods its Node is expired, its BGP sessions leave the mesh, the other nodes withdraw its
routes, its pods' addresses and its blocks return to the pool, and `ipam check` is clean. Short
timers: liveness lease 2 s, node grace 2 s, cleanup delay 1 s, GC grace 1 s."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.node.inuse import live_allocations
from datastore import Datastore, EtcdConfig
from datastore.keys import AFFINITIES, BLOCKS, resource_key
from ipam import IPAMClient
from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.node.conftest import ROOT, apply_pool, kill_netns_processes, sh

SHORT = {"TABBY_LIVENESS_TTL": "2"}


def _datastore(endpoint: str, body):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with Datastore(EtcdConfig(endpoints=(endpoint,), prefix="/tabby/")) as ds:
            return await body(ds)

    return asyncio.run(go())


def test_removed_node_returns_its_blocks(tmp_path: Path, private_env: dict[str, str]) -> None:
    endpoint = private_env["ETCD_ENDPOINTS"]
    lab = BgpLab(tmp_path, private_env)
    controller: subprocess.Popen[bytes] | None = None
    try:
        apply_pool(private_env, BGP_POOL)
        lab.add_nodes(3)
        a, b, c = lab.nodes
        for n in (a, b, c):
            lab.set_address(n)
            lab.start_agent(n, **SHORT)
        for n in (a, b, c):
            wait_for(f"{n}: 2 sessions", lambda n=n: lab.established(n, 2), timeout=60)
        pods = {n: lab.add_pod(n, f"p{n[-1]}") for n in (a, b, c)}
        gone_block = lab.block_of(pods[c].ip, c)
        wait_for(f"{a} routes {gone_block}", lambda: lab.route_to(a, gone_block), timeout=30)
        log = (tmp_path / "controller.log").open("wb")
        controller = subprocess.Popen(
            [sys.executable, "-m", "controller.cluster"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**private_env, "TABBY_CONTROLLER_INTERVAL": "0.3", "TABBY_LEADER_TTL": "2",
                 "TABBY_NODE_GRACE": "2", "TABBY_NODE_CLEANUP_DELAY": "1", "TABBY_IPAM_GC_GRACE": "1",
                 "TABBY_CONTROLLER_PROMETHEUSMETRICSPORT": "0", "TABBY_LOG_FORMAT": "json"})
        log.close()
        time.sleep(3)  # the controller runs a few cycles with every node alive: nothing happens
        assert _datastore(endpoint, lambda ds: ds.get(resource_key("nodes", c))) is not None

        # Node c is removed for good: its agent, ExaBGP and namespace go.
        removed = time.monotonic()
        lab.agents[c].stop(signal.SIGKILL)
        kill_netns_processes(lab.nodes[c])
        sh("ip", "netns", "del", lab.nodes[c])

        def gone() -> bool:
            async def body(ds: Datastore) -> bool:
                if await ds.get(resource_key("nodes", c)) is not None:
                    return False
                if (await ds.list(AFFINITIES + c + "/"))[0]:
                    return False
                blocks, _ = await ds.list(BLOCKS)
                return not any(kv.json().get("cidr") == gone_block for kv in blocks)

            return bool(_datastore(endpoint, body))

        wait_for("c's Node, affinities and block gone", gone, timeout=40)
        took = time.monotonic() - removed
        for n in (a, b):
            wait_for(f"{n}: c's session left the mesh",
                     lambda n=n: {s["peer_address"] for s in lab.bgp_status(n).get("sessions", [])}
                     == {lab.node_ip(x) for x in (a, b) if x != n}, timeout=30)
            wait_for(f"{n}: route to {gone_block} withdrawn", lambda n=n: lab.route_to(n, gone_block) is None,
                     timeout=30)
        assert lab.ping(pods[a].netns, pods[b].ip)  # the rest of the cluster is unaffected

        async def check(ds: Datastore):  # type: ignore[no-untyped-def]
            return await IPAMClient(ds).check(in_use=await live_allocations(ds))

        report = _datastore(endpoint, check)
        assert report.ok, report.problems
        assert report.allocated_ips == 2  # pods of a and b; c's address went back to the pool
        text = (tmp_path / "controller.log").read_text()
        assert '"controller.node_expired"' in text and '"controller.gc_released"' in text
        print(f"\nfault node-removed: blocks back after {took:.1f}s (lease 2 s + grace 2 s + cleanup 1 s + GC 1 s)")
    finally:
        if controller is not None:
            controller.terminate()
            try:
                controller.wait(10)
            except subprocess.TimeoutExpired:
                controller.kill()
        lab.cleanup()
