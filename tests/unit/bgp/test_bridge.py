"""Bridge parsing and command formatting (pure), property-fuzzed; plus the relay's route table and replay."""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import exabgp_api
from bgp.exabgp_codec import (
    BadLine,
    EndOfRib,
    Hello,
    Notification,
    Open,
    PeerState,
    Shutdown,
    Update,
    format_announce,
    format_eor,
    format_refresh,
    format_withdraw,
    parse_line,
)
from bgp.types import Announcement, GracefulRestart

# real lines captured from ExaBGP 5.0.15 against FRR 8.4
STATE_UP = (
    '{ "exabgp": "5.0.0", "time": 1795740302.22, "host" : "vm", "pid" : 29192, "ppid" : 29161, "counter": 2, '
    '"type": "state", "neighbor": { "address": { "local": "10.77.0.1", "peer": "10.77.0.2" }, "asn": { "local": '
    '64512, "peer": 64513 }, "router-id": "10.77.0.1" , "state": "up" } }'
)
UPDATE = (
    '{ "exabgp": "5.0.0", "time": 1795740303.32, "host" : "vm", "pid" : 29192, "ppid" : 29161, "counter": 3, '
    '"type": "update", "neighbor": { "address": { "local": "10.77.0.1", "peer": "10.77.0.2" }, "asn": { "local": '
    '64512, "peer": 64513 }, "router-id": "10.77.0.1" , "direction": "receive", "message": { "update": { '
    '"attribute": { "origin": "igp", "as-path": {"0": {"element": "as-sequence", "value": [64513]}}, "med": 0 }, '
    '"announce": { "ipv4 unicast": { "10.77.0.2": [ { "nlri": "10.88.0.0/24" } ] } } } } } }'
)
WITHDRAW = (
    '{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "10.77.0.1", "peer": "10.77.0.2" }, '
    '"asn": { "local": 64512, "peer": 64513 }, "direction": "receive", "message": { "update": { "withdraw": { '
    '"ipv4 unicast": [ { "nlri": "10.88.0.0/24" } ] } } } } }'
)
EOR = (
    '{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "10.77.0.1", "peer": "10.77.0.2" }, '
    '"asn": { "local": 64512, "peer": 64513 }, "direction": "receive", "message": { "eor": { "afi" : "ipv4", '
    '"safi" : "unicast" } } } }'
)
NOTIFICATION = (
    '{ "exabgp": "5.0.0", "type": "notification", "neighbor": { "address": { "local": "10.77.0.1", "peer": '
    '"10.77.0.2" }, "asn": { "local": 64512, "peer": 64513 }, "direction": "receive", "notification": { "code": 6, '
    '"subcode": 2, "data": "0x", "message": "" }  } }'
)


def test_real_exabgp_lines() -> None:
    state = parse_line(STATE_UP)
    assert state == PeerState(
        peer="10.77.0.2", state="up", local_address="10.77.0.1", local_as=64512, peer_as=64513, time=1795740302.22
    )
    upd = parse_line(UPDATE)
    assert isinstance(upd, Update) and upd.peer == "10.77.0.2"
    (path,) = upd.announces
    assert (path.prefix, path.next_hop, path.as_path, path.origin, path.med) == (
        "10.88.0.0/24",
        "10.77.0.2",
        (64513,),
        "igp",
        0,
    )
    assert path.peer_as == 64513 and not path.ibgp
    assert parse_line(WITHDRAW) == Update(peer="10.77.0.2", withdraws=("10.88.0.0/24",))
    assert parse_line(EOR) == EndOfRib(peer="10.77.0.2", family="ipv4 unicast")
    assert parse_line(NOTIFICATION) == Notification(peer="10.77.0.2", direction="receive", code=6, subcode=2)


def test_all_attributes_and_ibgp() -> None:
    msg = json.loads(UPDATE)
    msg["neighbor"]["asn"]["peer"] = 64512
    msg["neighbor"]["message"]["update"]["attribute"] = {
        "origin": "incomplete",
        "as-path": {"0": {"element": "as-sequence", "value": [1, 2]}, "1": {"element": "as-set", "value": [3]}},
        "med": 5,
        "local-preference": 200,
        "community": [[65000, 1], [65000, 2]],
        "large-community": [[1, 2, 3]],
        "originator-id": "10.0.0.9",
        "cluster-list": ["10.0.0.1", "10.0.0.2"],
    }
    upd = parse_line(json.dumps(msg))
    assert isinstance(upd, Update)
    (p,) = upd.announces
    assert p.ibgp and p.as_path == (1, 2, 3) and p.origin == "incomplete" and p.local_pref == 200
    assert p.communities == ("65000:1", "65000:2") and p.large_communities == ("1:2:3",)
    assert p.originator_id == "10.0.0.9" and p.cluster_list == ("10.0.0.1", "10.0.0.2")


