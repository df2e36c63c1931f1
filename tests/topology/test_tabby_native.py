"""examples/two-node-native: two Tabby nodes on one /24, driven through the CLI as a user would.

Pods on both nodes (``lab pod add``, the real CNI plugin), all-pairs reachability (``lab check``),
TCP between nodes, the kernel routes each agent programmed (next hop and device), a failing
pair reported with exit 1, ``pod del``, and ``destroy`` with etcd already dead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from lab.state import LabState
from tests.topology.conftest import EXAMPLES, lab_cli, netns_list
from tests.topology.tabby_support import (  # noqa: F401 - tabby_lab_fixture provides the tabby_lab fixture
    TabbyLab,
    blackhole,
    items,
    local_pod_route,
    pod_netns_left,
    tabby_lab_fixture,
    tcp_echo,
)

NODE_IP = {"native1": "10.10.1.11", "native2": "10.10.1.12"}


@pytest.mark.parametrize("backend", ["vxlan", "bird"])
def test_two_node_native(tabby_lab: Callable[..., TabbyLab], backend: str) -> None:
    """``vxlan`` (the example's setting): remote blocks from the datastore; ``bird``: from the BGP mesh."""
    lab = tabby_lab(EXAMPLES / "two-node-native.clab.yml", {"CALICO_NETWORKING_BACKEND": backend})
    lab.add_pod("native1", "web-1", "--label", "app=web")
    lab.add_pod("native1", "web-2", "--port", "http=TCP/8080", "--port", "dns=UDP/53")
    lab.add_pod("native2", "db-1", "--namespace", "shop", "--label", "app=db")

    # routes in each node's kernel: own block blackholed, local pods /32 on their veth, the
    # other node's block via that node's address on eth1 (native: no encapsulation)
    blocks = {"native1": lab.block_of("web-1"), "native2": lab.block_of("db-1")}
    assert lab.block_of("web-2") == blocks["native1"]
    for node, other in (("native1", "native2"), ("native2", "native1")):
        expected = {blocks[node]: blackhole(), blocks[other]: ("unicast", NODE_IP[other], "eth1", False)}
        for name, pod in lab.pods.items():
            if pod["node"] == node:
                expected[f"{lab.pod_ip(name)}/32"] = local_pod_route()
        lab.wait_routes(node, expected)

    if backend == "bird":  # the routes above came over BGP: the mesh session is up on both sides
        for node, peer in (("native1", "native2"), ("native2", "native1")):
            status = lab.exec(node, "tabbyctl", "node", "status", "--nodename", node)
            assert status.returncode == 0 and NODE_IP[peer] in status.stdout and "Established" in status.stdout, \
                status.stdout + status.stderr

    # all pairs answer, in the documented JSON shape
    proc = lab.cli("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert (report["pods"], report["pairs"], report["ok"], report["failed"]) == (3, 6, 6, [])
    assert report["matrix"]["web-1"] == {"web-2": True, "shop/db-1": True}

    # TCP across the nodes, both ways
    pods = lab.pods
    assert tcp_echo(pods["db-1"]["netns"], lab.pod_ip("db-1"), pods["web-1"]["netns"]) == \
        f"echo:hello from {pods['web-1']['netns']}"
    assert tcp_echo(pods["web-2"]["netns"], lab.pod_ip("web-2"), pods["db-1"]["netns"], port=9090).startswith("echo:")

    # the WorkloadEndpoints carry the labels given to pod add
    weps = items(lab.tabbyctl_json("native1", "get", "workloadendpoints", "-A"))
    by_pod = {(w["metadata"]["namespace"], w["spec"]["pod"]): w for w in weps}
    assert by_pod[("shop", "db-1")]["metadata"]["labels"]["app"] == "db"
    assert by_pod[("default", "web-1")]["spec"]["ipNetworks"] == lab.pods["web-1"]["ips"]
    # ... and the named ports given to pod add --port (what NetworkPolicy's named ports resolve against)
    assert by_pod[("default", "web-2")]["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080},
                                                            {"name": "dns", "protocol": "UDP", "port": 53}]

    # lab pod label: a live pod's labels change in its WorkloadEndpoint (set, overwrite, remove)
    proc = lab_cli("pod", "label", "-t", str(lab.path), "native2", "db-1", "--namespace", "shop", "app=cache",
                   "tier=back")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["labels"] == {"app": "cache", "tier": "back"}
    proc = lab_cli("pod", "label", "-t", str(lab.path), "native2", "db-1", "--namespace", "shop", "--remove", "tier")
    assert proc.returncode == 0, proc.stderr
    weps = items(lab.tabbyctl_json("native1", "get", "workloadendpoints", "-A"))
    db = next(w for w in weps if w["spec"]["pod"] == "db-1")
    assert db["metadata"]["labels"]["app"] == "cache" and "tier" not in db["metadata"]["labels"], db
    listed = {p["name"]: p for p in json.loads(lab_cli("pod", "list", "-t", str(lab.path)).stdout)}
    assert listed["db-1"]["labels"] == {"app": "cache"}

    # a pod that cannot answer: check names the pair and exits 1
    lab_ns = pods["web-2"]["netns"]
    subprocess.run(["ip", "-n", lab_ns, "link", "set", "eth0", "down"], check=True)
    proc = lab.cli("check", "--count", "1", "--wait", "1")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] == 2 and report["pairs"] == 6
    assert {(f["from"], f["to"]) for f in report["failed"]} == {
        ("web-1", "web-2"), ("shop/db-1", "web-2"), ("web-2", "web-1"), ("web-2", "shop/db-1")}
    assert proc.stderr.startswith("error: 4 of 6 pod pairs cannot reach each other") and "Traceback" not in proc.stderr

    # pod del: CNI DEL removes the route and the WEP; the namespace goes
    proc = lab_cli("pod", "del", "-t", str(lab.path), "native1", "web-2")
    assert proc.returncode == 0, proc.stderr
    assert lab_ns not in netns_list()
    expected = {blocks["native1"]: blackhole(), blocks["native2"]: ("unicast", NODE_IP["native2"], "eth1", False),
                f"{lab.pod_ip('web-1')}/32": local_pod_route()}
    lab.wait_routes("native1", expected)
    assert {w["spec"]["pod"] for w in items(lab.tabbyctl_json("native2", "get", "workloadendpoints", "-A"))} == {
        "web-1", "db-1"}

    # user mistakes: one line, exit 1
    for args, message in (
        (("pod", "add", "-t", str(lab.path), "etcd", "x"), "error: node etcd runs image"),
        (("pod", "add", "-t", str(lab.path), "native1", "web-1"), "error: pod default/web-1 already exists"),
        (("pod", "add", "-t", str(lab.path), "nope", "x"), "error: lab "),
        (("pod", "add", "-t", str(lab.path), "native1", "Bad_Name"), "error: pod name 'Bad_Name' is not valid"),
        (("pod", "del", "-t", str(lab.path), "native1", "ghost"), "error: lab "),
        (("pod", "add", "-t", str(lab.path), "native1", "x", "--port", "http=TCP"),
         "error: --port 'http=TCP': expected"),
        (("pod", "add", "-t", str(lab.path), "native1", "x", "--port", "http=ICMP/1"),
         "error: --port 'http=ICMP/1': the protocol"),
        (("pod", "add", "-t", str(lab.path), "native1", "x", "--port", "h=TCP/70000"),
         "error: --port 'h=TCP/70000': the port"),
        (("pod", "label", "-t", str(lab.path), "native1", "ghost", "a=b"), "error: lab "),
        (("pod", "label", "-t", str(lab.path), "native1", "web-1", "bad key=b"), "error: --label 'bad key=b'"),
        (("pod", "label", "-t", str(lab.path), "native1", "web-1", "--remove", "nope"), "error: node native1: tabbyctl "
         "label workloadendpoint"),
    ):
        proc = lab_cli(*args)
        assert proc.returncode == 1 and proc.stderr.startswith(message), (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    # an ADD that cannot succeed (native2's agent is gone): retried until --timeout, then one
    # line with the CNI code, and the half-made pod is undone (namespace and record gone)
    state = LabState.load(lab.topo.name)
    assert state is not None
    (agent,) = [p for p in state.processes if p.node == "native2"]
    os.kill(agent.pid, signal.SIGKILL)
    proc = lab_cli("pod", "add", "-t", str(lab.path), "native2", "late", "--timeout", "2")
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("error: node native2: CNI ADD for pod default/late failed (code 11)"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not [ns for ns in netns_list() if ns.endswith("-pod-late")]
    listed = json.loads(lab_cli("pod", "list", "-t", str(lab.path)).stdout)
    assert sorted(p["name"] for p in listed) == ["db-1", "web-1"]

    # destroy needs no etcd: kill it first, destroy still removes every pod namespace, quickly
    (etcd,) = [p for p in state.processes if p.node == "etcd"]
    os.kill(etcd.pid, signal.SIGKILL)
    started = time.monotonic()
    proc = lab_cli("destroy", "-t", str(lab.path))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 15
    assert pod_netns_left(lab.topo) == []
    assert not [ns for ns in netns_list() if ns in lab.topo.netns_names()]
    # native2's agent died by SIGKILL, so nothing removed its by-netns alias (a dangling link into
    # its removed run directory; the agent removes it only on a clean stop). Drop it so the
    # fixture's leftover check covers everything else.
    for link in (lab.run_root / "by-netns").glob("*.sock"):
        if link.is_symlink() and not link.exists():
            link.unlink()
