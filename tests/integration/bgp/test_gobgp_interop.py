"""GoBGP interop with the Tabby agent, plus a Speaker supervision regression found while building the labs.

The supervision test lives here (not in test_speaker_frr.py) only because this file is the one the
examples/demo work may touch; it belongs with the Speaker tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bgp.types import GLOBAL, PeerSpec, SpeakerSpec
from tests.integration.bgp.conftest import LoopThread
from tests.integration.bgp.lab import Netns, link, wait_for

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
