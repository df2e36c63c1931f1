"""Faults: etcd stopped (pods keep talking, ADD answers code 11 fast, recovery), agent SIGKILL and
restart under a 10 ms ping between pods on two nodes (no lost reply, no route deleted)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.helpers.etcd import EtcdServer
from tests.integration.node.conftest import NodeLab, apply_pool

pytestmark = pytest.mark.root


def two_nodes_with_pods(lab: NodeLab, etcd_env: dict[str, str]) -> tuple[str, str, object, object]:
    apply_pool(etcd_env)
    lab.add_nodes(2)
    a, b = lab.nodes
    lab.set_address(a)
    lab.set_address(b)
    lab.start_agent(a)
    lab.start_agent(b)
    pa = lab.add_pod(a, "pa")
    pb = lab.add_pod(b, "pb")
    assert lab.ping(pa.netns, pb.ip)
    return a, b, pa, pb


def test_etcd_down_pods_keep_talking_add_fails_fast(
    node_lab: NodeLab, etcd_env: dict[str, str], etcd_server: EtcdServer
) -> None:
    a, _b, pa, pb = two_nodes_with_pods(node_lab, etcd_env)
    etcd_server.stop()
    try:
        time.sleep(1.0)
        assert node_lab.ping(pa.netns, pb.ip, count=3)
        pod = node_lab.add_pod(a, "while-down", expect_ok=False)
        start = time.monotonic()
        code, out = node_lab.plugin(a, "ADD", container_id=pod.container_id, netns=f"/run/netns/{pod.netns}",
                                    args=node_lab.pod_args(pod))
        elapsed = time.monotonic() - start
        assert code == 1 and out["code"] == 11, out
        assert set(out) == {"cniVersion", "code", "msg", "details"} and "etcd" in out["msg"]
        assert elapsed < 6.5, elapsed
        # nothing was left behind by the failed ADD
        assert node_lab.ping(pa.netns, pb.ip)
    finally:
        etcd_server.start()
    deadline = time.monotonic() + 20
    while True:
        code, out = node_lab.plugin(a, "ADD", container_id=pod.container_id, netns=f"/run/netns/{pod.netns}",
                                    args=node_lab.pod_args(pod))
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 0, out
    pod.result = out
    assert node_lab.ping(pod.netns, pb.ip)


def test_agent_sigkill_restart_no_loss_no_flap(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    a, _b, pa, pb = two_nodes_with_pods(node_lab, etcd_env)
    monitor = subprocess.Popen(["ip", "netns", "exec", node_lab.nodes[a], "ip", "-o", "monitor", "route"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ping = subprocess.Popen(["ip", "netns", "exec", pa.netns, "ping", "-i", "0.01", "-c", "500", "-W", "1", pb.ip],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.8)
        node_lab.agents[a].stop(signal.SIGKILL)
        node_lab.start_agent(a)  # waits until it answers STATUS (first full resync done)
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
        monitor.terminate()
        events, _ = monitor.communicate(timeout=10)
    assert " 0% packet loss" in out and "500 received" in out, out
    deletions = [line for line in events.splitlines() if line.startswith("Deleted")]
    assert deletions == [], deletions
    log = node_lab.agents[a].log_text()
    assert '"added": 0' in log or "added=0" in log
