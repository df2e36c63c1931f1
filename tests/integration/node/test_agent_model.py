"""The agent's one validated model, end to end with real etcd and namespaces: an IPPool that fails
validation, written straight into etcd, is ignored by allocation, routing and the tunnel devices
alike and is listed by ``tabbyctl node status``; and an agent started on resources written by the
previous release (recorded from it: data/previous_release_etcd.json) adopts them and keeps working.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from datastore import Datastore, EtcdConfig, Put
from tests.integration.node.conftest import PYTHON, NodeLab, apply_pool, in_ns

pytestmark = pytest.mark.root

DATA = Path(__file__).parent / "data"
BAD_POOL = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "bad"},
            "spec": {"cidr": "10.247.0.0/16", "ipipMode": "Always", "vxlanMode": "Always", "natOutgoing": True}}


def put(config: EtcdConfig, items: dict[str, Any]) -> None:
    async def body() -> None:
        async with Datastore(config) as ds:
            await ds.txn([], [Put(k, v) for k, v in items.items()])

    asyncio.run(body())


def node_status(lab: NodeLab, env: dict[str, str], node: str) -> dict[str, Any]:
    proc = subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), "node", "status", "--nodename", node, "-o", "json"],
                          capture_output=True, text=True, env={**env, "TABBY_RUN_ROOT": str(lab.run_root)},
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_invalid_pool_is_ignored_by_allocation_routing_and_tunnels(
    node_lab: NodeLab, etcd_env: dict[str, str], etcd_config: EtcdConfig
) -> None:
    apply_pool(etcd_env)  # 10.246.0.0/16, valid
    put(etcd_config, {"resources/v3/ippools/bad": BAD_POOL})  # what `apply` would refuse
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    for n in (a, b):
        node_lab.set_address(n)
    for n in (a, b):
        node_lab.start_agent(n)
    # a block of b's inside the bad pool, as if allocated before the rule existed
    put(etcd_config, {"ipam/v2/block/10.247.0.0-26": {
        "cidr": "10.247.0.0/26", "affinity": f"host:{b}", "allocations": [None] * 64,
        "unallocated": list(range(64)), "attributes": [], "strictAffinity": False, "deleted": False}})
    pods = [node_lab.add_pod(a, f"p{i}") for i in range(3)]
    assert all(p.ip.startswith("10.246.") for p in pods)  # allocation never used the bad pool
    conf = node_lab.netconf(ipam={"type": "tabby-ipam", "ipv4_pools": ["10.247.0.0/16"]})
    code, out = node_lab.plugin(a, "ADD", container_id="c-bad", conf=conf, plugin_type="tabby-ipam",
                                netns=f"/run/netns/{pods[0].netns}")
    assert code != 0 and "10.247.0.0/16" in out["msg"], out  # the requested pool "does not exist"
    routes = in_ns(node_lab.nodes[a], "ip", "route", "show", "proto", "81").stdout
    # routed as a block in no pool (native), not through the bad pool's encapsulation
    assert f"10.247.0.0/26 via {node_lab.node_ip(b)} dev eth0" in routes, routes
    links = in_ns(node_lab.nodes[a], "ip", "-o", "link", "show").stdout
    assert "vxlan.tabby" not in links and "tunl0" not in links  # no device for the bad pool
    status = node_status(node_lab, etcd_env, a)
    bad = [r for r in status["invalid_resources"] if r["key"] == "resources/v3/ippools/bad"]
    assert bad and not bad[0]["kept_last_good"] and "ipipMode" in bad[0]["problems"][0], status
    table = subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), "node", "status", "--nodename", a],
                           capture_output=True, text=True, env={**etcd_env, "TABBY_RUN_ROOT": str(node_lab.run_root)},
                           timeout=30).stdout
    assert "resources/v3/ippools/bad" in table and "ignored" in table
    log = node_lab.agents[a].log_text()
    assert log.count('"model.invalid"') == 1, "alarm once"  # no repeat on every event


def test_previous_release_resources_are_adopted(
    node_lab: NodeLab, etcd_env: dict[str, str], etcd_config: EtcdConfig
) -> None:
    """etcd content written by the previous release's agents and CNI (two nodes, pods on both, VXLAN
    CrossSubnet pool), then the new agents start: no resource is invalid, the pods' routes are back,
    and a new pod works and reaches an old one."""
    recorded = json.loads((DATA / "previous_release_etcd.json").read_text())
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    rename = {recorded["nodes"][0]: a, recorded["nodes"][1]: b}

    def fix(text: str) -> str:
        for old, new in rename.items():
            text = text.replace(old, new)
        return text

    put(etcd_config, {fix(k): json.loads(fix(json.dumps(v))) for k, v in recorded["kvs"].items()})
    for n in (a, b):
        node_lab.set_address(n)
    for n in (a, b):
        node_lab.start_agent(n)
    for n in (a, b):
        status = node_status(node_lab, etcd_env, n)
        assert status["invalid_resources"] == [], status["invalid_resources"]
    routes_a = in_ns(node_lab.nodes[a], "ip", "route", "show", "proto", "81").stdout
    blocks_b = [json.loads(fix(json.dumps(v)))["cidr"] for k, v in recorded["kvs"].items()
                if k.startswith("ipam/v2/block/") and v.get("affinity") == f"host:{recorded['nodes'][1]}"]
    assert blocks_b and all(c in routes_a for c in blocks_b), routes_a
    pod_b = node_lab.add_pod(b, "pod-b")
    new_a = node_lab.add_pod(a, "new-a")
    assert node_lab.ping(new_a.netns, pod_b.ip, count=3)
