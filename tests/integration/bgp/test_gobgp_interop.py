"""GoBGP interop with real node agents, plus a Speaker supervision regression found while building the labs.

GoBGP 3 (gobgpd, its API on the namespace's own loopback) beside agents in the BgpLab harness (node
namespaces on a bridge in a switch namespace, real etcd, ExaBGP, CNI plugin):
- as an iBGP peer of an agent: GoBGP's prefix reaches the agent's kernel, the agent's block reaches
  GoBGP's RIB with the node as next hop;
- as a route reflector for two agents (mesh off): each client learns the other's block through it with
  ORIGINATOR_ID = the other node, CLUSTER_LIST = GoBGP's cluster id, the original next hop, and pods ping.

The supervision test lives here (not in test_speaker_frr.py) only because this file is the one the
examples/demo work may touch; it belongs with the Speaker tests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgp.types import GLOBAL, PeerSpec, SpeakerSpec
from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab
from tests.integration.bgp.conftest import LoopThread
from tests.integration.bgp.lab import Netns, link, wait_for
from tests.integration.bgp.test_agent_bgp_tor import tabbyctl_apply
from tests.integration.node.conftest import apply_pool

pytestmark = [pytest.mark.root, pytest.mark.slow]


def exabgp_pids(ns: Netns) -> list[int]:
    """The ExaBGP daemons running in `ns` (its API helper excluded)."""
    res = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True, timeout=10, check=False)
    out = []
    for pid in (int(p) for p in res.stdout.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"/exabgp") for part in argv) and b"server" in argv:
            out.append(pid)
    return sorted(out)


def test_speaker_apply_during_restart_backoff_runs_one_exabgp(
    loop_thread: LoopThread, make_ns, make_speaker  # type: ignore[no-untyped-def]
) -> None:
    """ExaBGP dies; while the supervisor waits out its backoff, a config change arrives (apply).

    apply() sees no running ExaBGP and starts one; the supervisor then starts a second one over it and
    forgets the first. The first keeps the port and the sessions (it is the one that works), the tracked
    one exits at once ("can not bind ... :179") and is restarted forever with growing backoff, and
    `tabbyctl node status` shows every session "Idle / ExaBGP exited" while FRR says Established.
    In a lab this happens on about one deploy in three: the first reload (SIGUSR1) reaches ExaBGP ~0.1 s
    after its start, before ExaBGP has installed its handler, so SIGUSR1 kills it (exit -10) and the
    next apply lands in the backoff window. Expected: exactly one ExaBGP, and it is the one the
    Speaker tracks.
    """
    a, b = make_ns("sup-a"), make_ns("sup-b")
    link(a, "10.79.0.1/24", b, "10.79.0.2/24")
    speaker_spec = SpeakerSpec(node="node-a", router_id="10.79.0.1", local_as=64512, address="10.79.0.1")
    peer1 = PeerSpec(address="10.79.0.2", peer_as=65001, local_as=64512, type=GLOBAL, name="p1",
                     local_address="10.79.0.1")
    peer2 = PeerSpec(address="10.79.0.3", peer_as=65001, local_as=64512, type=GLOBAL, name="p2",
                     local_address="10.79.0.1")
    speaker, _ = make_speaker(a, backoff_initial=2.0)
    assert loop_thread.run(speaker.apply(speaker_spec, [peer1])) == "started"
    first = wait_for("ExaBGP running", lambda: exabgp_pids(a), 20)
    os.kill(first[0], signal.SIGKILL)
    wait_for("Speaker noticed the exit", lambda: speaker.pid is None, 10, interval=0.05)
    # inside the 2 s backoff: a new peer arrives
    assert loop_thread.run(speaker.apply(speaker_spec, [peer1, peer2])) == "started"
    time.sleep(4)  # the backoff has passed: the supervisor has acted
    running = exabgp_pids(a)
    assert len(running) == 1, f"ExaBGP daemons in the namespace: {running} (Speaker tracks {speaker.pid})"
    assert running == [speaker.pid]


# ----------------------------------------------------------------------------- GoBGP beside agents

GOBGP_OCTET = 254
GOBGP_PREFIX = "10.97.0.0/24"
CLUSTER_ID = "10.213.78.254"


class Gobgp:
    """gobgpd in its own namespace plugged into the lab's switch; `close()` kills it (also after a failure)."""

    def __init__(self, lab: BgpLab, tmp: Path, neighbors: list[str], rr_client: bool) -> None:
        self.ns = Netns("gobgp")
        self.ip = f"{lab.subnet}.{GOBGP_OCTET}"
        self.port = random.randint(40000, 49999)
        self.proc: subprocess.Popen[bytes] | None = None
        lab.plug(self.ns.name, "pg", "eth0")
        self.ns.ip("addr", "add", f"{self.ip}/24", "dev", "eth0")
        conf = tmp / "gobgpd.toml"
        text = (f'[global.config]\n  as = 64512\n  router-id = "{self.ip}"\n  port = 179\n'
                f'  local-address-list = ["{self.ip}"]\n')
        for n in neighbors:
            text += (f'[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "{n}"\n    peer-as = 64512\n'
                     '  [neighbors.timers.config]\n    connect-retry = 2\n    hold-time = 9\n'
                     '    keepalive-interval = 3\n')
            if rr_client:
                text += (f'  [neighbors.route-reflector.config]\n    route-reflector-client = true\n'
                         f'    route-reflector-cluster-id = "{CLUSTER_ID}"\n')
        conf.write_text(text)
        self.log = open(tmp / "gobgpd.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns.name, "gobgpd", "-f", str(conf), "--api-hosts",
                                      f"127.0.0.1:{self.port}", "--pprof-disable"], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for("gobgpd API", lambda: self.cli("global", check=False).returncode == 0, 20)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns.name, "gobgp", "-p", str(self.port), *args],
                              capture_output=True, text=True, timeout=15, check=check)

    def established(self, peers: list[str]) -> bool:
        out = json.loads(self.cli("-j", "neighbor").stdout or "[]")
        states = {n["conf"]["neighbor_address"]: n["state"].get("session_state") for n in out}
        return states == {p: 6 for p in peers}  # 6 = ESTABLISHED in GoBGP's API

    def rib(self) -> dict[str, list[dict[str, Any]]]:
        return json.loads(self.cli("-j", "global", "rib", "-a", "ipv4").stdout or "{}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        self.ns.close()


@pytest.fixture
def gobgp_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[tuple[BgpLab, list[Gobgp]]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    made: list[Gobgp] = []
    try:
        yield lab, made
    finally:
        lab.cleanup()
        for g in made:
            g.close()


def next_hop(path: dict[str, Any]) -> str | None:
    for attr in path.get("attrs", []):
        if attr.get("type") == 3:  # NEXT_HOP
            return attr.get("nexthop")
    return None


def test_gobgp_as_ibgp_peer(gobgp_lab: tuple[BgpLab, list[Gobgp]], etcd_env: dict[str, str],
                            tmp_path: Path) -> None:
    lab, made = gobgp_lab
    lab.add_nodes(1)
    (node,) = list(lab.nodes)
    gobgp = Gobgp(lab, tmp_path, [lab.node_ip(node)], rr_client=False)
    made.append(gobgp)
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "gobgp"},
         "spec": {"peerIP": gobgp.ip, "asNumber": 64512}},
    )
    lab.set_address(node)
    lab.start_agent(node)
    wait_for("agent: GoBGP Established", lambda: lab.established(node, 1), 40)
    wait_for("GoBGP: agent Established", lambda: gobgp.established([lab.node_ip(node)]), 20)
    (session,) = lab.bgp_status(node)["sessions"]
    assert (session["peer_address"], session["peer_type"], session["peer_as"]) == (gobgp.ip, "global", 64512)

    # GoBGP -> agent: its prefix in the agent's kernel via GoBGP
    gobgp.cli("global", "rib", "add", "-a", "ipv4", GOBGP_PREFIX, "nexthop", gobgp.ip)
    route = wait_for(f"{GOBGP_PREFIX} in the agent's kernel", lambda: lab.route_to(node, GOBGP_PREFIX), 20)
    assert (route["gateway"], route["dev"]) == (gobgp.ip, "eth0")

    # agent -> GoBGP: the pod's block with the node as next hop
    pod = lab.add_pod(node, "g1")
    block = lab.block_of(pod.ip, node)
    paths = wait_for(f"GoBGP learns {block}", lambda: gobgp.rib().get(block), 20)
    assert [next_hop(p) for p in paths] == [lab.node_ip(node)]

    # GoBGP withdraws: the route leaves the kernel
    gobgp.cli("global", "rib", "del", "-a", "ipv4", GOBGP_PREFIX)
    wait_for(f"{GOBGP_PREFIX} withdrawn", lambda: lab.route_to(node, GOBGP_PREFIX) is None, 20)


