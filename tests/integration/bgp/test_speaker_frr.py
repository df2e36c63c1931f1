"""ExaBGP (driven by Speaker) in namespace A against FRR in namespace B, then a second FRR in C.

Tests run in file order and share one ExaBGP/FRR pair (start-up is the slow part); each test leaves the
pair Established. The destructive ones (kill ExaBGP, agent restart) come last.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from bgp.exabgp_codec import EndOfRib, Hello, Open, PeerState, Update
from bgp.speaker import Speaker
from bgp.types import GLOBAL, Announcement, PeerSpec, SpeakerSpec
from tests.integration.bgp.conftest import Events, LoopThread
from tests.integration.bgp.lab import Frr, Netns, link, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

A_IP, B_IP, A2_IP, C_IP = "10.77.0.1", "10.77.0.2", "10.78.0.1", "10.78.0.2"
OUR_AS, B_AS, C_AS = 64512, 64513, 64514
SPEAKER = SpeakerSpec(node="node-a", router_id=A_IP, local_as=OUR_AS, address=None)
PEER_B = PeerSpec(address=B_IP, peer_as=B_AS, local_as=OUR_AS, type=GLOBAL, name="frr-b", local_address=A_IP)
PEER_C = PeerSpec(address=C_IP, peer_as=C_AS, local_as=OUR_AS, type=GLOBAL, name="frr-c", local_address=A2_IP)
BLOCK = "10.65.3.0/26"


def frr_conf(asn: int, rid: str, neighbor: str, remote_as: int) -> str:
    return f"""
router bgp {asn}
 bgp router-id {rid}
 no bgp ebgp-requires-policy
 neighbor {neighbor} remote-as {remote_as}
 neighbor {neighbor} timers connect 2
 address-family ipv4 unicast
 exit-address-family
"""


class Lab:
    def __init__(self, lt: LoopThread, a: Netns, b: Netns, c: Netns, frr_b: Frr, frr_c: Frr, sp: Speaker, ev: Events):
        self.lt, self.a, self.b, self.c = lt, a, b, c
        self.frr_b, self.frr_c, self.speaker, self.events = frr_b, frr_c, sp, ev


@pytest.fixture(scope="module")
def lab(loop_thread, make_ns, make_frr, make_speaker) -> Lab:  # type: ignore[no-untyped-def]
    a, b, c = make_ns("a"), make_ns("b"), make_ns("c")
    link(a, f"{A_IP}/24", b, f"{B_IP}/24")
    link(a, f"{A2_IP}/24", c, f"{C_IP}/24")
    frr_b, frr_c = make_frr(b), make_frr(c)
    frr_b.configure(frr_conf(B_AS, B_IP, A_IP, OUR_AS))
    frr_c.configure(frr_conf(C_AS, C_IP, A2_IP, OUR_AS))
    speaker, events = make_speaker(a)
    assert loop_thread.run(speaker.apply(SPEAKER, [PEER_B])) == "started"
    return Lab(loop_thread, a, b, c, frr_b, frr_c, speaker, events)


def established_b(lab: Lab) -> dict[str, Any]:
    wait_for("FRR B sees ExaBGP Established", lambda: lab.frr_b.established(A_IP), 30)
    return lab.frr_b.neighbor(A_IP)


def same_session(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """FRR's view: no new connection and an uptime that kept running (the epoch is now - uptime: +-1 s jitter)."""
    return (
        after["connectionsEstablished"] == before["connectionsEstablished"]
        and abs(after["bgpTimerUpEstablishedEpoch"] - before["bgpTimerUpEstablishedEpoch"]) <= 1
        and after["bgpTimerUpMsec"] >= before["bgpTimerUpMsec"]
    )


def test_session_established_on_both_sides(lab: Lab) -> None:
    established_b(lab)
    summary = lab.frr_b.json("show bgp summary json")
    assert summary["ipv4Unicast"]["peers"][A_IP]["state"] == "Established"
    wait_for("speaker session state", lambda: lab.speaker.sessions[B_IP].state == "Established", 10)
    status = lab.speaker.sessions[B_IP]
    assert status.type == GLOBAL and status.name == "frr-b" and status.since > 0
    assert (lab.speaker.run_dir / "exabgp.log").stat().st_size > 0


