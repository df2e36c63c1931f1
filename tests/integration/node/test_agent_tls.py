"""TLS end to end: the agent, the CNI path (plugin -> agent -> etcd), tabbyctl and the controller against
an etcd that serves only HTTPS and demands client certificates (trustme certificates, the fixture of
tests/integration/cli/test_tls.py); a controller with the wrong CA says why in one log line per try."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from controller.cluster.config import ControllerConfig
from controller.cluster.service import Controller
from datastore import Datastore, EtcdConfig
from ipam import IPAMClient
from tests.integration.cli.test_tls import TLSEtcd, tls_etcd  # noqa: F401 - the fixture

from .conftest import ROOT, NodeLab, apply_pool


def test_agent_cni_controller_over_mutual_tls(tmp_path: Path, tls_etcd: TLSEtcd,  # noqa: F811
                                              etcd_env: dict[str, str]) -> None:
    prefix = f"/tls-e2e-{uuid.uuid4().hex[:8]}/"
    env = {**etcd_env, "ETCD_ENDPOINTS": tls_etcd.endpoint, "ETCD_CA_CERT_FILE": tls_etcd.ca,
           "ETCD_CERT_FILE": tls_etcd.cert, "ETCD_KEY_FILE": tls_etcd.key, "TABBY_ETCD_PREFIX": prefix}
    config = EtcdConfig(endpoints=(tls_etcd.endpoint,), prefix=prefix, ca_cert_file=tls_etcd.ca,
                        cert_file=tls_etcd.cert, key_file=tls_etcd.key)
    lab = NodeLab(tmp_path, env)
    try:
        apply_pool(env)  # tabbyctl over TLS
        lab.add_nodes(2)
        a = next(iter(lab.nodes))
        lab.set_address(a)
        lab.start_agent(a)
        pod = lab.add_pod(a, "tls-pod")  # the CNI path: plugin -> agent -> etcd (TLS)
        assert lab.ping(pod.netns, lab.node_ip(a))
        got = subprocess.run([str(Path(sys.executable).parent / "tabbyctl"), "get", "workloadendpoints",
                              "--all-namespaces", "-o", "json"], env=env, capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert pod.ip in got.stdout

        async def controller_frees_a_leak() -> None:
            async with Datastore(config) as ds:
                ipam = IPAMClient(ds)
                res = await ipam.auto_assign(node=a, handle_id="k8s-pod-network.crashed", num_v4=1,
                                             attrs={"node": a, "namespace": "default", "container": "crashed"})
                ctl = Controller(ControllerConfig(etcd=config, interval=0.2, leader_ttl=2, gc_grace=0.5,
                                                  identity="tls"))
                stop = asyncio.Event()
                run = asyncio.create_task(ctl.run(stop))
                deadline = time.monotonic() + 20
                while await ipam.ips_by_handle("k8s-pod-network.crashed") and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                stop.set()
                await run
                assert ctl.actions["gc_released_workload"] == 1
                assert res.v4 and await ipam.ips_by_handle("k8s-pod-network.crashed") == []
                assert await ipam.ips_by_handle(f"tabbynet.{pod.container_id}") == [pod.ip]  # the live pod kept

        asyncio.run(controller_frees_a_leak())

        log = tmp_path / "wrong-ca.log"
        with log.open("wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "controller.cluster"], cwd=ROOT, stdout=f,
                                    stderr=subprocess.STDOUT,
                                    env={**env, "ETCD_CA_CERT_FILE": tls_etcd.other_ca, "TABBY_ETCD_TIMEOUT": "1",
                                         "TABBY_LOG_FORMAT": "json", "TABBY_CONTROLLER_PROMETHEUSMETRICSPORT": "0"})
        try:
            deadline = time.monotonic() + 30
            while '"leader.campaign_failed"' not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(10)
        lines = [json.loads(x) for x in log.read_text().splitlines() if '"leader.campaign_failed"' in x]
        assert lines, log.read_text()
        assert tls_etcd.endpoint in lines[0]["error"] and "\n" not in lines[0]["error"]
    finally:
        lab.cleanup()
