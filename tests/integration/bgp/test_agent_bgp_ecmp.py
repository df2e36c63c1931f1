"""ECMP end to end: one node agent, two FRR routers (both eBGP, AS 65001, equal attributes) announcing the
same prefix. The agent's RIB ties the two paths, and its kernel gets ONE route with two next hops; when one
FRR's bgpd dies (SIGKILL: a dead ToR, no NOTIFICATION) the route collapses to the other hop at once, and when
it comes back there are two again.

No timer is tuned: the BGPPeers keep the default maxRestartTime (120 s, what Tabby advertises). FRR in its
default mode is a graceful-restart helper only (no <AFI, SAFI> with preserved forwarding state in its OPEN),
so RFC 4724 gives its paths no stale time: the dead hop must leave the multipath route well inside the
120 s that the old "graceful restart for every peer" behaviour kept it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.bgp.lab import Frr, Netns
from tests.integration.bgp.test_agent_bgp_tor import tabbyctl_apply
from tests.integration.node.conftest import apply_pool

pytestmark = pytest.mark.root

PREFIX = "198.51.100.0/24"
FRR_AS = 65001
HOSTS = (253, 254)


@pytest.fixture
def ecmp_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[tuple[BgpLab, list[Frr]]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    spaces: list[Netns] = []
    routers: list[Frr] = []
    try:
        lab.add_nodes(1)
        for i, host in enumerate(HOSTS):
            ns = Netns(f"ecmp{i}")
            spaces.append(ns)
            lab.plug(ns.name, f"r{i}", "eth0")
            ns.ip("addr", "add", f"{lab.subnet}.{host}/24", "dev", "eth0")
            routers.append(Frr(ns, bfd=True))
        yield lab, routers
    finally:
        lab.cleanup()
        for frr in routers:
            frr.close()
        for ns in spaces:
            ns.close()


def frr_config(router_id: str, agent: str, *, with_neighbor: bool = True, bfd: bool = False) -> str:
    neighbor = f" neighbor {agent} remote-as 64512\n" if with_neighbor else ""
    if bfd:
        neighbor += f" neighbor {agent} bfd profile fast\n"
    profile = ("bfd\n profile fast\n  receive-interval 300\n  transmit-interval 300\n  detect-multiplier 3\n"
               "exit\nexit\n") if bfd else ""
    return profile + (
        f"router bgp {FRR_AS}\n"
        f" bgp router-id {router_id}\n"
        " no bgp ebgp-requires-policy\n"
        " no bgp network import-check\n"
        f"{neighbor}"
        " address-family ipv4 unicast\n"
        f"  network {PREFIX}\n"
        " exit-address-family\n"
    )


def kernel_hops(lab: BgpLab, name: str) -> list[tuple[str, str]] | None:
    """(gateway, dev) of every next hop of the agent's route to PREFIX, as `ip -j route` shows them."""
    route: dict[str, Any] | None = lab.route_to(name, PREFIX)
    if route is None:
        return None
    if "nexthops" in route:
        return sorted((h["gateway"], h["dev"]) for h in route["nexthops"])
    return [(route["gateway"], route["dev"])]


