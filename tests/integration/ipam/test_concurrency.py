"""8 node processes allocate and release against one etcd that is SIGKILLed and restarted mid-run.

Afterwards the datastore must be exactly what the workers believe: every address allocated at
most once, every allocation with its handle and every handle with its allocations, `check()`
clean, and the union of the addresses the workers hold equal to what the blocks hold.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datastore import Datastore, EtcdConfig
from datastore.keys import BLOCKS
from ipam import IPAMClient
from ipam.block import Block
from tests.helpers.etcd import EtcdServer

from .conftest import add_pool

WORKER = Path(__file__).with_name("ipam_worker.py")
NODES = 8


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 4], ids=["one-at-a-time", "group-commit"])
def test_eight_nodes_ride_through_etcd_kill(
    etcd_server: EtcdServer, etcd_config: EtcdConfig, etcd_env: dict[str, str], tmp_path: Path, concurrency: int
) -> None:
    """``group-commit``: 4 concurrent allocators per node share one client, so allocations are
    coalesced (several handles in one transaction) and etcd dies under batched transactions too."""
    async def setup() -> None:
        async with Datastore(etcd_config) as ds:
            # 16 blocks of 16: 8 nodes holding up to 24 each must claim, race, and borrow.
            await add_pool(ds, "p4", "10.40.0.0/24", blockSize=28)
            await add_pool(ds, "p6", "fd40::/120", blockSize=124)

    asyncio.run(setup())
    seconds = 24.0
    procs = []
    t0 = time.monotonic()
    for i in range(NODES):
        out = tmp_path / f"node{i}.json"
        procs.append((out, subprocess.Popen(
            [sys.executable, str(WORKER), "--node", f"node{i}", "--ops", "5000", "--seconds", str(seconds),
             "--out", str(out), "--concurrency", str(concurrency)],
            env=etcd_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )))
    try:
        # Interpreters start slowly on a loaded machine: wait (bounded) until every worker is
        # connected and allocating before counting down to the kill.
        deadline = time.monotonic() + 90
        while not all(out.with_suffix(".ready").exists() for out, _ in procs):
            assert time.monotonic() < deadline, "workers did not connect to etcd within 90 s"
            assert all(p.poll() is None for _, p in procs), "a worker exited before it connected"
            time.sleep(0.1)
        time.sleep(seconds / 3)
        # Workers are bounded by time (the op count is out of reach), so all are mid-run here.
        # SIGKILL, and stay down longer than the workers' 3 s connect bound: every worker must
        # see its client give up (DatastoreError), not just a pause its retries ride through.
        etcd_server.kill()
        time.sleep(4.5)
        etcd_server.start()
        results = []
        for out, proc in procs:
            _, err = proc.communicate(timeout=seconds + 60)
            assert proc.returncode == 0, f"worker failed ({proc.returncode}): {err[-8000:]}"
            results.append(json.loads(out.read_text()))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.monotonic() - t0
    print(f"elapsed {elapsed:.1f}s; per node: {[r['stats'] for r in results]}")
    assert elapsed < 180

    total_allocs = sum(r["stats"]["allocs"] + r["stats"]["reconciled"] for r in results)
    assert total_allocs > 8 * 20, [r["stats"] for r in results]
    assert sum(r["stats"]["datastore_errors"] for r in results) > 0, "the etcd kill was not felt at all"
    if concurrency > 1:
        assert sum(r["stats"]["grouped"] for r in results) > 0, "no allocation went through the group commit"

    reported: dict[str, str] = {}
    for r in results:
        for handle, ips in r["held"].items():
            for ip in ips:
                assert ip not in reported, f"{ip} held by {reported[ip]} and {handle}"
                reported[ip] = handle

    async def verify() -> None:
        async with Datastore(etcd_config) as ds:
            kvs, _ = await ds.list(BLOCKS)
            in_blocks: dict[str, str] = {}
            for kv in kvs:
                b = Block.from_json(kv.json())
                assert b.problems() == [], b.cidr
                for o in b.allocated_ordinals():
                    ip = b.ip(o)
                    assert ip not in in_blocks, f"{ip} allocated twice"
                    in_blocks[ip] = b.handle_of(o) or ""
            assert in_blocks == reported, {
                "in_blocks_only": sorted(set(in_blocks) - set(reported))[:10],
                "reported_only": sorted(set(reported) - set(in_blocks))[:10],
            }
            report = await IPAMClient(ds).check(in_use=reported)
            assert report.ok, report.to_dict()

    asyncio.run(verify())