def test_acks_text_and_others() -> None:
    assert parse_line("done") == "done"
    assert parse_line("error\n") == "error"
    assert parse_line('{ "answer": "done", "message": "command completed" }') == "done"
    assert parse_line("reload in progress") is None
    assert parse_line("") is None
    assert parse_line('{"exabgp": "5.0.0", "type": "notification", "notification": "shutdown"}') == Shutdown()
    assert parse_line('{"type": "keepalive", "neighbor": {}}') is None
    hello = parse_line('{"type": "tabby-hello", "pid": 3, "exabgp_pid": 2, "routes": ["announce route x"]}')
    assert hello == Hello(helper_pid=3, exabgp_pid=2, dropped=0, routes=("announce route x",), replay=0)
    for bad in ("whatever", "{", '{"type": "bogus", "neighbor": {}}', "[1]", '"done"'):
        with pytest.raises(BadLine):
            parse_line(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parse_never_raises_anything_but_badline_on_text(text: str) -> None:
    with contextlib.suppress(BadLine):
        parse_line(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_never_raises_anything_but_badline_on_json(value: object) -> None:
    """Random JSON, and random JSON grafted onto a real message's structure."""
    for candidate in (value, {"type": "update", "neighbor": value}, _graft(value)):
        with contextlib.suppress(BadLine):
            parse_line(json.dumps(candidate))


def _graft(value: object) -> dict:
    msg = json.loads(UPDATE)
    msg["neighbor"]["message"]["update"]["attribute"]["as-path"] = value
    msg["neighbor"]["message"]["update"]["announce"]["ipv4 unicast"]["10.77.0.2"][0]["nlri"] = value
    return msg


def test_format_commands() -> None:
    ann = Announcement(
        prefix="10.65.0.0/26",
        communities=("64512:100",),
        large_communities=("64512:1:2",),
        local_pref=200,
        med=10,
        as_path=(65001,),
        originator_id="10.0.0.9",
        cluster_list=("10.0.0.1",),
    )
    assert format_announce(ann, "10.0.0.2") == (
        "neighbor 10.0.0.2 announce route 10.65.0.0/26 next-hop self origin igp as-path [ 65001 ] med 10 "
        "local-preference 200 community [ 64512:100 ] large-community [ 64512:1:2 ] originator-id 10.0.0.9 "
        "cluster-list [ 10.0.0.1 ]"
    )
    assert format_announce(Announcement(prefix="10.1.0.0/26", next_hop="192.0.2.7")) == (
        "announce route 10.1.0.0/26 next-hop 192.0.2.7 origin igp"
    )
    assert format_withdraw("10.65.0.0/26") == "withdraw route 10.65.0.0/26 next-hop self"
    assert format_eor("10.0.0.2") == "neighbor 10.0.0.2 announce eor ipv4 unicast"
    assert format_refresh(None, "ipv6 unicast") == "announce route-refresh ipv6 unicast"


@pytest.mark.parametrize(
    "ann",
    [
        Announcement(prefix="10.65.0.1/26"),
        Announcement(prefix="10.65.0.0/26", next_hop="self; shutdown"),
        Announcement(prefix="10.65.0.0/26", communities=("1:2\nshutdown",)),
        Announcement(prefix="10.65.0.0/26", communities=("70000:1",)),
        Announcement(prefix="10.65.0.0/26", large_communities=("1:2",)),
        Announcement(prefix="10.65.0.0/26", originator_id="x"),
        Announcement(prefix="10.65.0.0/26", local_pref=-1),
        Announcement(prefix="10.65.0.0/26", as_path=(2**32,)),
    ],
)
def test_format_refuses_unsafe_or_invalid_fields(ann: Announcement) -> None:
    with pytest.raises(ValueError):
        format_announce(ann)


def test_relay_tracks_announced_routes_and_replays_states() -> None:
    relay = exabgp_api.Relay("/nonexistent/api.sock")
    relay.on_agent_line(b"neighbor 10.0.0.2 announce route 10.1.0.0/26 next-hop self")
    relay.on_agent_line(b"announce route 10.2.0.0/26 next-hop self")
    relay.on_agent_line(b"announce route 10.3.0.0/26 next-hop self")
    relay.on_agent_line(b"withdraw route 10.3.0.0/26 next-hop self")
    relay.on_agent_line(b"announce eor ipv4 unicast")
    relay.on_agent_line(b"\xff\xfe")
    assert sorted(relay.routes.values()) == [
        "announce route 10.2.0.0/26 next-hop self",
        "neighbor 10.0.0.2 announce route 10.1.0.0/26 next-hop self",
    ]
    assert relay.to_exabgp.count(b"\n") == 5
    relay.on_exabgp_line(STATE_UP.encode() + b"\n")
    relay.on_exabgp_line(b"done\n")
    assert relay.dropped == 2 and list(relay.states) == ["10.77.0.2"]


# The OPEN as ExaBGP 5.0.15's JSON encoder renders a received one (capabilities keyed by their code, "64" =
# graceful restart): F bit set for IPv4 (ExaBGP labels it "restart"), clear for IPv6, R bit set ("forwarding").
OPEN_GR = (
    '{ "exabgp": "5.0.15", "time": 1796153463.42, "host" : "vm", "pid" : 12611, "ppid" : 12609, "counter": 1, '
    '"type": "open", "neighbor": { "address": { "local": "10.0.0.1", "peer": "10.0.0.2" }, "asn": { "local": '
    '64512, "peer": 65001 }, "router-id": "10.0.0.1" , "direction": "receive", "open": { "version": 4, "asn": '
    '65001, "hold_time": 9, "router_id": "10.9.9.9", "capabilities": { "64": { "name": '
    '"graceful restart", "time": 120, "address-family-flags": { "ipv4/unicast": [ "restart" ] , "ipv6/unicast": '
    '[ ] }, "restart-flags": [ "forwarding" ]  } } } } }'
)


def test_open_with_graceful_restart_capability() -> None:
    event = parse_line(OPEN_GR)
    assert event == Open(
        peer="10.0.0.2",
        router_id="10.9.9.9",
        asn=65001,
        hold_time=9,
        graceful_restart=GracefulRestart(120, (("ipv4 unicast", True), ("ipv6 unicast", False)), restarting=True),
    )
    assert event.graceful_restart is not None and event.graceful_restart.forwarding("ipv4 unicast")
    assert not event.graceful_restart.forwarding("ipv6 unicast") and event.graceful_restart.lists("ipv6 unicast")


def test_open_helper_only_and_without_capability() -> None:
    helper = OPEN_GR.replace('"ipv4/unicast": [ "restart" ] , "ipv6/unicast": [ ] ', "")
    assert parse_line(helper).graceful_restart == GracefulRestart(120, (), restarting=True)  # type: ignore[union-attr]
    bare = json.loads(OPEN_GR)
    del bare["neighbor"]["open"]["capabilities"]["64"]
    assert parse_line(json.dumps(bare)).graceful_restart is None  # type: ignore[union-attr]
    sent = OPEN_GR.replace('"direction": "receive"', '"direction": "send"')
    assert parse_line(sent) is None
    for bad in ('"time": 120', '"router_id": "10.9.9.9"'):
        with pytest.raises(BadLine):
            parse_line(OPEN_GR.replace(bad, bad.split(":")[0] + ': "x"'))


def test_relay_replays_the_last_open_before_the_states(tmp_path: pathlib.Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.closing(listener):
        listener.bind(str(tmp_path / "api.sock"))
        listener.listen(1)
        relay = exabgp_api.Relay(str(tmp_path / "api.sock"))
        relay.on_exabgp_line(OPEN_GR.encode() + b"\n")
        relay.on_exabgp_line(OPEN_GR.replace('"receive"', '"send"').encode() + b"\n")  # ours: not kept
        relay.on_exabgp_line(STATE_UP.encode() + b"\n")
        assert list(relay.opens) == ["10.0.0.2"]
        relay.connect()
        assert relay.sock is not None
        lines = bytes(relay.to_agent).splitlines()
        relay.disconnect()
    hello = json.loads(lines[0])
    assert hello["replay"] == 1
    assert [json.loads(line)["type"] for line in lines[1:]] == ["open", "state"]
    assert json.loads(lines[1])["neighbor"]["direction"] == "receive"


def test_as_set_and_confederation_segments_are_kept() -> None:
    msg = json.loads(UPDATE)
    msg["neighbor"]["message"]["update"]["attribute"]["as-path"] = {
        "0": {"element": "confed-sequence", "value": [64601]},
        "1": {"element": "as-sequence", "value": [64513]},
        "2": {"element": "as-set", "value": [1, 2]},
    }
    event = parse_line(json.dumps(msg))
    assert isinstance(event, Update)
    (p,) = event.announces
    assert p.as_path == (64601, 64513, 1, 2)
    assert p.as_path_segments == (("confed-sequence", (64601,)), ("as-sequence", (64513,)), ("as-set", (1, 2)))
    assert p.path_length == 2 and p.neighbour_as == 64513
    msg["neighbor"]["message"]["update"]["attribute"]["as-path"] = {"0": {"element": "as-bogus", "value": [1]}}
    with pytest.raises(BadLine):
        parse_line(json.dumps(msg))
    # a plain sequence keeps no segments (nothing to preserve)
    (plain,) = parse_line(UPDATE).announces  # type: ignore[union-attr]
    assert plain.as_path_segments == ()


def test_ipv6_global_and_link_local_next_hop_gives_one_path_with_the_global_one() -> None:
    """FRR sends an IPv6 route over a shared link with a global and a link-local next hop (RFC 2545);
    ExaBGP lists the NLRI under both. One path per prefix, with the global next hop, whichever comes first."""
    for order in (("fe80::1", "fd00:10:1::1"), ("fd00:10:1::1", "fe80::1")):
        by_hop = ", ".join(f'"{hop}": [ {{ "nlri": "fd00:244::/122" }} ]' for hop in order)
        line = UPDATE.replace('"ipv4 unicast": { "10.77.0.2": [ { "nlri": "10.88.0.0/24" } ] }',
                              f'"ipv6 unicast": {{ {by_hop} }}')
        event = parse_line(line)
        assert isinstance(event, Update)
        assert [(p.prefix, p.next_hop) for p in event.announces] == [("fd00:244::/122", "fd00:10:1::1")]
