"""Zero loss through a graceful restart of the top-of-rack router's bgpd (RFC 4724, FRR the restarting speaker).

Two nodes, each on its own link to one FRR ToR (no shared segment: pod traffic between them is forwarded by
the ToR's kernel), all nodes in AS 64512 with the mesh off and eBGP to the ToR (`numAllowedLocalASNumbers: 1`,
Calico's rack design). FRR runs `bgp graceful-restart` + `preserve-fw-state`, so its OPEN lists IPv4 unicast
with the F bit set. A ping stream at 10 ms between a pod on each node runs while the ToR's bgpd is SIGKILLed,
started again and re-configured; the stream must not lose a single packet:

- the nodes keep the ToR's paths stale (the F bit), so their kernels keep the route via the ToR;
- the ToR's zebra keeps what bgpd installed while bgpd is away (bgpd registered graceful restart with zebra);
- when bgpd is back, the nodes re-announce their blocks and send End-of-RIB, FRR re-installs, and the nodes'
  stale paths are refreshed by FRR's updates and swept by its End-of-RIB.

Loss is counted from ping's own sequence numbers: every icmp_seq up to the last reply must have a reply.
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

from tests.integration.bgp.agent_lab import BGP_POOL, wait_for
from tests.integration.bgp.lab import Frr, Netns
from tests.integration.bgp.routed_lab import RoutedLab
from tests.integration.bgp.test_agent_bgp_tor import tabbyctl_apply
from tests.integration.node.conftest import apply_pool, in_ns

pytestmark = pytest.mark.root

FRR_AS = 65001
RESTART_TIME = 30
PING_INTERVAL = 0.01
PING_COUNT = 4000  # 40 s at 10 ms: bounded; the restart cycle takes well under that


@pytest.fixture
def rack(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[tuple[RoutedLab, Frr]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = RoutedLab(tmp_path, etcd_env)
    tor: Netns | None = None
    frr: Frr | None = None
    try:
        tor = Netns("grz")
        in_ns(tor.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        lab.add_nodes(2, tor_ns=tor.name)
        frr = Frr(tor)
        yield lab, frr
    finally:
        lab.cleanup()
        if frr is not None:
            frr.close()
        if tor is not None:
            tor.close()


def tor_conf(lab: RoutedLab) -> str:
    names = list(lab.nodes)
    lines = [f"router bgp {FRR_AS}", f" bgp router-id {lab.tor_ip(names[0])}", " no bgp ebgp-requires-policy",
             " bgp graceful-restart", f" bgp graceful-restart restart-time {RESTART_TIME}",
             " bgp graceful-restart preserve-fw-state"]
    for n in names:
        lines += [f" neighbor {lab.node_ip(n)} remote-as 64512", f" neighbor {lab.node_ip(n)} timers connect 1"]
    return "\n".join(lines) + "\n"


def lost_sequences(output: str) -> tuple[int, list[int]]:
    """(last icmp_seq answered, every earlier seq without a reply) from `ping -n` output."""
    seqs = {int(m) for m in re.findall(r"icmp_seq=(\d+)", output)}
    if not seqs:
        return 0, []
    last = max(seqs)
    return last, [s for s in range(1, last + 1) if s not in seqs]


def test_pods_lose_no_packet_while_the_tor_bgpd_restarts_gracefully(
    rack: tuple[RoutedLab, Frr], etcd_env: dict[str, str]
) -> None:
    lab, frr = rack
    a, b = names = list(lab.nodes)
    frr.configure(tor_conf(lab))
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": False}},
        *({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": f"tor-{n}"},
           "spec": {"node": n, "peerIP": lab.tor_ip(n), "asNumber": FRR_AS, "numAllowedLocalASNumbers": 1}}
          for n in names),
    )
    for n in names:
        lab.set_address(n)
        lab.start_agent(n)
    for n in names:
        wait_for(f"{n}: ToR session Established", lambda n=n: lab.established(n, 1), timeout=40)
    pods = {n: lab.add_pod(n, f"z{i}") for i, n in enumerate(names)}
    blocks = {n: lab.block_of(pods[n].ip, n) for n in names}
    for here, there in ((a, b), (b, a)):
        wait_for(f"{here}: {there}'s block via the ToR",
                 lambda here=here, there=there: (r := lab.route_to(here, blocks[there]))
                 and r.get("gateway") == lab.tor_ip(here), timeout=30)
    wait_for("pod a -> pod b", lambda: lab.ping(pods[a].netns, pods[b].ip), timeout=20, interval=0.5)
    wait_for("FRR learned both blocks", lambda: all(frr.route(blocks[n]).get("paths") for n in names), timeout=20)

    ping = subprocess.Popen(
        ["ip", "netns", "exec", pods[a].netns, "ping", "-n", "-i", str(PING_INTERVAL), "-c", str(PING_COUNT),
         "-W", "1", pods[b].ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    started = time.monotonic()
    try:
        time.sleep(1.0)
        frr.kill("bgpd")  # a graceful restart: TCP sessions closed, zebra and the kernel keep the routes
        wait_for("the nodes keep the ToR's path stale",
                 lambda: all(lab.bgp_status(n)["counters"]["prefixes_stale"].get(lab.tor_ip(n), 0) >= 1
                             for n in names), timeout=15, interval=0.1)
        time.sleep(1.0)
        frr.start("bgpd")
        frr.configure(tor_conf(lab))
        for n in names:
            wait_for(f"{n}: ToR session Established again", lambda n=n: lab.established(n, 1), timeout=60)
        for n in names:
            wait_for(f"{n}: End-of-RIB swept the stale path, FRR's path fresh",
                     lambda n=n: (c := lab.bgp_status(n)["counters"])["prefixes_stale"].get(lab.tor_ip(n), 1) == 0
                     and c["prefixes_received"].get(lab.tor_ip(n), 0) >= 1, timeout=60)
        wait_for("FRR re-learned both blocks", lambda: all(frr.route(blocks[n]).get("paths") for n in names),
                 timeout=30)
        time.sleep(2.0)  # and a little traffic after the restart cycle is over
    finally:
        cycle_s = time.monotonic() - started
        ping.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
        out, _ = ping.communicate(timeout=15)
    last, lost = lost_sequences(out)
    sent = re.search(r"(\d+) packets transmitted", out)
    assert sent, out[-500:]
    # the stream ran through the whole cycle (ping is stopped only after it) and still flows at the end: a
    # reply for nearly every sent seq, at ping's pace across the cycle (not a stream that stalled)
    assert last >= int(sent.group(1)) - 5, f"replies stop at seq {last}: {out[-500:]}"
    assert last * PING_INTERVAL >= 0.25 * cycle_s, f"only {last} replies over a {cycle_s:.1f} s cycle: {out[-500:]}"
    assert not lost, f"{len(lost)} of {last} packets lost across the restart (first {lost[:10]})"
    for here, there in ((a, b), (b, a)):
        route = lab.route_to(here, blocks[there])
        assert route and route.get("gateway") == lab.tor_ip(here), route
