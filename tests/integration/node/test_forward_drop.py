"""A FORWARD policy DROP (Docker's `ip filter FORWARD`) inside the node namespaces: pods cannot talk until
the agent inserts its accepts for tab* there; `tabbyctl node checksystem` reports the chain and whether
the accepts are in place."""

from __future__ import annotations

import json
import subprocess
import time

from .conftest import PYTHON, NodeLab, apply_pool, in_ns

DOCKER_FORWARD = ("add table ip filter\n"
                  "add chain ip filter FORWARD { type filter hook forward priority filter; policy drop; }\n")


def checksystem(ns: str) -> subprocess.CompletedProcess[str]:
    return in_ns(ns, PYTHON, "-m", "controller.cli.main", "node", "checksystem", check=False, timeout=60)


def ours(ns: str) -> int:
    listing = json.loads(in_ns(ns, "nft", "-j", "list", "chain", "ip", "filter", "FORWARD").stdout)
    return sum(1 for o in listing["nftables"] if "rule" in o and o["rule"].get("comment") == "tabby-forward-accept")


def test_forward_drop_gets_accepts(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    for n in (a, b):
        node_lab.set_address(n)
        node_lab.start_agent(n, TABBY_RESYNC_INTERVAL="1")
    pa, pb = node_lab.add_pod(a, "pa"), node_lab.add_pod(b, "pb")
    assert node_lab.ping(pa.netns, pb.ip)
    # Docker arrives while node a's agent is stopped (routes stay): FORWARD policy drop in both nodes.
    node_lab.agents[a].stop()
    for n in (a, b):
        subprocess.run(["ip", "netns", "exec", node_lab.nodes[n], "nft", "-f", "-"], input=DOCKER_FORWARD,
                       text=True, check=True, capture_output=True, timeout=10)
    assert ours(node_lab.nodes[a]) == 0
    assert not node_lab.ping(pa.netns, pb.ip, wait=1)  # forwarded pod traffic is dropped in node a
    res = checksystem(node_lab.nodes[a])
    assert res.returncode == 1 and "ip filter FORWARD drops forwarded traffic" in res.stdout, res.stdout
    node_lab.start_agent(a)
    # ...until the agents insert their accepts (their periodic pass, here every second).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(ours(node_lab.nodes[n]) == 2 for n in (a, b)):
        time.sleep(0.2)
    assert all(ours(node_lab.nodes[n]) == 2 for n in (a, b))
    assert node_lab.ping(pa.netns, pb.ip, count=3)
    res = checksystem(node_lab.nodes[a])
    assert res.returncode == 0, res.stdout
    assert "ip filter FORWARD has policy drop; Tabby's accepts for tab* are in place" in res.stdout
    time.sleep(2.5)  # later passes do not insert them again
    assert ours(node_lab.nodes[a]) == 2
