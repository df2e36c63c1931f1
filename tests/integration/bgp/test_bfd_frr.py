"""Tabby's BFD (bgp/bfd.py) against FRR's bfdd over a veth between two namespaces, over IPv4 and over
IPv6 (RFC 5881: Hop Limit 255 checked the same way): both sides Up with the configured timers, and each
side detects the other's death within 3 x 300 ms (plus scheduling slack on a loaded machine)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bgp.bfd import DOWN, UP, BfdRunner, open_sockets
from felix_like.netns import run_in_netns
from tests.integration.bgp.lab import Frr, Netns, link, run, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

FAMILIES = {4: ("10.79.0.1", "10.79.0.2", 24), 6: ("fd00:79::1", "fd00:79::2", 64)}
SLACK_S = 0.6  # a loaded 2-core machine delays timers; the bound checked is 3 x 300 ms + this


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def bfd_pair(request: pytest.FixtureRequest) -> Iterator[tuple[Netns, Frr, str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, FRR)")
    ours, theirs, plen = FAMILIES[request.param]
    a, b = Netns("bfda"), Netns("bfdb")
    frr: Frr | None = None
    try:
        if request.param == 6:
            for ns in (a, b):  # no duplicate address detection: the addresses are usable at once
                run("ip", "netns", "exec", ns.name, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0")
        link(a, f"{ours}/{plen}", b, f"{theirs}/{plen}")
        frr = Frr(b, bfd=True)
        frr.configure(
            f"bfd\n peer {ours} local-address {theirs}\n  receive-interval 300\n  transmit-interval 300\n"
            "  detect-multiplier 3\n  no shutdown\n"
        )
        yield a, frr, ours, theirs
    finally:
        if frr is not None:
            frr.close()
        a.close()
        b.close()


def test_bfd_up_both_sides_and_fast_failure_detection(bfd_pair: tuple[Netns, Frr, str, str]) -> None:
    ns, frr, OURS, THEIRS = bfd_pair

    def frr_peer(frr: Frr) -> dict[str, Any]:
        peers = frr.json("show bfd peers json")
        return next((p for p in peers if p.get("peer") == OURS), {}) if isinstance(peers, list) else {}

    events: list[tuple[float, str, int]] = []
    lock = threading.Lock()

    def on_state(peer: str, state: int, diag: int) -> None:
        with lock:
            events.append((time.monotonic(), peer, state))

    runner = BfdRunner(run_in_netns(ns.name, lambda: open_sockets(OURS)), on_state)
    runner.start()
    try:
        runner.add(THEIRS)
        wait_for("our session Up", lambda: runner.state(THEIRS) == UP, 15)
        peer = wait_for("FRR's session Up", lambda: (p := frr_peer(frr)).get("status") == "up" and p, 15)
        assert peer["receive-interval"] == 300 and peer["transmit-interval"] == 300
        assert peer["remote-receive-interval"] == 300 and peer["remote-transmit-interval"] == 300
        assert peer["remote-detect-multiplier"] == 3
        time.sleep(2)  # stays Up: no flap (a flap recovers in ~0.1 s, so the events are checked, not the state)
        assert runner.state(THEIRS) == UP and frr_peer(frr)["status"] == "up"
        with lock:
            assert [s for _, _, s in events if s == DOWN] == [], events
        assert runner.dropped_ttl == 0

        # we go silent (no AdminDown, as if the node died): FRR detects it within its detection time
        runner.stop()
        silent = time.monotonic()
        wait_for("FRR's session down", lambda: frr_peer(frr).get("status") == "down", 5, interval=0.02)
        assert time.monotonic() - silent <= 0.9 + SLACK_S + 0.3  # + one vtysh round trip
        runner = BfdRunner(run_in_netns(ns.name, lambda: open_sockets(OURS)), on_state)
        runner.start()
        runner.add(THEIRS)
        wait_for("Up again both sides", lambda: runner.state(THEIRS) == UP and frr_peer(frr).get("status") == "up",
                 15)

        # FRR's bfdd dies: we detect it within the detection time
        pid = int((frr.run_dir / "bfdd.pid").read_text())
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for("our session Down", lambda: runner.state(THEIRS) == DOWN, 5, interval=0.01)
        with lock:
            down_at = next(t for t, _, s in events if s == DOWN and t > killed)
        assert down_at - killed <= 0.9 + SLACK_S, down_at - killed
    finally:
        runner.stop()