def test_frr_open_reaches_the_agent_with_router_id_and_graceful_restart(lab: Lab) -> None:
    """FRR 8.4 in its default mode is a graceful-restart helper: its OPEN carries the capability with a
    restart time but no <AFI, SAFI> (it preserves no forwarding state), which the RIB must treat as 'flush
    its paths when its session drops'."""
    established_b(lab)
    got = lab.events.wait("FRR B's OPEN", lambda e: isinstance(e, Open) and e.peer == B_IP)
    assert isinstance(got, Open)
    assert got.router_id == B_IP and got.asn == B_AS
    assert got.graceful_restart is not None and got.graceful_restart.families == (), got
    assert got.graceful_restart.restart_time > 0


def test_announced_block_reaches_frr_with_our_next_hop(lab: Lab) -> None:
    established_b(lab)
    ann = Announcement(prefix=BLOCK, communities=("64512:100",))
    lab.lt.run(lab.speaker.announce(ann))

    def path() -> dict[str, Any] | None:
        paths = lab.frr_b.route(BLOCK).get("paths", [])
        return paths[0] if paths else None

    got = wait_for("FRR B has our block", path, 15)
    assert [nh["ip"] for nh in got["nexthops"]] == [A_IP]
    assert got["aspath"]["string"] == str(OUR_AS)
    assert got["community"]["list"] == ["64512:100"]


def test_frr_reflects_our_block_back_with_our_as_in_the_path(lab: Lab) -> None:
    """FRR advertises our own prefix back over eBGP: the bridge reports it; the RIB's loop check must drop it."""
    ev = lab.events.wait(
        "our block reflected",
        lambda e: isinstance(e, Update) and any(p.prefix == BLOCK for p in e.announces),
        15,
    )
    assert isinstance(ev, Update)
    path = next(p for p in ev.announces if p.prefix == BLOCK)
    assert OUR_AS in path.as_path


def test_frr_originated_prefix_becomes_an_update_then_a_withdraw(lab: Lab) -> None:
    established_b(lab)
    lab.frr_b.configure(
        f"ip route 10.88.0.0/24 blackhole\nrouter bgp {B_AS}\n address-family ipv4 unicast\n"
        "  network 10.88.0.0/24 route-map SETATTR\n exit-address-family\n"
        "route-map SETATTR permit 10\n set community 64513:7\n set metric 33\n"
    )
    ev = lab.events.wait(
        "Update for 10.88.0.0/24",
        lambda e: isinstance(e, Update) and any(p.prefix == "10.88.0.0/24" for p in e.announces),
        20,
    )
    assert isinstance(ev, Update)
    path = next(p for p in ev.announces if p.prefix == "10.88.0.0/24")
    assert path.peer_address == B_IP and path.peer_as == B_AS and not path.ibgp
    assert path.next_hop == B_IP
    assert path.as_path == (B_AS,)
    assert path.origin == "igp"
    assert path.med == 33
    assert path.communities == ("64513:7",)
    # FRR sent its End-of-RIB after the initial table
    lab.events.wait("EoR from B", lambda e: isinstance(e, EndOfRib) and e.peer == B_IP, 5)

    lab.frr_b.configure(f"router bgp {B_AS}\n address-family ipv4 unicast\n  no network 10.88.0.0/24\n")
    lab.events.wait(
        "withdraw of 10.88.0.0/24",
        lambda e: isinstance(e, Update) and "10.88.0.0/24" in e.withdraws and e.peer == B_IP,
        20,
    )


def test_adding_a_peer_reloads_and_keeps_the_existing_session(lab: Lab) -> None:
    before = established_b(lab)
    pid = lab.speaker.pid
    result = lab.lt.run(lab.speaker.apply(SPEAKER, [PEER_B, PEER_C]))
    assert result == "reloaded"
    wait_for("FRR C Established", lambda: lab.frr_c.established(A2_IP), 30)
    # our block is announced to every peer (announce without a neighbor): C gets it too
    wait_for("FRR C has our block", lambda: lab.frr_c.route(BLOCK).get("paths"), 15)
    # a neighbor added by reload reports its OPEN too (graceful restart depends on it)
    lab.events.wait("FRR C's OPEN", lambda e: isinstance(e, Open) and e.peer == C_IP, 5)
    after = lab.frr_b.neighbor(A_IP)
    assert lab.speaker.pid == pid, "a reload, not a restart"
    assert after["bgpState"] == "Established"
    assert after["connectionsEstablished"] == before["connectionsEstablished"]
    assert after["connectionsDropped"] == before["connectionsDropped"]
    assert same_session(before, after)