def test_gobgp_as_route_reflector(gobgp_lab: tuple[BgpLab, list[Gobgp]], etcd_env: dict[str, str],
                                  tmp_path: Path) -> None:
    lab, made = gobgp_lab
    lab.add_nodes(2)
    c1, c2 = list(lab.nodes)
    gobgp = Gobgp(lab, tmp_path, [lab.node_ip(c1), lab.node_ip(c2)], rr_client=True)
    made.append(gobgp)
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": False}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "gobgp-rr"},
         "spec": {"peerIP": gobgp.ip, "asNumber": 64512}},
    )
    for name in (c1, c2):
        lab.set_address(name)
        lab.start_agent(name)
    for name in (c1, c2):
        wait_for(f"{name}: one session, to GoBGP", lambda name=name: lab.established(name, 1), 40)
    wait_for("GoBGP: both clients Established", lambda: gobgp.established([lab.node_ip(c1), lab.node_ip(c2)]), 20)

    pods = {c: lab.add_pod(c, f"q{i}") for i, c in enumerate((c1, c2))}
    blocks = {c: lab.block_of(pods[c].ip, c) for c in (c1, c2)}
    for me, other in ((c1, c2), (c2, c1)):
        path = wait_for(f"{me} learns {blocks[other]} through GoBGP", lambda me=me, other=other: next(
            (p for p in lab.bgp_status(me)["paths"] if p["prefix"] == blocks[other]), None), 20)
        assert path["peer"] == gobgp.ip
        assert path["originator_id"] == lab.node_ip(other)
        assert path["cluster_list"] == [CLUSTER_ID]
        assert path["next_hop"] == lab.node_ip(other), "a reflector keeps the original next hop"
        route = wait_for(f"{me}: kernel route", lambda me=me, other=other: lab.route_to(me, blocks[other]), 20)
        assert (route["gateway"], route["dev"]) == (lab.node_ip(other), "eth0")
    assert lab.ping(pods[c1].netns, pods[c2].ip, count=2)
    assert lab.ping(pods[c2].netns, pods[c1].ip, count=2)
