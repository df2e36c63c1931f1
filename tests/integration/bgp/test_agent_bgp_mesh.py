"""Three node agents in a full BGP mesh (CALICO_NETWORKING_BACKEND=bird, native pool): sessions come up,
each node's block reaches the others' kernels from BGP (the RIB says it received it; the datastore path
is off for native pools in this mode), pods ping across, a released block is withdrawn everywhere;
`tabbyctl node status` prints calicoctl's table, and says "not running" with no agent.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore import Datastore, EtcdConfig
from ipam import IPAMClient
from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.node.conftest import apply_pool

pytestmark = pytest.mark.root


@pytest.fixture
def bgp_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[BgpLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    try:
        yield lab
    finally:
        lab.cleanup()


def release_block(etcd_config: EtcdConfig, node: str, cidr: str) -> list[str]:
    async def go() -> list[str]:
        ds = Datastore(etcd_config)
        try:
            return await IPAMClient(ds).release_affinity(node=node, cidr=cidr)
        finally:
            await ds.close()

    return asyncio.run(go())


def test_mesh_of_three(bgp_lab: BgpLab, etcd_env: dict[str, str], etcd_config: EtcdConfig) -> None:
    lab = bgp_lab
    apply_pool(etcd_env, BGP_POOL)
    lab.add_nodes(3)
    names = list(lab.nodes)
    for name in names:
        lab.set_address(name)
        lab.start_agent(name)
    for name in names:
        wait_for(f"{name}: 2 sessions Established", lambda name=name: lab.established(name, 2), timeout=40)

    # node status -o json through the CLI, as an operator reads it
    import json

    out = lab.node_status_cli(names[0], "-o", "json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert {s["peer_address"] for s in status["sessions"]} == {lab.node_ip(n) for n in names[1:]}
    assert {s["peer_type"] for s in status["sessions"]} == {"node-to-node mesh"}
    assert all(s["state"] == "up" and s["info"].startswith("Established") for s in status["sessions"])
    table = lab.node_status_cli(names[0])
    assert table.returncode == 0
    assert table.stdout.startswith("Tabby process is running.\n\nIPv4 BGP status\n+")
    assert "| PEER ADDRESS |     PEER TYPE     | STATE |" in table.stdout
    for n in names[1:]:
        assert f"| {lab.node_ip(n).ljust(12)} | node-to-node mesh | up    |" in table.stdout
    assert "No IPv6 peers found." in table.stdout
    metrics = lab.node_status_cli(names[0], "--metrics").stdout
    assert f'tabby_bgp_session_up{{node="{names[0]}",peer="{lab.node_ip(names[1])}",type="node-to-node mesh"}} 1' \
        in metrics

    pods = {name: lab.add_pod(name, f"p{i}") for i, name in enumerate(names)}
    blocks = {name: lab.block_of(pods[name].ip, name) for name in names}
    for name in names:
        for other in names:
            if other == name:
                continue
            dst = blocks[other]

            def learned(name: str = name, other: str = other, dst: str = dst) -> dict | None:
                r = lab.route_to(name, dst)
                return r if r and r.get("gateway") == lab.node_ip(other) and r.get("dev") == "eth0" else None

            wait_for(f"{name}: {dst} via {other}", learned, timeout=20)
        # the source is BGP: this node's RIB received exactly the other nodes' blocks
        st = lab.bgp_status(name)
        got = {p["prefix"]: p["peer"] for p in st["paths"]}
        for other in names:
            if other != name:
                assert got.get(blocks[other]) == lab.node_ip(other), st["paths"]
                assert st["counters"]["prefixes_received"][lab.node_ip(other)] >= 1
        assert st["counters"]["prefixes_advertised"] == 1
        assert st["counters"]["rib_prefixes"] == 2
    for a in names:
        for b in names:
            if a != b:
                assert lab.ping(pods[a].netns, pods[b].ip, count=2), f"{a} -> {b}"

    # a block released -> withdrawn -> gone from the peers' kernels and RIBs
    gone = names[2]
    code, _ = lab.del_pod(pods[gone])
    assert code == 0
    assert release_block(etcd_config, gone, blocks[gone]) == [blocks[gone]]
    for name in names[:2]:
        wait_for(f"{name}: {blocks[gone]} withdrawn", lambda name=name: lab.route_to(name, blocks[gone]) is None,
                 timeout=20)
        assert blocks[gone] not in {p["prefix"] for p in lab.bgp_status(name)["paths"]}
    assert lab.bgp_status(gone)["counters"]["prefixes_advertised"] == 0
    assert lab.ping(pods[names[0]].netns, pods[names[1]].ip)


def test_node_status_not_running(tmp_path: Path) -> None:
    import subprocess

    from tests.integration.bgp.agent_lab import TABBYCTL

    env = dict(os.environ, TABBY_RUN_ROOT=str(tmp_path))
    out = subprocess.run([TABBYCTL, "node", "status", "--nodename", "nobody"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 1
    assert out.stdout == "Tabby process is not running.\n"
