"""One validated model for every consumer: an IPPool that fails validation is ignored by IPAM's pool
selection, the route calculation, the tunnel/NAT calculation and BGP's announcements alike (a real
Agent object, fed watch items; no I/O), and a pool whose NEW value fails keeps its last good version
for all of them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from controller.node.agent import Agent
from controller.node.config import NodeConfig
from controller.node.messages import NATUpdate, RouteUpdate
from datastore import KV, WatchEvent, WatchResync

GOOD = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "good"},
        "spec": {"cidr": "10.246.0.0/16", "blockSize": 26}}
# VXLAN and IPIP both on: schema-invalid (Calico refuses it); natOutgoing would show in NAT sets.
BAD = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "bad"},
       "spec": {"cidr": "10.247.0.0/16", "ipipMode": "Always", "vxlanMode": "Always", "natOutgoing": True,
                "disableBGPExport": True}}
ME = {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n1"},
      "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}}}
B = {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n2"},
     "spec": {"bgp": {"ipv4Address": "10.0.0.2/24"}, "ipv4VXLANTunnelAddr": "10.247.9.0"}}


def block(cidr: str, owner: str) -> dict[str, object]:
    return {"cidr": cidr, "affinity": f"host:{owner}", "allocations": [None] * 64, "unallocated": list(range(64)),
            "attributes": [], "strictAffinity": False, "deleted": False}


def kv(key: str, value: object, rev: int = 1) -> KV:
    return KV(key, json.dumps(value).encode(), rev)


def agent(tmp_path: Path) -> Agent:
    cfg = NodeConfig.from_env({"NODENAME": "n1", "CALICO_NETWORKING_BACKEND": "bird", "ETCD_ENDPOINTS": "http://x:1",
                               "TABBY_RUN_ROOT": str(tmp_path)})
    a = Agent(cfg)
    a.graph.set_local_node("10.0.0.1/24", "eth0")
    return a


def feed(a: Agent, item: WatchEvent | WatchResync) -> list[object]:
    a.graph.apply(a.model.apply(item))
    a._ipam_pools = None  # as the agent's watch loop does on IPPool changes
    return a.graph.flush()


def pools_chosen(a: Agent) -> list[str]:
    async def body() -> list[str]:
        return [p.cidr for p in await a.ipam._all_pools()]
    return asyncio.run(body())


def test_never_valid_pool_is_ignored_by_every_consumer(tmp_path: Path) -> None:
    a = agent(tmp_path)
    msgs = feed(a, WatchResync([
        kv("resources/v3/ippools/good", GOOD), kv("resources/v3/ippools/bad", BAD),
        kv("resources/v3/nodes/n1", ME), kv("resources/v3/nodes/n2", B),
        kv("ipam/v2/block/10.247.0.0-26", block("10.247.0.0/26", "n1")),
        kv("ipam/v2/block/10.247.1.0-26", block("10.247.1.0/26", "n2")),
    ], 5))
    assert pools_chosen(a) == ["10.246.0.0/16"]  # IPAM
    nat = next(m for m in msgs if isinstance(m, NATUpdate))
    assert [p.cidr for p in nat.pools] == ["10.246.0.0/16"] and not nat.wanted  # NAT sets
    assert a.graph.tunnels.encapsulations() == set()  # no VXLAN/IPIP device for the bad pool
    routes = {m.dst: m.route for m in msgs if isinstance(m, RouteUpdate)}
    # routing: our block is a blackhole; n2's block is in no (valid) pool: with bird it comes from BGP only
    assert routes["10.247.0.0/26"] is not None and routes["10.247.0.0/26"].type == "blackhole"
    assert "10.247.1.0/26" not in routes
    assert a.bgp is not None
    _local, _nodes, configs, _peers, pools = a.bgp._inputs()
    assert [p.name for p in pools] == ["good"]  # BGP
    assert a.bgp.own_prefixes(pools, configs) == set()  # the block is in no valid pool: not announced
    status = a.bgp_status()
    assert [r["key"] for r in status["invalid_resources"]] == ["resources/v3/ippools/bad"]
    assert not status["invalid_resources"][0]["kept_last_good"]
    assert "ipipMode" in status["invalid_resources"][0]["problems"][0]


def test_pool_turning_invalid_keeps_its_last_good_version_everywhere(tmp_path: Path) -> None:
    a = agent(tmp_path)
    ok = json.loads(json.dumps(BAD))
    ok["spec"]["ipipMode"] = "Never"  # valid: VXLAN only
    feed(a, WatchResync([kv("resources/v3/ippools/bad", ok), kv("resources/v3/nodes/n1", ME),
                         kv("resources/v3/nodes/n2", B),
                         kv("ipam/v2/block/10.247.1.0-26", block("10.247.1.0/26", "n2"))], 5))
    before = a.graph.routes.resolver.route_for("10.247.1.0/26")
    assert before is not None and before.oif == "vxlan.tabby"
    msgs = feed(a, WatchEvent("put", kv("resources/v3/ippools/bad", BAD, 6)))  # a stricter rule, say
    assert msgs == []  # nothing changes in the dataplane
    assert pools_chosen(a) == ["10.247.0.0/16"]
    assert a.graph.routes.resolver.route_for("10.247.1.0/26") == before
    assert [p.name for p in a.bgp._inputs()[4]] == ["bad"]  # type: ignore[union-attr]
    inv = a.bgp_status()["invalid_resources"]
    assert inv[0]["key"] == "resources/v3/ippools/bad" and inv[0]["kept_last_good"]
