"""`node status` BGP warnings (controller/node/bgp_warnings.py) and their rendering."""

from __future__ import annotations

from bgp.types import GLOBAL, MESH, GracefulRestart, PeerSpec
from controller.cli.node import render_status
from controller.node.bgp_warnings import (
    SessionFacts,
    applicable_resources,
    graceful_restart_text,
    policy_lines,
    session_lines,
)
from datamodel.resources import parse_resource


def _peer(address: str, *, bfd: bool = False, type_: str = GLOBAL, name: str = "tor") -> PeerSpec:
    return PeerSpec(address=address, peer_as=65001, local_as=64512, type=type_, name=name, bfd=bfd)  # type: ignore[arg-type]


def _facts(address: str, **kw: object) -> SessionFacts:
    base: dict[str, object] = {"address": address, "bgp_state": "Established", "established_for": 60.0,
                               "last_error": "", "bfd": None, "stale": 0, "stale_left": None}
    base.update(kw)
    return SessionFacts(**base)  # type: ignore[arg-type]


def test_bfd_requested_for_a_peer_that_is_not_directly_connected() -> None:
    peers = {"10.9.0.1": _peer("10.9.0.1", bfd=True)}
    (line,) = session_lines(peers, [_facts("10.9.0.1")], "10.0.0.1/24")
    assert "not directly connected" in line and "hold time (90s)" in line


def test_bfd_not_up_on_an_established_session_after_the_grace_period() -> None:
    peers = {"10.0.0.254": _peer("10.0.0.254", bfd=True)}
    assert session_lines(peers, [_facts("10.0.0.254", bfd="Up")], "10.0.0.1/24") == []
    assert session_lines(peers, [_facts("10.0.0.254", bfd="Down", established_for=1.0)], "10.0.0.1/24") == []
    (line,) = session_lines(peers, [_facts("10.0.0.254", bfd="Down")], "10.0.0.1/24")
    assert "BFD is Down while the BGP session is Established" in line
    # BFD not requested: nothing to say
    assert session_lines({"10.0.0.254": _peer("10.0.0.254")}, [_facts("10.0.0.254")], "10.0.0.1/24") == []


def test_a_refused_open_is_named_with_its_subcode() -> None:
    facts = _facts("10.0.0.254", bgp_state="Idle", last_error="NOTIFICATION received 2/7 unsupported capability")
    (line,) = session_lines({}, [facts], "10.0.0.1/24")
    assert "OPEN was refused (Unsupported Capability)" in line
    other = _facts("10.0.0.254", bgp_state="Idle", last_error="NOTIFICATION received 6/2 administrative shutdown")
    assert session_lines({}, [other], "10.0.0.1/24") == []


def test_stale_paths_of_a_down_peer_are_shown_with_the_time_left() -> None:
    (line,) = session_lines({}, [_facts("10.0.0.254", bgp_state="Idle", stale=3, stale_left=41.6)], None)
    assert "3 paths kept stale (graceful restart) for 42s more" in line
    assert session_lines({}, [_facts("10.0.0.254", stale=3)], None) == [], "Established: being refreshed"


def test_graceful_restart_column() -> None:
    assert graceful_restart_text(None, False) == "-"
    assert graceful_restart_text(None, True).startswith("none")
    assert graceful_restart_text(GracefulRestart(120), True).startswith("helper only, 120s")
    text = graceful_restart_text(GracefulRestart(30, (("ipv4 unicast", True), ("ipv6 unicast", False))), True)
    assert text == "30s: ipv4 unicast F=1, ipv6 unicast F=0"


def _res(kind: str, name: str, spec: dict) -> object:
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name},
                           "spec": spec}, kind, 0)


def test_support_policy_warnings_of_the_resources_behind_this_nodes_sessions() -> None:
    configs = [_res("BGPConfiguration", "default", {"logSeverityScreen": "Debug"}),
               _res("BGPConfiguration", "node.other", {"logSeverityScreen": "Debug"})]
    bgp_peers = [_res("BGPPeer", "tor", {"peerIP": "10.0.0.254", "asNumber": 65001,
                                         "birdGatewayMode": "Recursive", "filters": ["f1"]}),
                 _res("BGPPeer", "elsewhere", {"peerIP": "10.5.0.254", "asNumber": 65001,
                                               "birdGatewayMode": "Recursive"})]
    rule = {"action": "Accept", "interface": "eth0"}
    filters = [_res("BGPFilter", "f1", {"exportV4": [rule]}), _res("BGPFilter", "f2", {"exportV4": [rule]})]
    chosen = applicable_resources("me", [_peer("10.0.0.254"), _peer("10.0.0.2", type_=MESH, name="n2")],
                                  configs, bgp_peers, filters)
    assert [(r.KIND, r.name) for r in chosen] == [("BGPConfiguration", "default"), ("BGPPeer", "tor"),
                                                   ("BGPFilter", "f1")]
    lines = policy_lines(chosen)
    assert any(line.startswith("BGPConfiguration default: spec.logSeverityScreen") for line in lines)
    assert any(line.startswith("BGPPeer tor: spec.birdGatewayMode") for line in lines)
    assert any(line.startswith("BGPFilter f1: spec.exportV4[0].interface") for line in lines)
    assert not any("elsewhere" in line or "f2" in line or "node.other" in line for line in lines)


def test_refused_field_written_past_apply_is_reported_as_not_honoured() -> None:
    peer = _res("BGPPeer", "tor", {"peerIP": "10.0.0.254", "asNumber": 65001, "reachableBy": "10.0.0.1"})
    (line,) = policy_lines([peer])
    assert line.startswith("not honoured (refused at apply): BGPPeer tor: spec.reachableBy")


def test_status_text_shows_graceful_restart_bfd_and_warnings() -> None:
    session = {"peer_address": "10.0.0.254", "peer_type": "global", "state": "up", "since": 0, "info": "Established",
               "bgp_state": "Established", "graceful_restart": "120s: ipv4 unicast F=1", "prefixes_stale": 0,
               "bfd": "Up", "bfd_requested": True}
    out = render_status({"enabled": True, "sessions": [session], "warnings": ["peer 10.0.0.254: something"]})
    assert "Graceful restart and BFD" in out
    assert "| 10.0.0.254   | 120s: ipv4 unicast F=1 | 0           | Up  |" in out
    assert out.endswith("Warnings\n- peer 10.0.0.254: something\n")
