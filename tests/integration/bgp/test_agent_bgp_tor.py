"""An FRR top-of-rack router peering eBGP (AS 65001) with two node agents (cluster AS 64512) through a global
BGPPeer: FRR learns both nodes' blocks, FRR's own prefix reaches the agents' kernels (and a pod reaches an
address behind FRR), and the agents reject their own prefixes that FRR sends back (as_path_loop).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.bgp.agent_lab import BGP_POOL, TABBYCTL, BgpLab, wait_for
from tests.integration.bgp.lab import Frr, Netns
from tests.integration.node.conftest import apply_pool

pytestmark = pytest.mark.root

TOR_PREFIX = "10.99.0.0/24"


def tabbyctl_apply(etcd_env: dict[str, str], *docs: dict) -> None:
    text = "\n---\n".join(json.dumps(d) for d in docs)
    proc = subprocess.run([TABBYCTL, "apply", "-f", "-"], input=text, capture_output=True, text=True,
                          env=etcd_env, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def tor_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[tuple[BgpLab, Frr]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    ns: Netns | None = None
    frr: Frr | None = None
    try:
        lab.add_nodes(2)
        ns = Netns("tor")
        lab.plug(ns.name, "pt", "eth0")
        ns.ip("addr", "add", f"{lab.subnet}.254/24", "dev", "eth0")
        ns.ip("addr", "add", "10.99.0.1/24", "dev", "lo")
        frr = Frr(ns)
        yield lab, frr
    finally:
        lab.cleanup()
        if frr is not None:
            frr.close()
        if ns is not None:
            ns.close()


def test_tor_ebgp(tor_lab: tuple[BgpLab, Frr], etcd_env: dict[str, str]) -> None:
    lab, frr = tor_lab
    names = list(lab.nodes)
    tor = f"{lab.subnet}.254"
    frr.configure(
        "router bgp 65001\n"
        f" bgp router-id {tor}\n"
        " no bgp ebgp-requires-policy\n"
        " no bgp network import-check\n"
        + "".join(f" neighbor {lab.node_ip(n)} remote-as 64512\n" for n in names)
        + " address-family ipv4 unicast\n"
        f"  network {TOR_PREFIX}\n"
        " exit-address-family\n"
    )
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": True}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "tor"},
         "spec": {"peerIP": tor, "asNumber": 65001}},
    )
    for name in names:
        lab.set_address(name)
        lab.start_agent(name)
    for name in names:
        wait_for(f"{name}: mesh + ToR Established", lambda name=name: lab.established(name, 2), timeout=40)
        types = {s["peer_address"]: s["peer_type"] for s in lab.bgp_status(name)["sessions"]}
        assert types[tor] == "global"
    pods = {name: lab.add_pod(name, f"t{i}") for i, name in enumerate(names)}
    blocks = {name: lab.block_of(pods[name].ip, name) for name in names}

    for name in names:
        def frr_has(name: str = name) -> list | None:
            paths = frr.route(blocks[name]).get("paths") or []
            return [p for p in paths if (p.get("nexthops") or [{}])[0].get("ip") == lab.node_ip(name)] or None

        wait_for(f"FRR learns {blocks[name]} from {name}", frr_has, timeout=20)
        wait_for(f"{name}: {TOR_PREFIX} via the ToR",
                 lambda name=name: (r := lab.route_to(name, TOR_PREFIX)) and r.get("gateway") == tor
                 and r.get("dev") == "eth0", timeout=20)
        # FRR sends our own block back with 65001 64512 in the AS path: dropped on input
        wait_for(f"{name}: own prefixes from FRR rejected",
                 lambda name=name: lab.bgp_status(name)["counters"]["rejected"].get("as_path_loop", 0) > 0,
                 timeout=20)
        st = lab.bgp_status(name)
        from_tor = {p["prefix"] for p in st["paths"] if p["peer"] == tor}
        assert blocks[name] not in from_tor
        assert TOR_PREFIX in from_tor
        metric = f'tabby_bgp_rejected_total{{node="{name}",reason="as_path_loop"}} '
        line = next(m for m in st["metrics"].splitlines() if m.startswith(metric))
        assert int(line.split()[-1]) > 0
    # a pod reaches an address behind the router (FRR installed the pod blocks it learned)
    wait_for("pod -> 10.99.0.1", lambda: lab.ping(pods[names[0]].netns, "10.99.0.1"), timeout=20, interval=0.5)
    # and the other node's block is best over the mesh (iBGP from its owner), not via FRR
    other = lab.route_to(names[0], blocks[names[1]])
    assert other and other["gateway"] == lab.node_ip(names[1])


def test_one_as_ebgp_to_the_tor_mesh_off_with_num_allowed_local_as(
    tor_lab: tuple[BgpLab, Frr], etcd_env: dict[str, str]
) -> None:
    """Calico's "all nodes in one AS, eBGP to the ToR, mesh off" design: each node's block reaches the other
    node only through the ToR, with AS_PATH (65001, 64512). numAllowedLocalASNumbers: 1 lets it in, and
    every pod pair reaches (without it the AS_PATH loop check would drop the block)."""
    lab, frr = tor_lab
    names = list(lab.nodes)
    tor = f"{lab.subnet}.254"
    frr.configure(
        f"router bgp 65001\n bgp router-id {tor}\n no bgp ebgp-requires-policy\n"
        + "".join(f" neighbor {lab.node_ip(n)} remote-as 64512\n" for n in names)
    )
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": False}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "tor"},
         "spec": {"peerIP": tor, "asNumber": 65001, "numAllowedLocalASNumbers": 1}},
    )
    for name in names:
        lab.set_address(name)
        lab.start_agent(name)
    for name in names:
        wait_for(f"{name}: only the ToR session", lambda name=name: lab.established(name, 1), timeout=40)
    pods = {name: lab.add_pod(name, f"n{i}") for i, name in enumerate(names)}
    blocks = {name: lab.block_of(pods[name].ip, name) for name in names}
    a, b = names
    for here, there in ((a, b), (b, a)):
        route = wait_for(f"{here}: {there}'s block learned through the ToR",
                         lambda here=here, there=there: lab.route_to(here, blocks[there]), timeout=30)
        assert route.get("gateway") in (tor, lab.node_ip(there)), route
        path = next(p for p in lab.bgp_status(here)["paths"] if p["prefix"] == blocks[there])
        assert path["as_path"] == [65001, 64512]
    wait_for("pod a -> pod b", lambda: lab.ping(pods[a].netns, pods[b].ip), timeout=20, interval=0.5)
    wait_for("pod b -> pod a", lambda: lab.ping(pods[b].netns, pods[a].ip), timeout=20, interval=0.5)
