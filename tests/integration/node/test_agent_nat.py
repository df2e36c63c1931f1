"""natOutgoing through the REAL node agent (issue 4): pool flag in etcd -> agent -> nft -> packets.

felix_like/nat.py is tested on its own (tests/integration/felix_like/test_nat_outgoing.py) and the
agent's tunnel/NAT wiring in unit tests; this test closes the loop a user sees. One node
namespace runs the agent (``CALICO_NETWORKING_BACKEND=vxlan`` as the other node tests: no BGP),
pods come from the real CNI plugin, and an "outside" namespace holds a TEST-NET address
(203.0.113.1) behind the node's eth0 (203.0.113.2/24, the node's default route points there, all
inside the node namespace). A tiny bounded TCP server prints the peer address it saw:

* natOutgoing on: the outside sees the node's address, not the pod's;
* pod to pod (same pool) keeps the pod's source even with natOutgoing on;
* natOutgoing switched off with ``tabbyctl patch``: the outside sees the pod's address, and the
  agent got there by changing set elements (rule handle unchanged, ``kind=elements`` logged),
  not by rebuilding the table;
* the ``tabby-nat`` table is in the node namespace and a foreign table there is left unchanged.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.node.conftest import POOL_CIDR, PYTHON, NodeLab, apply_pool, in_ns, sh
from tests.uml.nslab import Lab, Netns

pytestmark = pytest.mark.root

OUTSIDE_IP = "203.0.113.1"
NODE_IP = "203.0.113.2"
#: A table somebody else owns in the node namespace (kube-proxy, the admin, ...): Tabby must not touch it.
FOREIGN_TABLE = """table ip foreign-nat {
\tchain post {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tip daddr 198.51.100.0/24 masquerade comment "not tabby's"
\t}
}
"""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll (bounded) until ``predicate`` holds; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    assert predicate(), f"timed out after {timeout}s waiting for {what}"


def nft_json(ns: str, *args: str) -> list[dict]:
    """``nft -j list ...`` in ``ns`` as the list of objects (empty when the table is absent)."""
    proc = in_ns(ns, "nft", "-j", "list", *args, check=False)
    return json.loads(proc.stdout)["nftables"] if proc.returncode == 0 else []


def set_elements(ns: str, name: str) -> set[str]:
    """The CIDRs in one set of ``ip tabby-nat``."""
    out: set[str] = set()
    for item in nft_json(ns, "set", "ip", "tabby-nat", name):
        for elem in (item.get("set") or {}).get("elem", []):
            if isinstance(elem, dict) and "prefix" in elem:
                out.add(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
            else:
                out.add(str(elem))
    return out


def rule_handles(ns: str) -> list[int]:
    return [i["rule"]["handle"] for i in nft_json(ns, "table", "ip", "tabby-nat") if "rule" in i]


def outside(lab: NodeLab, node: str) -> str:
    """An "outside" namespace on TEST-NET-3 behind the node's eth0; returns its name.

    Every address and route is inside the lab's namespaces: the outside knows the pool via the
    node (so an un-NATed pod address can be answered), the node's default route goes outside.
    """
    ns = f"tbo-{lab.tag}"
    sh("ip", "netns", "add", ns)
    lab.extra_ns.append(ns)
    node_ns = lab.nodes[node]
    sh("ip", "link", "add", f"to{lab.tag}", "netns", ns, "type", "veth", "peer", "name", f"tn{lab.tag}", "netns",
       node_ns)
    in_ns(ns, "ip", "link", "set", "lo", "up")
    in_ns(ns, "ip", "link", "set", f"to{lab.tag}", "up")
    in_ns(ns, "ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", f"to{lab.tag}")
    in_ns(ns, "ip", "route", "add", POOL_CIDR, "via", NODE_IP)
    in_ns(node_ns, "ip", "link", "set", f"tn{lab.tag}", "name", "eth0")
    in_ns(node_ns, "ip", "link", "set", "eth0", "up")
    in_ns(node_ns, "ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    in_ns(node_ns, "ip", "route", "add", "default", "via", OUTSIDE_IP)
    return ns


def test_nat_outgoing_through_the_agent(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    apply_pool(etcd_env, natOutgoing=True)
    node_lab.add_nodes(1)
    (a,) = node_lab.nodes
    node_ns = node_lab.nodes[a]
    out_ns = outside(node_lab, a)
    proc = subprocess.run(["ip", "netns", "exec", node_ns, "nft", "-f", "-"], input=FOREIGN_TABLE, text=True,
                          capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    foreign_before = in_ns(node_ns, "nft", "list", "table", "ip", "foreign-nat").stdout

    node_lab.start_agent(a)
    p1 = node_lab.add_pod(a, "nat-1")
    p2 = node_lab.add_pod(a, "nat-2")

    # the agent's table: in the node namespace, the pool in both sets, Calico's rule
    wait_until(lambda: set_elements(node_ns, "masq-pools") == {POOL_CIDR}, 10, "masq-pools = {pool}")
    assert set_elements(node_ns, "pools") == {POOL_CIDR}
    table = in_ns(node_ns, "nft", "list", "table", "ip", "tabby-nat").stdout
    assert "ip saddr @masq-pools ip daddr != @pools masquerade fully-random" in table, table
    handles = rule_handles(node_ns)
    assert len(handles) == 1, table

    tcp = Lab()
    try:
        outside_ns, pod1, pod2 = Netns(out_ns), Netns(p1.netns), Netns(p2.netns)
        # natOutgoing on: the outside sees the node's address
        assert tcp.tcp_peer(outside_ns, pod1, OUTSIDE_IP, 8081) == NODE_IP
        # pod to pod in the same pool: never NATed
        assert tcp.tcp_peer(pod2, pod1, p2.ip, 8082) == p1.ip

        # natOutgoing off: the agent removes the pool from masq-pools (elements only, same rule)
        got = subprocess.run(
            [str(Path(PYTHON).parent / "tabbyctl"), "patch", "ippool", "pool1", "-p",
             '{"spec": {"natOutgoing": false}}'],
            capture_output=True, text=True, env=etcd_env, timeout=30,
        )
        assert got.returncode == 0, got.stderr
        wait_until(lambda: set_elements(node_ns, "masq-pools") == set(), 10, "masq-pools emptied")
        assert set_elements(node_ns, "pools") == {POOL_CIDR}
        assert rule_handles(node_ns) == handles, "the table was rebuilt instead of updating set elements"
        assert tcp.tcp_peer(outside_ns, pod1, OUTSIDE_IP, 8083) == p1.ip

        # and on again: masqueraded again
        apply_pool(etcd_env, natOutgoing=True)
        wait_until(lambda: set_elements(node_ns, "masq-pools") == {POOL_CIDR}, 10, "masq-pools refilled")
        assert rule_handles(node_ns) == handles
        assert tcp.tcp_peer(outside_ns, pod1, OUTSIDE_IP, 8084) == NODE_IP
    finally:
        tcp.close()  # kills the servers; deletes no namespace (it created none)

    log = [json.loads(line) for line in node_lab.agents[a].log_text().splitlines() if line.startswith("{")]
    kinds = [e.get("kind") for e in log if e.get("event") == "nat.applied"]
    assert kinds and kinds[0] == "rebuild" and "elements" in kinds and kinds.count("rebuild") == 1, kinds
    # the foreign table is exactly as it was
    assert in_ns(node_ns, "nft", "list", "table", "ip", "foreign-nat").stdout == foreign_before
