"""TCP MD5 between ExaBGP and FRR, and malformed lines injected on the bridge's socket.

MD5: a wrong password must never establish (bounded wait), the right one must (after a reload that
re-establishes only the changed neighbor). Fuzz: a fake relay connects to a live BgpBridge and sends a
fixed corpus of ~30 bad lines between valid ones: every bad line is counted and skipped, the bridge keeps
delivering the valid messages that follow.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace

import pytest

from bgp.exabgp_codec import EndOfRib, Hello, PeerState, Update
from bgp.relay_link import BgpBridge
from bgp.types import GLOBAL, PeerSpec, SpeakerSpec
from tests.integration.bgp.conftest import LoopThread
from tests.integration.bgp.lab import link, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

A_IP, B_IP = "10.79.0.1", "10.79.0.2"
SPEAKER = SpeakerSpec(node="node-md5", router_id=A_IP, local_as=64512)
PEER = PeerSpec(address=B_IP, peer_as=64513, local_as=64512, type=GLOBAL, name="frr-md5", local_address=A_IP)


def test_md5_wrong_password_never_establishes_right_one_does(loop_thread, make_ns, make_frr, make_speaker) -> None:  # type: ignore[no-untyped-def]
    a, b = make_ns("md5a"), make_ns("md5b")
    link(a, f"{A_IP}/24", b, f"{B_IP}/24")
    frr = make_frr(b)
    frr.configure(
        f"router bgp 64513\n bgp router-id {B_IP}\n no bgp ebgp-requires-policy\n"
        f" neighbor {A_IP} remote-as 64512\n neighbor {A_IP} password s3cret-Tabby\n neighbor {A_IP} timers connect 2\n"
    )
    speaker, _ = make_speaker(a)
    assert loop_thread.run(speaker.apply(SPEAKER, [replace(PEER, password="wrong-one")])) == "started"
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        assert not frr.established(A_IP), "a wrong MD5 password established a session"
        assert speaker.sessions[B_IP].state != "Established"
        time.sleep(0.5)
    assert loop_thread.run(speaker.apply(SPEAKER, [replace(PEER, password="s3cret-Tabby")])) == "reloaded"
    wait_for("MD5 session Established", lambda: frr.established(A_IP), 30)
    wait_for("speaker sees it", lambda: speaker.sessions[B_IP].state == "Established", 10)


def _state(peer: str, state: str) -> bytes:
    msg = {
        "exabgp": "5.0.0",
        "time": 1.0,
        "type": "state",
        "neighbor": {"address": {"local": "10.0.0.1", "peer": peer}, "asn": {"local": 1, "peer": 2}, "state": state},
    }
    return json.dumps(msg).encode() + b"\n"


CORPUS: list[bytes] = [
    b'{"type": "state", "neighbor": {"address": {"peer": "10.0.0.2"',  # truncated JSON
    b"{",
    b"}",
    b"[]",
    b"null",
    b"42",
    b'"done"',
    b'{"type": 7}',
    b'{"type": "state"}',
    b'{"type": "state", "neighbor": []}',
    b'{"type": "state", "neighbor": {"address": {"peer": 17}, "state": "up"}}',
    b'{"type": "state", "neighbor": {"address": {"peer": "not-an-ip"}, "state": "up"}}',
    b'{"type": "state", "neighbor": {"address": {"peer": "10.0.0.2"}, "state": "sideways"}}',
    b'{"type": "teleport", "neighbor": {"address": {"peer": "10.0.0.2"}}}',
    b'{"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": "x"}}',
    b'{"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": {"update": {"announce": '
    b'{"ipv4 unicast": {"10.0.0.2": [{"nlri": "10.1.2.3/8"}]}}}}}}',  # host bits set
    b'{"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": {"update": {"announce": '
    b'{"ipv4 unicast": {"bogus-nh": [{"nlri": "10.0.0.0/8"}]}}}}}}',
    b'{"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": {"update": {"attribute": '
    b'{"med": "high"}, "announce": {"ipv4 unicast": {"10.0.0.2": [{"nlri": "10.0.0.0/8"}]}}}}}}',
    b'{"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": {"update": {"attribute": '
    b'{"as-path": {"0": {"value": ["x"]}}}, "announce": {"ipv4 unicast": {"10.0.0.2": ["10.0.0.0/8"]}}}}}}',
    b'{"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": {"update": {"attribute": '
    b'{"community": [[1, 2, 3]]}, "announce": {"ipv4 unicast": {"10.0.0.2": ["10.0.0.0/8"]}}}}}}',
    b'{"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": {"eor": {"afi": 4}}}}',
    b'{"type": "notification", "neighbor": {"address": {"peer": "10.0.0.2"}, "notification": {"code": 999}}}',
    b'{"answer": "maybe"}',
    b"\x00\x01\x02\xff\xfe binary junk \x80\x81",
    b"\xc3\x28 invalid utf-8",
    b"{" * 5000 + b"}" * 5000,  # deep nesting
    b'{"type": "tabby-hello", "pid": "x"}',
    b"   \t   ",  # blank: ignored, not bad
    b"%%%%%%%%",
    b"x" * (2 * 1024 * 1024),  # huge line, over the bridge's limit
    b"{" + b'"a": 1, ' * 10000 + b'"type": "state"}',
]


def test_fuzzed_lines_are_logged_and_skipped_and_the_bridge_keeps_going(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lt = LoopThread()
    bridge = BgpBridge(str(tmp_path / "api.sock"))
    try:
        lt.run(bridge.start())
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(tmp_path / "api.sock"))
        hello = {"type": "tabby-hello", "pid": 1, "exabgp_pid": 2, "dropped": 0, "routes": [], "replay": 0}
        client.sendall(json.dumps(hello).encode() + b"\n")
        assert isinstance(lt.run(bridge.next_event(10)), Hello)
        for i, junk in enumerate(CORPUS):
            client.sendall(junk + b"\n")
            client.sendall(_state(f"10.0.{i}.9", "up"))
            ev = lt.run(bridge.next_event(10))
            assert isinstance(ev, PeerState) and ev.peer == f"10.0.{i}.9" and ev.state == "up", (i, ev)
        # a whole valid update after all that junk
        update = (
            b'{"type": "update", "neighbor": {"address": {"local": "10.0.0.1", "peer": "10.0.0.2"}, "asn": '
            b'{"local": 1, "peer": 2}, "message": {"update": {"attribute": {"origin": "igp", "as-path": {"0": '
            b'{"element": "as-sequence", "value": [2]}}, "community": [[65000, 1]]}, "announce": {"ipv4 unicast": '
            b'{"10.0.0.2": [{"nlri": "10.9.0.0/24"}]}}}}}}\n'
        )
        client.sendall(update + b"done\nerror\n")
        ev = lt.run(bridge.next_event(10))
        assert isinstance(ev, Update) and ev.announces[0].prefix == "10.9.0.0/24"
        assert ev.announces[0].communities == ("65000:1",)
        blanks = sum(1 for c in CORPUS if not c.strip())
        assert bridge.stats.bad_lines == len(CORPUS) - blanks
        assert bridge.stats.acks_unmatched == 2
        client.sendall(
            b'{"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": {"eor": '
            b'{"afi": "ipv4", "safi": "unicast"}}}}\n'
        )
        assert isinstance(lt.run(bridge.next_event(10)), EndOfRib)
        client.close()
    finally:
        lt.run(bridge.close())
        lt.close()