def test_two_frr_peers_give_one_multipath_route(ecmp_lab: tuple[BgpLab, list[Frr]], etcd_env: dict[str, str]) -> None:
    lab, routers = ecmp_lab
    (name,) = list(lab.nodes)
    agent = lab.node_ip(name)
    addrs = [f"{lab.subnet}.{host}" for host in HOSTS]
    for frr, addr in zip(routers, addrs, strict=True):
        frr.configure(frr_config(addr, agent))
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": True}},
        *({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": f"tor{i}"},
           "spec": {"peerIP": addr, "asNumber": FRR_AS}} for i, addr in enumerate(addrs)),
    )
    lab.set_address(name)
    lab.start_agent(name)
    wait_for("both FRR sessions Established", lambda: lab.established(name, 2), timeout=40)

    both = sorted((a, "eth0") for a in addrs)
    wait_for("one route, two next hops", lambda: kernel_hops(lab, name) == both, timeout=20)
    routes = [r for r in lab.routes(name) if r.get("dst") == PREFIX]
    assert len(routes) == 1 and "gateway" not in routes[0], routes
    status = lab.bgp_status(name)
    assert status["counters"]["ecmp_routes"] == 1
    learned = next(r for r in status["learned"] if r["prefix"] == PREFIX)
    assert sorted(learned["next_hops"]) == sorted(addrs)
    assert 'tabby_bgp_ecmp_routes{node="' + name + '"} 1' in status["metrics"].splitlines()

    # the second router's bgpd dies: the kernel closes its TCP session, ExaBGP reports the session down
    routers[1].kill("bgpd")
    wait_for("route collapses to the remaining hop", lambda: kernel_hops(lab, name) == [(addrs[0], "eth0")],
             timeout=20)
    status = lab.bgp_status(name)
    assert status["counters"]["ecmp_routes"] == 0
    assert status["counters"]["prefixes_stale"].get(addrs[1], 0) == 0, "a helper-only peer's paths must not go stale"

    # and comes back: two next hops again
    routers[1].start("bgpd")
    routers[1].configure(frr_config(addrs[1], agent))
    wait_for("FRR 2 Established again", lambda: routers[1].established(agent), timeout=40)
    wait_for("two next hops again", lambda: kernel_hops(lab, name) == both, timeout=20)
    assert lab.bgp_status(name)["counters"]["ecmp_routes"] == 1


def blackhole(ns_name: str) -> None:
    """Drop every packet in and out of the router's namespace (no TCP reset, no NOTIFICATION reaches us)."""
    rules = (
        "table inet tabbyblackhole {\n"
        " chain i { type filter hook input priority -300; policy drop; }\n"
        " chain o { type filter hook output priority -300; policy drop; }\n"
        "}\n"
    )
    subprocess.run(["ip", "netns", "exec", ns_name, "nft", "-f", "-"], input=rules, text=True, check=True, timeout=10)


def test_bfd_takes_a_blackholed_tor_out_of_the_multipath_route_at_once(
    ecmp_lab: tuple[BgpLab, list[Frr]], etcd_env: dict[str, str]
) -> None:
    """With BFD (failureDetectionMode BFDIfDirectlyConnected, 300 ms x 3) a ToR whose link silently drops
    everything leaves the ECMP route within about a second, not at the BGP hold time (here 90 s)."""
    lab, routers = ecmp_lab
    (name,) = list(lab.nodes)
    agent = lab.node_ip(name)
    addrs = [f"{lab.subnet}.{host}" for host in HOSTS]
    for frr, addr in zip(routers, addrs, strict=True):
        frr.configure(frr_config(addr, agent, bfd=True))
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": True}},
        *({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": f"tor{i}"},
           "spec": {"peerIP": addr, "asNumber": FRR_AS, "failureDetectionMode": "BFDIfDirectlyConnected"}}
          for i, addr in enumerate(addrs)),
    )
    lab.set_address(name)
    lab.start_agent(name)
    wait_for("both FRR sessions Established", lambda: lab.established(name, 2), timeout=40)
    both = sorted((a, "eth0") for a in addrs)
    wait_for("one route, two next hops", lambda: kernel_hops(lab, name) == both, timeout=20)
    wait_for("BFD Up on both sessions", lambda: [s.get("bfd") for s in lab.bgp_status(name)["sessions"]] == ["Up"] * 2,
             timeout=20)
    for frr in routers:
        peer = wait_for("FRR's BFD Up", lambda frr=frr: next((p for p in frr.json("show bfd peers json")
                                                              if p.get("peer") == agent and p.get("status") == "up"),
                                                             None), timeout=20)
        assert peer["remote-receive-interval"] == 300

    blackhole(routers[1].ns.name)
    cut = time.monotonic()
    wait_for("the dead ToR leaves the route", lambda: kernel_hops(lab, name) == [(addrs[0], "eth0")], timeout=10,
             interval=0.02)
    elapsed = time.monotonic() - cut
    assert elapsed < 2.0, f"took {elapsed:.2f}s (BFD detection is 0.9 s; the hold time would be 90 s)"
    status = lab.bgp_status(name)
    row = next(s for s in status["sessions"] if s["peer_address"] == addrs[1])
    assert row["bfd"] == "Down" and status["counters"]["prefixes_received"].get(addrs[1], 0) == 0
