"""IPv6 between nodes: two agents with IP and IP6 (calico-node's names) on one segment, the default mesh.

Each Node gets spec.bgp.ipv6Address from IP6; the mesh then has two sessions per pair, one between the IPv4
addresses (IPv4 unicast) and one between the IPv6 addresses (IPv6 unicast), as calico-node's BIRD has. Each
node's IPv6 /122 block goes over the IPv6 session (ExaBGP, next hop = the node's IPv6 address) into the other
node's kernel (`via <node v6> dev eth0`), and dual-stack pods on the two nodes reach each other over IPv4
and IPv6. IPv6 addresses are added with `nodad` so ExaBGP can bind them at once (the agent also waits for
an address to leave duplicate address detection before it takes it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.bgp.agent_lab import BGP_POOL, TABBYCTL, BgpLab, wait_for
from tests.integration.bgp.test_agent_bgp_tor import tabbyctl_apply
from tests.integration.node.conftest import Pod, apply_pool, in_ns, sh

pytestmark = pytest.mark.root

POOL6 = "fd00:247::/64"
NODE6 = "fd00:213:78::"


@pytest.fixture
def v6_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[BgpLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    try:
        yield lab
    finally:
        lab.cleanup()


def node_ip6(lab: BgpLab, name: str) -> str:
    return f"{NODE6}{list(lab.nodes).index(name) + 1}"


def add_dual_pod(lab: BgpLab, node: str, name: str) -> tuple[Pod, str, str]:
    ns = f"tbp-{lab.tag}-{name}"
    sh("ip", "netns", "add", ns)
    pod = Pod(name, ns, node, f"c{name}{lab.tag}")
    lab.pods.append(pod)
    conf = lab.netconf(ipam={"type": "tabby-ipam", "assign_ipv4": "true", "assign_ipv6": "true"})
    code, out = lab.plugin(node, "ADD", container_id=pod.container_id, netns=f"/run/netns/{ns}",
                           args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}", conf=conf)
    assert code == 0, (out, lab.debug(node))
    pod.result = out
    ips = [i["address"].split("/")[0] for i in out["ips"]]
    v4, v6 = (next(a for a in ips if (":" in a) == six) for six in (False, True))
    return pod, v4, v6


def routes6(lab: BgpLab, name: str) -> list[dict]:
    return json.loads(in_ns(lab.nodes[name], "ip", "-6", "-j", "route", "show", "proto", "81").stdout or "[]")


def block6_of(lab: BgpLab, name: str, ip6: str) -> str:
    for r in routes6(lab, name):
        if r.get("type") == "blackhole" and ipaddress.ip_address(ip6) in ipaddress.ip_network(r["dst"]):
            return str(r["dst"])
    raise AssertionError(f"no IPv6 blackhole block on {name} for {ip6}: {routes6(lab, name)}")


def ping(ns: str, ip: str) -> bool:
    return in_ns(ns, "ping", "-c", "1", "-W", "2", ip, check=False).returncode == 0


def test_ipv6_sessions_and_routes_between_nodes(v6_lab: BgpLab, etcd_env: dict[str, str]) -> None:
    lab = v6_lab
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(etcd_env, {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool6"},
                              "spec": {"cidr": POOL6}})
    lab.add_nodes(2)
    a, b = names = list(lab.nodes)
    for n in names:
        lab.set_address(n)
        in_ns(lab.nodes[n], "ip", "-6", "addr", "add", f"{node_ip6(lab, n)}/64", "dev", "eth0", "nodad")
        lab.start_agent(n, IP6=f"{node_ip6(lab, n)}/64", TABBY_BGP_MESH_BFD="true")
    for n in names:
        other = b if n == a else a
        want = {lab.node_ip(other): "Established", node_ip6(lab, other): "Established"}
        wait_for(f"{n}: IPv4 and IPv6 mesh sessions Established",
                 lambda n=n, want=want: {s["peer_address"]: s["bgp_state"] for s in lab.bgp_status(n)
                                         .get("sessions", [])} == want, timeout=60)
    # BFD on both mesh sessions: one runner per family, the IPv6 one bound to the node's IPv6 address
    for n in names:
        wait_for(f"{n}: BFD Up on the IPv4 and the IPv6 session",
                 lambda n=n: {s["peer_address"]: s["bfd"] for s in lab.bgp_status(n).get("sessions", [])}
                 == dict.fromkeys((lab.node_ip(b if n == a else a), node_ip6(lab, b if n == a else a)), "Up"),
                 timeout=30)
    pods = {n: add_dual_pod(lab, n, f"v6{i}") for i, n in enumerate(names)}
    blocks6 = {n: block6_of(lab, n, pods[n][2]) for n in names}
    for here, there in ((a, b), (b, a)):
        route = wait_for(f"{here}: {there}'s IPv6 block via {there}'s IPv6 address",
                         lambda here=here, there=there: next((r for r in routes6(lab, here)
                                                              if r.get("dst") == blocks6[there]), None), timeout=30)
        assert route.get("gateway") == node_ip6(lab, there) and route.get("dev") == "eth0", route
        paths = [p for p in lab.bgp_status(here)["paths"] if p["prefix"] == blocks6[there]]
        assert [p["peer"] for p in paths] == [node_ip6(lab, there)], paths
    for here, there in ((a, b), (b, a)):
        wait_for(f"pod on {here} -> pod on {there} over IPv6",
                 lambda here=here, there=there: ping(pods[here][0].netns, pods[there][2]), timeout=20, interval=0.5)
        assert ping(pods[here][0].netns, pods[there][1]), "and over IPv4"
    # the Node resource carries the IPv6 address the agent took from IP6 (what the other nodes peer with)
    proc = subprocess.run([TABBYCTL, "get", "node", b, "-o", "json"], capture_output=True, text=True, env=etcd_env,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    node = json.loads(proc.stdout)
    node = node.get("items", [node])[0] if isinstance(node, dict) else node[0]
    assert node["spec"]["bgp"]["ipv6Address"] == f"{node_ip6(lab, b)}/64", node
