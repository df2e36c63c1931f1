"""`tabbyctl datastore migrate lock` stops CNI ADDs (code 11) until `unlock`, in namespaces."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.node.conftest import PYTHON, NodeLab, apply_pool, in_ns, sh

pytestmark = pytest.mark.root


def tabbyctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_locked_datastore_refuses_add_until_unlocked(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(1)
    (a,) = node_lab.nodes
    in_ns(node_lab.nodes[a], "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    in_ns(node_lab.nodes[a], "ip", "link", "set", "eth0p", "up")
    in_ns(node_lab.nodes[a], "ip", "link", "set", "eth0", "up")
    node_lab.set_address(a)
    node_lab.start_agent(a)
    node_lab.wait_ready(a)
    assert tabbyctl(etcd_env, "datastore", "migrate", "lock").returncode == 0
    netns = f"tbp-{node_lab.tag}-locked"
    sh("ip", "netns", "add", netns)
    try:
        deadline = time.monotonic() + 20
        code, out = 0, {}
        while time.monotonic() < deadline:  # the agent sees the lock through its watch
            cid = uuid.uuid4().hex
            code, out = node_lab.plugin(
                a, "ADD", container_id=cid, netns=f"/run/netns/{netns}",
                args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=locked",
            )
            if code != 0:
                break
            node_lab.plugin(a, "DEL", container_id=cid, netns=f"/run/netns/{netns}")
            time.sleep(0.5)
        assert code == 1 and out["code"] == 11 and "datastore is locked" in out["msg"], out
    finally:
        sh("ip", "netns", "del", netns, check=False)
    assert tabbyctl(etcd_env, "datastore", "migrate", "unlock").returncode == 0
    deadline = time.monotonic() + 20
    attempt = 0
    while True:
        attempt += 1
        pod = node_lab.add_pod(a, f"unlocked-{attempt}", expect_ok=False)
        if pod.result.get("ips") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert pod.result.get("ips"), pod.result
