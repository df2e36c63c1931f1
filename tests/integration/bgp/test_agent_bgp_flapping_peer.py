"""A peer that flaps without ever sending End-of-RIB loses its stale paths one Restart Time after the first loss
(RFC 4724 with the cap across flaps that issue 11 asks for), with a real BGP speaker as that peer.

The peer is a standalone ExaBGP (AS 65002) in its own namespace on the node's segment, with graceful restart
(Restart Time RESTART_S, and ExaBGP sets the F bit for every family it lists). Its first incarnation announces
PREFIX and End-of-RIB; then it is SIGKILLed (a restart: the node keeps PREFIX stale and in the kernel), and
every later incarnation comes up with `manual-eor` and nothing to announce, stays up until the node sees the
session Established, and is SIGKILLed again. Each re-established session lists IPv4 unicast with F=1, so
nothing is flushed on reconnect; no End-of-RIB ever comes, so only the restart timer can end the stale path.
The path must leave the kernel close to first loss + RESTART_S (not earlier: the reconnects are no reason to
flush; not later: a deadline that every flap pushed out would keep it forever) while the peer keeps flapping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.bgp.lab import Netns
from tests.integration.bgp.test_agent_bgp_tor import tabbyctl_apply
from tests.integration.node.conftest import PYTHON, apply_pool

pytestmark = pytest.mark.root

PREFIX = "198.51.100.0/24"
PEER_AS = 65002
RESTART_S = 12
EXABGP = str(Path(PYTHON).with_name("exabgp"))


class ExaPeer:
    """One ExaBGP process as a plain BGP speaker (no API process) in a namespace; `kill` is a SIGKILL."""

    def __init__(self, ns: Netns, workdir: Path, me: str, node: str) -> None:
        self.ns, self.workdir, self.me, self.node = ns, workdir, me, node
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0

    def config(self, *, announce: bool) -> str:
        static = f"    static {{ route {PREFIX} next-hop {self.me}; }}\n" if announce else ""
        return (
            f"neighbor {self.node} {{\n"
            f"    router-id {self.me};\n    local-address {self.me};\n"
            f"    local-as {PEER_AS};\n    peer-as 64512;\n    hold-time 9;\n"
            f"    manual-eor {'false' if announce else 'true'};\n"
            f"    capability {{ graceful-restart {RESTART_S}; }}\n"
            "    family { ipv4 unicast; }\n"
            f"{static}}}\n"
        )

    def start(self, *, announce: bool) -> None:
        self.incarnation += 1
        conf = self.workdir / f"peer-{self.incarnation}.conf"
        conf.write_text(self.config(announce=announce))
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("exabgp")}
        env.update({"exabgp_daemon_user": "root", "exabgp_daemon_drop": "false", "exabgp_api_cli": "false",
                    "exabgp_tcp_bind": "", "exabgp_log_destination": str(self.workdir / "peer.log"),
                    "exabgp_tcp_attempts": "0"})
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns.name, EXABGP, "server", str(conf)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def flap_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[tuple[BgpLab, ExaPeer]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    ns: Netns | None = None
    peer: ExaPeer | None = None
    try:
        lab.add_nodes(1)
        ns = Netns("flap")
        lab.plug(ns.name, "pf", "eth0")
        me = f"{lab.subnet}.250"
        ns.ip("addr", "add", f"{me}/24", "dev", "eth0")
        peer = ExaPeer(ns, tmp_path, me, lab.node_ip(next(iter(lab.nodes))))
        yield lab, peer
    finally:
        if peer is not None:
            peer.kill()
        lab.cleanup()
        if ns is not None:
            ns.close()


def session(lab: BgpLab, name: str) -> dict:
    return next(iter(lab.bgp_status(name).get("sessions", [])), {})


def test_a_peer_flapping_without_end_of_rib_loses_its_stale_paths_after_one_restart_time(
    flap_lab: tuple[BgpLab, ExaPeer], etcd_env: dict[str, str]
) -> None:
    lab, peer = flap_lab
    (name,) = list(lab.nodes)
    apply_pool(etcd_env, BGP_POOL)
    tabbyctl_apply(
        etcd_env,
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": 64512}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "flappy"},
         "spec": {"peerIP": peer.me, "asNumber": PEER_AS}},
    )
    lab.set_address(name)
    lab.start_agent(name)
    peer.start(announce=True)
    wait_for("session Established", lambda: lab.established(name, 1), timeout=40)
    wait_for(f"{PREFIX} in the kernel", lambda: lab.route_to(name, PREFIX), timeout=20)
    ups = session(lab, name)["established_count"]

    peer.kill()
    first_loss = time.monotonic()
    wait_for("the path kept stale", lambda: lab.bgp_status(name)["counters"]["prefixes_stale"].get(peer.me) == 1,
             timeout=10, interval=0.05)
    flaps_before_deadline = 0
    flushed_at: float | None = None
    end = first_loss + RESTART_S + 8
    while time.monotonic() < end:
        peer.start(announce=False)
        with contextlib.suppress(AssertionError):
            wait_for("re-established", lambda ups=ups: session(lab, name).get("established_count", 0) > ups
                     and lab.established(name, 1), timeout=max(0.5, end - time.monotonic()), interval=0.05)
            ups = session(lab, name)["established_count"]
            if time.monotonic() < first_loss + RESTART_S:
                flaps_before_deadline += 1
        present = lab.route_to(name, PREFIX) is not None
        peer.kill()
        if not present and flushed_at is None:
            flushed_at = time.monotonic()
        if present:
            assert time.monotonic() < first_loss + RESTART_S + 4, "stale path outlived one restart time"
    assert flaps_before_deadline >= 2, f"the peer came back only {flaps_before_deadline} times before the deadline"
    assert flushed_at is not None, "the stale path was never flushed while the peer flapped"
    assert flushed_at - first_loss >= RESTART_S - 1, (
        f"flushed after {flushed_at - first_loss:.1f}s: a reconnect with F=1 must not flush")
    counters = lab.bgp_status(name)["counters"]
    assert counters["prefixes_stale"].get(peer.me, 0) == 0 and counters["prefixes_received"].get(peer.me, 0) == 0
    assert lab.route_to(name, PREFIX) is None
