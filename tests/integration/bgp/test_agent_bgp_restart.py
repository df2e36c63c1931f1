"""Graceful restart with real agents: `ping -i 0.01 -c 500` between pods on two nodes loses nothing while
(1) one node's agent is SIGKILLed and restarted (ExaBGP and its sessions survive, the new agent adopts them,
keeps the kernel's BGP routes until its RIB is refilled by ROUTE-REFRESH), and (2) that node's ExaBGP is
SIGKILLed (the agent restarts it; the peer keeps the node's routes stale, then End-of-RIB refreshes them),
and (3) b's agent is SIGKILLed again after that: ExaBGP now also holds the per-neighbor copy of b's route that
session-up sent, and the new agent must keep it when it settles (it once withdrew it, pulling b's block from a).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.node.conftest import apply_pool

pytestmark = pytest.mark.root


@pytest.fixture
def gr_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[BgpLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    try:
        yield lab
    finally:
        lab.cleanup()


def start_ping(lab: BgpLab, ns: str, ip: str, count: int = 500) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-q", "-i", "0.01", "-W", "1", "-c", str(count), ip],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ping_result(proc: subprocess.Popen[str]) -> tuple[int, int, str]:
    out, _ = proc.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), out


def test_agent_and_exabgp_restart_lose_nothing(gr_lab: BgpLab, etcd_env: dict[str, str]) -> None:
    lab = gr_lab
    apply_pool(etcd_env, BGP_POOL)
    lab.add_nodes(2)
    a, b = list(lab.nodes)
    for name in (a, b):
        lab.set_address(name)
        lab.start_agent(name)
    for name in (a, b):
        wait_for(f"{name} Established", lambda name=name: lab.established(name, 1), timeout=40)
    pa, pb = lab.add_pod(a, "ga"), lab.add_pod(b, "gb")
    block_a, block_b = lab.block_of(pa.ip, a), lab.block_of(pb.ip, b)
    wait_for("routes both ways", lambda: lab.route_to(a, block_b) and lab.route_to(b, block_a), timeout=20)
    wait_for("b settled", lambda: lab.bgp_status(b).get("settled"), timeout=20)
    assert lab.ping(pa.netns, pb.ip)
    session_ab = lab.bgp_status(a)["sessions"][0]
    exabgp_b = lab.bgp_status(b)["exabgp_pid"]

    # (1) SIGKILL b's agent mid-ping, start it again
    ping = start_ping(lab, pa.netns, pb.ip)
    time.sleep(0.5)
    lab.agents[b].stop(signal.SIGKILL)
    assert lab.route_to(b, block_a), "the kernel keeps BGP routes while no agent runs"
    lab.start_agent(b)
    sent, received, out = ping_result(ping)
    assert (sent, received) == (500, 500), out
    st_b = wait_for("b settled again", lambda: (s := lab.bgp_status(b)).get("settled") and s, timeout=30)
    assert st_b["exabgp_pid"] == exabgp_b, "the new agent adopted the running ExaBGP"
    assert {p["prefix"] for p in st_b["paths"]} == {block_a}, "RIB refilled by ROUTE-REFRESH"
    assert st_b["counters"]["provisional_routes"] == 0
    after = lab.bgp_status(a)["sessions"][0]
    assert after["bgp_state"] == "Established"
    assert after["established_count"] == session_ab["established_count"], "the session never dropped"
    assert (r := lab.route_to(b, block_a)) and r["gateway"] == lab.node_ip(a)

    # (2) SIGKILL b's ExaBGP mid-ping: a keeps b's routes stale, then they are refreshed
    ping = start_ping(lab, pa.netns, pb.ip)
    time.sleep(0.3)
    os.kill(exabgp_b, signal.SIGKILL)
    peer_b = lab.node_ip(b)
    stale_seen = wait_for("a holds b's routes stale",
                          lambda: lab.bgp_status(a)["counters"]["prefixes_stale"].get(peer_b, 0), timeout=10,
                          interval=0.05)
    assert stale_seen == 1
    assert lab.route_to(a, block_b), "stale routes stay in the kernel"
    sent, received, out = ping_result(ping)
    assert (sent, received) == (500, 500), out
    wait_for("b's sessions back", lambda: lab.established(b, 1) and lab.established(a, 1), timeout=30)
    st_a = wait_for("a: b's routes refreshed (not stale)",
                    lambda: (s := lab.bgp_status(a))["counters"]["prefixes_stale"].get(peer_b, 0) == 0
                    and s["counters"]["prefixes_received"].get(peer_b) == 1 and s, timeout=30)
    assert {p["prefix"] for p in st_a["paths"] if p["peer"] == peer_b} == {block_b}
    st_b = lab.bgp_status(b)
    assert st_b["exabgp_pid"] != exabgp_b and st_b["counters"]["exabgp_restarts"] >= 1
    assert lab.ping(pa.netns, pb.ip) and lab.ping(pb.netns, pa.ip)

    # (3) SIGKILL b's agent again: its ExaBGP holds b's route plus the copy sent to a at session-up
    ping = start_ping(lab, pa.netns, pb.ip, count=300)
    time.sleep(0.3)
    lab.agents[b].stop(signal.SIGKILL)
    lab.start_agent(b)
    wait_for("b settled after the second agent restart", lambda: lab.bgp_status(b).get("settled"), timeout=30)
    sent, received, out = ping_result(ping)
    assert (sent, received) == (300, 300), out
    time.sleep(0.5)  # a withdrawal sent at settle reaches a well within this
    assert lab.route_to(a, block_b), "a still routes b's block after b's agent settled"
    assert lab.ping(pa.netns, pb.ip)
