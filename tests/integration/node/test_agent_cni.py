"""Node agent + CNI plugin end to end, in namespaces: pods get addresses and talk, CHECK, DEL
(idempotent, netns gone), IPAM stays clean, WorkloadEndpoints listed by tabbyctl, two nodes
routed natively from the datastore, a hand-deleted route comes back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controller.node.inuse import live_allocations
from datastore import Datastore, EtcdConfig
from ipam import IPAMClient
from tests.integration.node.conftest import PYTHON, NodeLab, apply_pool, in_ns, sh

pytestmark = pytest.mark.root


def reaches(node_lab: NodeLab, netns: str, ip: str, within: float = 10.0) -> bool:
    """A ping from ``netns`` to ``ip`` answered within ``within`` seconds (one probe every ~0.2 s)."""
    deadline = time.monotonic() + within
    while True:
        if node_lab.ping(netns, ip, wait=1):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def ipam_check(config: EtcdConfig) -> dict:
    async def body() -> dict:
        async with Datastore(config) as ds:
            report = await IPAMClient(ds).check(in_use=await live_allocations(ds))
            return report.summary()

    return asyncio.run(body())


def handle_ips(config: EtcdConfig, handle: str) -> list[str]:
    async def body() -> list[str]:
        async with Datastore(config) as ds:
            return await IPAMClient(ds).ips_by_handle(handle)

    return asyncio.run(body())


def tabbyctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), *args], capture_output=True, text=True, env=env,
                          timeout=30)


def routes(lab: NodeLab, node: str) -> str:
    return in_ns(lab.nodes[node], "ip", "route", "show", "proto", "81").stdout


def test_single_node_add_check_del(node_lab: NodeLab, etcd_env: dict[str, str], etcd_config: EtcdConfig) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(1)
    (a,) = node_lab.nodes
    # The agent starts before its interface has an address (the lab adds it after start).
    node_lab.start_agent(a, wait=False)
    sock = node_lab.run_root / a / "agent.sock"
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.1)
    code, out = node_lab.plugin(a, "STATUS", cni_version="1.1.0")
    assert code == 1 and out["code"] == 50 and "node address" in out["msg"], out
    in_ns(node_lab.nodes[a], "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    in_ns(node_lab.nodes[a], "ip", "link", "set", "eth0p", "up")
    in_ns(node_lab.nodes[a], "ip", "link", "set", "eth0", "up")
    node_lab.set_address(a)
    node_lab.wait_ready(a)
    assert oct(sock.stat().st_mode & 0o777) == "0o600"

    p1 = node_lab.add_pod(a, "web-1", namespace="shop")
    p2 = node_lab.add_pod(a, "web-2", namespace="shop")
    res = p1.result
    assert res["cniVersion"] == "1.0.0"
    assert res["ips"][0]["address"].endswith("/32") and res["ips"][0]["gateway"] == "169.254.1.1"
    host_if = res["interfaces"][0]["name"]
    assert host_if.startswith("tab") and len(host_if) == 14 and res["interfaces"][0]["mac"] == "ee:ee:ee:ee:ee:ee"
    assert res["interfaces"][1]["sandbox"] == f"/run/netns/{p1.netns}"
    assert f"{p1.ip} dev {host_if}" in routes(node_lab, a)
    assert node_lab.ping(p1.netns, node_lab.node_ip(a))
    assert node_lab.ping(p1.netns, p2.ip)
    assert in_ns(node_lab.nodes[a], "cat", f"/proc/sys/net/ipv4/conf/{host_if}/proxy_arp").stdout.strip() == "1"

    # CHECK passes, with and without prevResult
    args = node_lab.pod_args(p1, "shop")
    conf = node_lab.netconf(prevResult=res)
    code, out = node_lab.plugin(a, "CHECK", container_id=p1.container_id, netns=f"/run/netns/{p1.netns}", args=args,
                                conf=conf)
    assert code == 0, out

    # the WorkloadEndpoint, listed by tabbyctl
    got = tabbyctl(etcd_env, "get", "workloadendpoints", "-A", "-o", "json")
    assert got.returncode == 0, got.stderr
    items = json.loads(got.stdout)
    items = items.get("items", items) if isinstance(items, dict) else items
    weps = {w["metadata"]["name"]: w for w in items}
    name = f"{a}-k8s-web--1-eth0"
    assert name in weps, list(weps)
    wep = weps[name]
    assert wep["metadata"]["namespace"] == "shop"
    assert wep["metadata"]["labels"]["projectcalico.org/namespace"] == "shop"
    assert wep["metadata"]["labels"]["projectcalico.org/orchestrator"] == "k8s"
    assert wep["spec"]["ipNetworks"] == [f"{p1.ip}/32"] and wep["spec"]["interfaceName"] == host_if
    assert ipam_check(etcd_config)["problems"] == 0

    # DEL removes veth, route, WEP, handle; twice is fine; with the netns gone too
    code, out = node_lab.del_pod(p1)
    assert code == 0, out
    assert in_ns(node_lab.nodes[a], "ip", "link", "show", host_if, check=False).returncode != 0
    assert f"{p1.ip} dev" not in routes(node_lab, a)
    assert handle_ips(etcd_config, f"tabbynet.{p1.container_id}") == []
    assert name not in tabbyctl(etcd_env, "get", "workloadendpoints", "-A").stdout
    code, out = node_lab.del_pod(p1)
    assert code == 0, out
    sh("ip", "netns", "del", p2.netns)
    code, out = node_lab.del_pod(p2)
    assert code == 0, out
    assert handle_ips(etcd_config, f"tabbynet.{p2.container_id}") == []
    assert f"{p2.ip} dev" not in routes(node_lab, a)
    summary = ipam_check(etcd_config)
    assert summary["problems"] == 0, summary

    # ADD after a half-done ADD (veth left behind, same container): cleaned up first, one address
    p3 = node_lab.add_pod(a, "web-3", namespace="shop")
    code, out = node_lab.plugin(a, "ADD", container_id=p3.container_id, netns=f"/run/netns/{p3.netns}",
                                args=node_lab.pod_args(p3, "shop"))
    assert code == 0, out
    assert len(handle_ips(etcd_config, f"tabbynet.{p3.container_id}")) == 1
    p3.result = out
    assert node_lab.ping(p3.netns, node_lab.node_ip(a))
    assert ipam_check(etcd_config)["problems"] == 0


def test_two_nodes_native_routing_and_repair(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    node_lab.set_address(a)
    node_lab.set_address(b)
    node_lab.start_agent(a, TABBY_RESYNC_INTERVAL="5")
    node_lab.start_agent(b, TABBY_RESYNC_INTERVAL="5")
    pa = node_lab.add_pod(a, "pa")
    pb = node_lab.add_pod(b, "pb")
    # pb's ADD returns once b's kernel has its route; a learns b's new block from the datastore watch
    # a moment later (a single immediate ping raced it on a loaded machine): bounded, then it must work
    assert reaches(node_lab, pa.netns, pb.ip), routes(node_lab, a) + routes(node_lab, b)
    assert reaches(node_lab, pb.netns, pa.ip), routes(node_lab, a) + routes(node_lab, b)
    # the block of b is routed via b's address on a
    block_b = next(line for line in routes(node_lab, b).splitlines() if line.startswith("blackhole")).split()[1]
    assert f"{block_b} via {node_lab.node_ip(b)} dev eth0" in routes(node_lab, a)

    # a route deleted by hand comes back (kernel watch; the periodic resync is the fallback)
    in_ns(node_lab.nodes[a], "ip", "route", "del", block_b)
    in_ns(node_lab.nodes[a], "ip", "route", "del", f"{pa.ip}/32")
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        text = routes(node_lab, a)
        if f"{block_b} via" in text and f"{pa.ip} dev" in text:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"routes not restored: {routes(node_lab, a)}")
    assert node_lab.ping(pa.netns, pb.ip)


def test_two_nodes_vxlan(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    """vxlanMode Always: the agents allocate VTEP addresses, create vxlan.tabby and route through it."""
    apply_pool(etcd_env, vxlanMode="Always")
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    node_lab.set_address(a)
    node_lab.set_address(b)
    node_lab.start_agent(a)
    node_lab.start_agent(b)
    pa = node_lab.add_pod(a, "va")
    pb = node_lab.add_pod(b, "vb")
    # Both directions must be programmed before a ping can get a reply: wait for each node to
    # route the other's block through vxlan.tabby (the agents converge independently).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all("vxlan.tabby" in routes(node_lab, n) for n in (a, b)):
        time.sleep(0.2)
    for n in (a, b):
        assert "dev vxlan.tabby onlink" in routes(node_lab, n), routes(node_lab, n)
    mtu = in_ns(pa.netns, "cat", "/sys/class/net/eth0/mtu", check=False).stdout.strip()
    link = in_ns(pa.netns, "ip", "-o", "link", "show", "eth0").stdout
    assert "mtu 1450" in link, (mtu, link)
    assert node_lab.ping(pa.netns, pb.ip, count=2), routes(node_lab, a)
    node = json.loads(tabbyctl(etcd_env, "get", "node", a, "-o", "json").stdout)
    assert node["spec"]["ipv4VXLANTunnelAddr"] and node["spec"]["vxlanTunnelMACAddr"]


def test_workload_devices_are_adopted_across_a_restart(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    """The workload manager (on the dataplane thread) made the pods' veths; a new agent after a
    SIGKILL leaves them as they are (same ifindex: not re-made), the pods keep their routes and
    connectivity, and the new agent's DEL removes a veth the old one made."""
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a = next(iter(node_lab.nodes))
    node_lab.set_address(a)
    node_lab.start_agent(a)
    p1 = node_lab.add_pod(a, "adopt-1")
    p2 = node_lab.add_pod(a, "adopt-2")
    ns_a = node_lab.nodes[a]

    def ifindex(name: str) -> int:
        return int(in_ns(ns_a, "cat", f"/sys/class/net/{name}/ifindex").stdout)

    veths = {p.name: p.result["interfaces"][0]["name"] for p in (p1, p2)}
    before = {name: ifindex(v) for name, v in veths.items()}
    node_lab.agents[a].stop(signal.SIGKILL)
    node_lab.start_agent(a)
    time.sleep(1.0)  # its first sync and full resync are done (wait_ready), and a little more
    assert {name: ifindex(v) for name, v in veths.items()} == before
    routes = in_ns(ns_a, "ip", "route", "show", "proto", "81").stdout
    for p in (p1, p2):
        assert f"{p.ip} dev {veths[p.name]}" in routes, routes
        assert node_lab.ping(p.netns, node_lab.node_ip(a)), f"{p.name} lost connectivity after the restart"
    code, out = node_lab.del_pod(p1)
    assert code == 0, out
    assert in_ns(ns_a, "ip", "link", "show", veths[p1.name], check=False).returncode != 0
    assert ifindex(veths[p2.name]) == before[p2.name]
    p3 = node_lab.add_pod(a, "adopt-3")
    assert node_lab.ping(p3.netns, node_lab.node_ip(a))