def test_removing_a_peer_reloads_and_keeps_the_other_session(lab: Lab) -> None:
    before = established_b(lab)
    assert lab.lt.run(lab.speaker.apply(SPEAKER, [PEER_B])) == "reloaded"
    wait_for("FRR C loses the session", lambda: not lab.frr_c.established(A2_IP), 15)
    assert C_IP not in lab.speaker.sessions
    after = lab.frr_b.neighbor(A_IP)
    assert after["connectionsEstablished"] == before["connectionsEstablished"]
    assert same_session(before, after)


def test_unchanged_config_is_a_no_op(lab: Lab) -> None:
    assert lab.lt.run(lab.speaker.apply(SPEAKER, [PEER_B])) == "unchanged"


def test_agent_restart_adopts_exabgp_and_keeps_the_session(lab: Lab, make_speaker) -> None:  # type: ignore[no-untyped-def]
    extra = "10.65.9.0/26"
    lab.lt.run(lab.speaker.announce(Announcement(prefix=extra)))
    wait_for("FRR B has the extra block", lambda: lab.frr_b.route(extra).get("paths"), 15)
    before = established_b(lab)
    pid = lab.speaker.pid
    lab.lt.run(lab.speaker.stop(keep_exabgp=True))
    assert pid is not None
    os.kill(pid, 0)  # still running
    # a new agent on the same run directory
    speaker2, events2 = make_speaker(lab.a, run_dir=lab.speaker.run_dir)
    assert lab.lt.run(speaker2.apply(SPEAKER, [PEER_B])) == "unchanged"
    assert speaker2.pid == pid
    hello = events2.wait("relay hello", lambda e: isinstance(e, Hello), 10)
    assert isinstance(hello, Hello) and any(BLOCK in r for r in hello.routes)
    # until the new agent has recomputed its announcements, nothing ExaBGP holds is withdrawn
    time.sleep(1)
    assert lab.frr_b.route(BLOCK).get("paths")
    assert lab.frr_b.route(extra).get("paths")
    lab.lt.run(speaker2.replace_announcements([Announcement(prefix=BLOCK, communities=("64512:100",))]))
    wait_for("the extra block withdrawn", lambda: not lab.frr_b.route(extra).get("paths"), 15)
    assert lab.frr_b.route(BLOCK).get("paths")
    replayed = events2.wait("replayed state", lambda e: isinstance(e, PeerState) and e.replayed, 10)
    assert isinstance(replayed, PeerState) and replayed.state == "up"
    # the replayed `up` makes the new agent ask B for its table again (ROUTE-REFRESH)
    lab.frr_b.configure(
        f"ip route 10.89.0.0/24 blackhole\nrouter bgp {B_AS}\n address-family ipv4 unicast\n  network 10.89.0.0/24\n"
    )
    events2.wait(
        "Update after agent restart",
        lambda e: isinstance(e, Update) and any(p.prefix == "10.89.0.0/24" for p in e.announces),
        15,
    )
    after = lab.frr_b.neighbor(A_IP)
    assert after["connectionsEstablished"] == before["connectionsEstablished"]
    assert same_session(before, after)
    lab.speaker, lab.events = speaker2, events2


def test_killed_exabgp_is_restarted_and_the_session_and_routes_come_back(lab: Lab) -> None:
    before = established_b(lab)
    pid = lab.speaker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for("a new ExaBGP pid", lambda: lab.speaker.pid not in (None, pid), 15)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        n = lab.frr_b.neighbor(A_IP)
        if n.get("bgpState") == "Established" and n["connectionsEstablished"] > before["connectionsEstablished"]:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("session did not come back after ExaBGP was killed")
    wait_for("FRR B has our block again", lambda: lab.frr_b.route(BLOCK).get("paths"), 15)
    assert lab.speaker.restarts >= 1
