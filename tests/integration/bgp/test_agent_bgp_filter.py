"""BGPFilter end to end with an FRR ToR (eBGP): an import Reject keeps one of FRR's prefixes out of the node's
kernel while the other arrives, and an export Reject takes the node's block out of FRR's table (it was there
before the filter was applied, so the filter is what removed it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.bgp.lab import Frr, Netns
from tests.integration.bgp.test_agent_bgp_tor import tabbyctl_apply
from tests.integration.node.conftest import apply_pool

pytestmark = pytest.mark.root

KEPT, DROPPED = "198.51.100.0/24", "203.0.113.0/24"
FRR_AS = 65001


@pytest.fixture
def filter_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[tuple[BgpLab, Frr]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    ns: Netns | None = None
    frr: Frr | None = None
    try:
        lab.add_nodes(1)
        ns = Netns("flt")
        lab.plug(ns.name, "pf", "eth0")
        ns.ip("addr", "add", f"{lab.subnet}.254/24", "dev", "eth0")
        frr = Frr(ns)
        yield lab, frr
    finally:
        lab.cleanup()
        if frr is not None:
            frr.close()
        if ns is not None:
            ns.close()


def peer(filters: list[str], tor: str) -> dict:
    return {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "tor"},
            "spec": {"peerIP": tor, "asNumber": FRR_AS, "filters": filters}}


def test_import_and_export_filters(filter_lab: tuple[BgpLab, Frr], etcd_env: dict[str, str]) -> None:
    lab, frr = filter_lab
    (name,) = list(lab.nodes)
    agent, tor = lab.node_ip(name), f"{lab.subnet}.254"
    frr.configure(
        f"router bgp {FRR_AS}\n bgp router-id {tor}\n no bgp ebgp-requires-policy\n no bgp network import-check\n"
        f" neighbor {agent} remote-as 64512\n address-family ipv4 unicast\n  network {KEPT}\n  network {DROPPED}\n"
        " exit-address-family\n"
    )
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPFilter", "metadata": {"name": "no-test-net-3"},
         "spec": {"importV4": [{"action": "Reject", "cidr": DROPPED, "matchOperator": "Equal"}]}},
        peer(["no-test-net-3"], tor),
    )
    lab.set_address(name)
    lab.start_agent(name)
    wait_for("FRR session Established", lambda: lab.established(name, 1), timeout=40)
    wait_for(f"{KEPT} in the node's kernel", lambda: lab.route_to(name, KEPT), timeout=20)
    status = wait_for("the filtered path counted", lambda: (s := lab.bgp_status(name))["counters"]["rejected"]
                      .get("import_filter") and s, timeout=10)
    assert lab.route_to(name, DROPPED) is None, "the import filter must keep the prefix out of the kernel"
    assert {p["prefix"] for p in status["paths"]} == {KEPT}

    # the node's block reaches FRR while no export filter exists ...
    pod = lab.add_pod(name, "f1")
    block = lab.block_of(pod.ip, name)
    wait_for("FRR has the node's block", lambda: frr.route(block).get("paths"), timeout=20)
    # ... and leaves FRR's table when an export Reject for the pool is added to the peer
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPFilter", "metadata": {"name": "no-pods"},
         "spec": {"exportV4": [{"action": "Reject", "cidr": BGP_POOL, "matchOperator": "In"}]}},
        peer(["no-test-net-3", "no-pods"], tor),
    )
    wait_for("the block withdrawn from FRR", lambda: not frr.route(block).get("paths"), timeout=20)
    assert frr.established(agent), "a filter change must not reset the session"
    assert lab.route_to(name, KEPT) and lab.route_to(name, DROPPED) is None
