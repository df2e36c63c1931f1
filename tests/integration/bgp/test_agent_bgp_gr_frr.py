"""Graceful restart (RFC 4724) with FRR as the restarting speaker: with `bgp graceful-restart` and
`preserve-fw-state` FRR's OPEN lists IPv4 unicast with the F bit set, so when its bgpd dies the node keeps
FRR's paths stale (the route stays in the kernel), and after FRR comes back its End-of-RIB refreshes them.
Without preserve-fw-state the F bit is clear: the stale paths go the moment the session is re-established."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.bgp.lab import Frr, Netns
from tests.integration.bgp.test_agent_bgp_tor import tabbyctl_apply
from tests.integration.node.conftest import apply_pool

pytestmark = pytest.mark.root

PREFIX = "198.51.100.0/24"
FRR_AS = 65001


@pytest.fixture
def gr_frr_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[tuple[BgpLab, Frr]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    ns: Netns | None = None
    frr: Frr | None = None
    try:
        lab.add_nodes(1)
        ns = Netns("grf")
        lab.plug(ns.name, "pg", "eth0")
        ns.ip("addr", "add", f"{lab.subnet}.254/24", "dev", "eth0")
        frr = Frr(ns)
        yield lab, frr
    finally:
        lab.cleanup()
        if frr is not None:
            frr.close()
        if ns is not None:
            ns.close()


def conf(tor: str, agent: str, *, preserve: bool) -> str:
    return (
        f"router bgp {FRR_AS}\n bgp router-id {tor}\n no bgp ebgp-requires-policy\n no bgp network import-check\n"
        " bgp graceful-restart\n bgp graceful-restart restart-time 30\n"
        + (" bgp graceful-restart preserve-fw-state\n" if preserve else "")
        + f" neighbor {agent} remote-as 64512\n neighbor {agent} timers connect 1\n"
        f" address-family ipv4 unicast\n  network {PREFIX}\n exit-address-family\n"
    )


def stale(lab: BgpLab, name: str, tor: str) -> int:
    return lab.bgp_status(name)["counters"]["prefixes_stale"].get(tor, 0)


def check_status_text(lab: BgpLab, name: str, preserve: bool) -> None:
    """`tabbyctl node status` with the session up: FRR's GR capability as read from its OPEN, and the
    warning for a field Tabby accepts but does not honour, still visible long after the apply."""
    text = lab.node_status_cli(name).stdout
    assert f"30s: ipv4 unicast F={1 if preserve else 0}" in text, text
    assert "- BGPPeer tor: spec.birdGatewayMode: Tabby uses a BGP next hop only when it is directly connected" in text
    assert "paths kept stale" not in text


@pytest.mark.parametrize("preserve", [True, False], ids=["F-bit-set", "F-bit-clear"])
def test_frr_restarting_speaker(gr_frr_lab: tuple[BgpLab, Frr], etcd_env: dict[str, str], preserve: bool) -> None:
    lab, frr = gr_frr_lab
    (name,) = list(lab.nodes)
    agent, tor = lab.node_ip(name), f"{lab.subnet}.254"
    frr.configure(conf(tor, agent, preserve=preserve))
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "tor"},
         "spec": {"peerIP": tor, "asNumber": FRR_AS, "birdGatewayMode": "Recursive"}},
    )
    lab.set_address(name)
    lab.start_agent(name)
    wait_for("session Established", lambda: lab.established(name, 1), timeout=40)
    wait_for(f"{PREFIX} in the kernel", lambda: lab.route_to(name, PREFIX), timeout=20)
    check_status_text(lab, name, preserve)

    frr.kill("bgpd")  # FRR restarts: its TCP session closes, its forwarding state stays
    wait_for("FRR's path kept stale", lambda: stale(lab, name, tor) == 1, timeout=15)
    time.sleep(2)
    assert lab.route_to(name, PREFIX), "stale paths keep forwarding while the peer restarts"
    text = lab.node_status_cli(name).stdout  # the restart in progress, in `tabbyctl node status`
    assert f"- peer {tor}: session down, 1 paths kept stale (graceful restart) for " in text, text

    frr.start("bgpd")
    frr.configure(conf(tor, agent, preserve=preserve))
    wait_for("session Established again", lambda: lab.established(name, 1), timeout=40)
    # the agent read FRR's capability: IPv4 unicast listed, F bit as configured (ExaBGP's JSON, our codec)
    family = "ipv4 unicast" if preserve else "ipv4 unicast (F=0)"
    opens = [json.loads(line) for line in lab.agents[name].log.read_text().splitlines()
             if '"bgp.open"' in line and line.startswith("{")]
    assert opens and all(o["families"] == [family] and o["restart_time"] == 30 for o in opens), opens
    wait_for("no stale path left", lambda: stale(lab, name, tor) == 0, timeout=30)
    wait_for("FRR's path fresh again",
             lambda: lab.bgp_status(name)["counters"]["prefixes_received"].get(tor) == 1, timeout=30)
    wait_for(f"{PREFIX} in the kernel", lambda: lab.route_to(name, PREFIX), timeout=20)
    check_status_text(lab, name, preserve)
