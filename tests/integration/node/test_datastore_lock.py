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


def test_locked_datastore_defers_tunnel_address_allocation(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    """While locked, the agent writes no tunnel address (no handle, no block); after unlock it allocates one."""
    import json

    assert tabbyctl(etcd_env, "datastore", "migrate", "lock").returncode == 0
    apply_pool(etcd_env, vxlanMode="Always")
    node_lab.add_nodes(1)
    (a,) = node_lab.nodes
    in_ns(node_lab.nodes[a], "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    for dev in ("eth0p", "eth0"):
        in_ns(node_lab.nodes[a], "ip", "link", "set", dev, "up")
    node_lab.set_address(a)
    node_lab.start_agent(a)
    node_lab.wait_ready(a)
    time.sleep(3)  # the agent has seen the vxlanMode pool: a tunnel address would be written by now
    node = json.loads(tabbyctl(etcd_env, "get", "node", a, "-o", "json").stdout)
    assert "ipv4VXLANTunnelAddr" not in node["spec"], node
    usage = tabbyctl(etcd_env, "ipam", "show", "--show-blocks").stdout
    assert "Block" not in usage, usage  # no block claimed either
    assert "tunnel_ipam_deferred" in node_lab.agents[a].log_text()
    assert tabbyctl(etcd_env, "datastore", "migrate", "unlock").returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        node = json.loads(tabbyctl(etcd_env, "get", "node", a, "-o", "json").stdout)
        if node["spec"].get("ipv4VXLANTunnelAddr"):
            break
        time.sleep(0.5)
    assert node["spec"].get("ipv4VXLANTunnelAddr"), node
