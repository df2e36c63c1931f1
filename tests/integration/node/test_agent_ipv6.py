"""Dual-stack pods through the REAL node agent and CNI plugin (issue 4).

Why: the pieces are tested one by one (IPAM assigns IPv6, felix_like.workload sets up an IPv6
pod side, routes.py calculates IPv6 routes); this proves what a user of the agent gets. An IPv4
and an IPv6 pool, a netconf asking for both families (``ipam.assign_ipv6: "true"``, Calico's
switch; IPv4 stays on by default). Each pod gets a /32 and a /128, its IPv6 default route points
at the host veth's link-local address, the node routes the /128 to the veth, and two pods on the
same node reach each other over IPv6 (ping and TCP, the peer keeps its address).

Across nodes the agent has no IPv6 node address (no ``IP6``/IPv6 autodetection: the Node gets
``bgp.ipv4Address`` only), so remote IPv6 blocks get no route; the second test pins down exactly
that behaviour so a future IPv6 node address shows up as a deliberate change.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.node.conftest import PYTHON, NodeLab, Pod, apply_pool, in_ns, sh

pytestmark = pytest.mark.root

POOL6_CIDR = "fd00:246::/64"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll (bounded) until ``predicate`` holds; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    assert predicate(), f"timed out after {timeout}s waiting for {what}"


def apply_pool6(etcd_env: dict[str, str]) -> None:
    """The IPv6 pool (blockSize left to the default, 122)."""
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool6"},
           "spec": {"cidr": POOL6_CIDR}}
    proc = subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), "apply", "-f", "-"], input=json.dumps(doc),
                          capture_output=True, text=True, env=etcd_env, timeout=30)
    assert proc.returncode == 0, proc.stderr


def add_dual_pod(lab: NodeLab, node: str, name: str) -> Pod:
    """A pod through the real plugin with a netconf asking for IPv4 and IPv6."""
    ns = f"tbp-{lab.tag}-{name}"
    sh("ip", "netns", "add", ns)
    pod = Pod(name, ns, node, f"c{name}{lab.tag}")
    lab.pods.append(pod)
    conf = lab.netconf(ipam={"type": "tabby-ipam", "assign_ipv4": "true", "assign_ipv6": "true"})
    code, out = lab.plugin(node, "ADD", container_id=pod.container_id, netns=f"/run/netns/{ns}",
                           args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}", conf=conf)
    assert code == 0, (out, lab.debug(node))
    pod.result = out
    return pod


def addresses(pod: Pod) -> tuple[str, str]:
    """(IPv4, IPv6) of a dual-stack result, bare."""
    ips = [i["address"] for i in pod.result["ips"]]
    v4 = [a for a in ips if ":" not in a]
    v6 = [a for a in ips if ":" in a]
    assert len(v4) == 1 and len(v6) == 1, ips
    return v4[0].split("/")[0], v6[0].split("/")[0]


def routes6(lab: NodeLab, node: str) -> str:
    return in_ns(lab.nodes[node], "ip", "-6", "route", "show", "proto", "81").stdout


def ping6(ns: str, ip: str) -> bool:
    return in_ns(ns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", ip, check=False, timeout=15).returncode == 0


_TCP6_SERVER = r"""
import socket, sys
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
srv.settimeout(8)
print("listening", flush=True)
conn, peer = srv.accept()
conn.settimeout(5)
conn.sendall(b"echo:" + conn.recv(100))
print(peer[0], flush=True)
"""
_TCP6_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8)
c.sendall(b"hello")
print(c.recv(100).decode(), flush=True)
"""


def tcp6_peer(server_ns: str, client_ns: str, ip: str, port: int) -> str:
    """Connect over IPv6 from ``client_ns`` to ``ip:port`` in ``server_ns``; the peer address the server saw.

    Not tests.uml.nslab.Lab.tcp_peer: that server is IPv4 only. Bounded: the server gives up after 8 s
    and is killed in any case.
    """
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, PYTHON, "-c", _TCP6_SERVER, ip, str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening", server.stderr.read() if server.stderr else ""
        reply = in_ns(client_ns, PYTHON, "-c", _TCP6_CLIENT, ip, str(port), timeout=15)
        assert reply.stdout.strip() == "echo:hello", reply
        out, _err = server.communicate(timeout=10)
        return out.strip()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=5)


