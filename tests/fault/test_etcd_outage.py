"""etcd down for 30 s (TABBY_FAULT_ETCD_DOWN) under pod churn: existing pods keep talking (0 lost pings),
every CNI ADD/DEL during the outage answers code 11 within the CNI timeout, and after recovery the
churn finishes and `ipam check` against the live WorkloadEndpoints is clean (nothing lost, nothing
duplicated). The numbers are printed (-s) for the closing note."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

from controller.node.inuse import live_allocations
from datastore import Datastore, EtcdConfig
from ipam import IPAMClient
from tests.helpers.etcd import EtcdServer
from tests.integration.node.conftest import NodeLab, Pod, apply_pool

DOWN = float(os.environ.get("TABBY_FAULT_ETCD_DOWN", "30"))
CNI_TIMEOUT = 3.0


def _check(endpoint: str) -> tuple[bool, list[str], int]:
    async def go() -> tuple[bool, list[str], int]:
        async with Datastore(EtcdConfig(endpoints=(endpoint,), prefix="/tabby/")) as ds:
            report = await IPAMClient(ds).check(in_use=await live_allocations(ds))
            return report.ok, [p.message for p in report.problems], report.allocated_ips

    return asyncio.run(go())


def test_etcd_down_under_churn(tmp_path: Path, private_etcd: EtcdServer, private_env: dict[str, str]) -> None:
    lab = NodeLab(tmp_path, private_env)
    try:
        apply_pool(private_env)
        lab.add_nodes(2)
        a, b = lab.nodes
        for n in (a, b):
            lab.set_address(n)
            lab.start_agent(n, TABBY_CNI_TIMEOUT=str(CNI_TIMEOUT))
        pa, pb = lab.add_pod(a, "pa"), lab.add_pod(b, "pb")
        interval = 0.1
        count = int((DOWN + 12) / interval)
        pinger = subprocess.Popen(["ip", "netns", "exec", pa.netns, "ping", "-n", "-q", "-i", str(interval), "-c",
                                   str(count), "-W", "1", pb.ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        live: list[Pod] = []
        adds = dels = failed_fast = 0
        slowest = 0.0
        codes: set[int] = set()
        i = 0
        start = time.monotonic()

        def churn_once(expect_down: bool) -> None:
            nonlocal adds, dels, failed_fast, slowest, i
            i += 1
            node = a if i % 2 else b
            t0 = time.monotonic()
            pod = lab.add_pod(node, f"c{i}", expect_ok=False)
            took = time.monotonic() - t0
            if pod.result.get("ips"):
                live.append(pod)
                adds += 1
            else:
                codes.add(int(pod.result.get("code", -1)))
                failed_fast += 1
                slowest = max(slowest, took)
                assert expect_down, f"ADD failed while etcd was up: {pod.result}"
            if len(live) > 4:
                old = live.pop(0)
                code, out = lab.del_pod(old)
                if code == 0:
                    dels += 1
                else:
                    codes.add(int(out.get("code", -1)))
                    live.append(old)  # deleted again after recovery

        for _ in range(6):  # churn while etcd is up
            churn_once(expect_down=False)
        private_etcd.kill()
        down_at = time.monotonic()
        while time.monotonic() - down_at < DOWN:
            churn_once(expect_down=True)
        private_etcd.start()
        # Recovery: each agent reconnects (its watch on its own backoff); ADD works again on every
        # node within a bounded time.
        deadline = time.monotonic() + 30
        for node in (a, b):
            while True:
                pod = lab.add_pod(node, f"r{i}", expect_ok=False)
                i += 1
                if pod.result.get("ips"):
                    live.append(pod)
                    break
                assert time.monotonic() < deadline, f"ADD on {node} still failing after recovery: {pod.result}"
                time.sleep(0.5)
        for _ in range(4):
            churn_once(expect_down=False)
        for pod in list(live):
            code, out = lab.del_pod(pod)
            assert code == 0, out
            live.remove(pod)
            dels += 1
        out, _ = pinger.communicate(timeout=DOWN + 60)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        sent, got = int(m.group(1)), int(m.group(2))
        ok, problems, allocated = _check(private_etcd.endpoint)
        print(f"\nfault etcd-down: outage {DOWN:.0f}s, churn {adds} ADD ok, {dels} DEL ok, {failed_fast} ADD refused "
              f"(codes {sorted(codes)}, slowest {slowest:.2f}s), pings {got}/{sent} "
              f"({sent - got} lost), {time.monotonic() - start:.0f}s total, ipam check ok={ok}, "
              f"allocated after={allocated}")
        assert sent - got == 0, out
        assert failed_fast > 0 and codes == {11}, codes
        assert slowest < CNI_TIMEOUT + 2.5, slowest
        assert ok, problems
        assert allocated == 2  # pa and pb only: no churn address lost or leaked
    finally:
        lab.cleanup()