def test_dual_stack_pods_same_node(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    apply_pool(etcd_env)
    apply_pool6(etcd_env)
    node_lab.add_nodes(2)  # eth0 for the node address; only a is used
    a = next(iter(node_lab.nodes))
    node_lab.set_address(a)
    node_lab.start_agent(a)
    p1 = add_dual_pod(node_lab, a, "ds-1")
    p2 = add_dual_pod(node_lab, a, "ds-2")

    # the CNI result: a /32 with the IPv4 gateway, a /128, default routes for both families
    ips = p1.result["ips"]
    assert ips[0]["address"].endswith("/32") and ips[0]["gateway"] == "169.254.1.1", ips
    assert ips[1]["address"].endswith("/128") and "gateway" not in ips[1], ips
    assert ipaddress.ip_interface(ips[1]["address"]).ip in ipaddress.ip_network(POOL6_CIDR), ips
    assert {r["dst"] for r in p1.result["routes"]} == {"0.0.0.0/0", "::/0"}
    _v4_1, v6_1 = addresses(p1)
    v4_2, v6_2 = addresses(p2)

    # inside the pod: the /128 on eth0, the default route via the host veth's link-local
    host_if = p1.result["interfaces"][0]["name"]
    addr = json.loads(in_ns(p1.netns, "ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope", "global").stdout)
    assert [(x["local"], x["prefixlen"]) for x in addr[0]["addr_info"] if "local" in x] == [(v6_1, 128)], addr
    host_ll = [
        x["local"]
        for x in json.loads(in_ns(node_lab.nodes[a], "ip", "-j", "-6", "addr", "show", "dev", host_if).stdout)[0][
            "addr_info"]
        if x.get("local", "").startswith("fe80:")
    ]
    assert host_ll, f"host veth {host_if} has no link-local address"
    default6 = json.loads(in_ns(p1.netns, "ip", "-j", "-6", "route", "show", "default").stdout)
    assert [(r.get("gateway"), r.get("dev")) for r in default6] == [(host_ll[0], "eth0")], default6

    # on the node: /128 -> veth, the block of the IPv6 pool blackholed, IPv6 forwarding on
    text = routes6(node_lab, a)
    assert f"{v6_1} dev {host_if}" in text, text
    # the block's blackhole follows the block's affinity through the watch (ADD waits for the pod's own
    # routes, not for the block's), so it may land a moment after ADD returns
    wait_until(lambda: any(line.startswith("blackhole fd00:246:") and "/122" in line
                           for line in routes6(node_lab, a).splitlines()), 5, "the IPv6 block blackholed")
    forwarding = in_ns(node_lab.nodes[a], "cat", "/proc/sys/net/ipv6/conf/all/forwarding").stdout.strip()
    assert forwarding == "1", "the agent left IPv6 forwarding off in the node namespace"

    # pod to pod over IPv6 (and IPv4 still): ping both ways, TCP keeps the source address
    assert ping6(p1.netns, v6_2), routes6(node_lab, a)
    assert ping6(p2.netns, v6_1)
    assert node_lab.ping(p1.netns, v4_2)
    assert tcp6_peer(p2.netns, p1.netns, v6_2, 8086) == v6_1

    # DEL removes the /128 route: the address is unreachable again
    code, out = node_lab.del_pod(p1)
    assert code == 0, out
    wait_until(lambda: f"{v6_1} dev" not in routes6(node_lab, a), 5, "the /128 route removed")
    assert not ping6(p2.netns, v6_1)


def test_dual_stack_across_nodes_has_no_ipv6_route(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    """What the agent does today across nodes: IPv4 routed from the datastore, IPv6 not (no node IPv6 address)."""
    apply_pool(etcd_env)
    apply_pool6(etcd_env)
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    for n in (a, b):
        node_lab.set_address(n)
        in_ns(node_lab.nodes[n], "ip", "-6", "addr", "add", f"fd00:77::{list(node_lab.nodes).index(n) + 1}/64",
              "dev", "eth0", "nodad")
        node_lab.start_agent(n)
    pa = add_dual_pod(node_lab, a, "xa")
    pb = add_dual_pod(node_lab, b, "xb")
    addresses(pa)
    v4_b, v6_b = addresses(pb)
    assert node_lab.ping(pa.netns, v4_b)  # IPv4 works across
    block6_b = next(line.split()[1] for line in routes6(node_lab, b).splitlines() if line.startswith("blackhole"))
    node = json.loads(subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), "get", "node", b, "-o", "json"],
                                     capture_output=True, text=True, env=etcd_env, timeout=30).stdout)
    assert "ipv6Address" not in node["spec"].get("bgp", {}), node

    def skip_reasons() -> set[str]:
        log = [json.loads(line) for line in node_lab.agents[a].log_text().splitlines() if line.startswith("{")]
        return {e.get("reason") for e in log if e.get("event") == "routes.skipped" and e.get("dst") == block6_b}

    # a's agent saw b's IPv6 block and decided against a route, saying why
    wait_until(lambda: bool(skip_reasons()), 10, f"a's agent to consider {block6_b}")
    assert skip_reasons() == {f"node {b} has no IPv6 address"}
    assert block6_b not in routes6(node_lab, a), routes6(node_lab, a)
    assert not ping6(pa.netns, v6_b)
    # the pod's IPv6 works up to its node (the node's own IPv6 address answers): what is missing is the route
    assert ping6(pa.netns, "fd00:77::1")
