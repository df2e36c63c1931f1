"""Hand-encoded route messages decode back to the same Route; diff produces the minimal operations."""

from __future__ import annotations

import struct

import pytest

from felix_like.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    RT_SCOPE_LINK,
    RT_SCOPE_NOWHERE,
    RTA_MULTIPATH,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTNH_F_ONLINK,
    TABBY_RT_PROTO,
    NextHop,
    Route,
    RouteEvent,
    RouteOp,
    RouteSocket,
    RouteType,
    decode_route,
    iter_messages,
)
from felix_like.route_programmer import RouteProgrammer, _normalise, diff


@pytest.fixture
def rsock() -> RouteSocket:
    # A netlink socket in our own namespace needs no privilege; only the codec is exercised.
    sock = RouteSocket(None)
    sock._ifindex = {"eth0": 2, "tunl0": 3, "vxlan.tabby": 7}
    sock._ifname = {v: k for k, v in sock._ifindex.items()}
    yield sock
    sock.close()


ROUTES = [
    Route("10.65.2.0/26", gateway="192.0.2.12", oif="eth0"),
    Route("10.65.3.0/26", gateway="198.51.100.13", oif="tunl0", onlink=True),
    Route("10.65.4.0/26", gateway="10.65.200.3", oif="vxlan.tabby", onlink=True, metric=5),
    Route("10.65.1.0/26", RouteType.BLACKHOLE),
    Route("10.65.1.5/32", oif="eth0"),
    Route("fd00:65::40/122", gateway="2001:db8:1::12", oif="eth0", metric=1024),
    Route("fd00:65::/122", RouteType.BLACKHOLE, metric=1024),
    Route("0.0.0.0/0", gateway="192.0.2.1", oif="eth0"),
]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.describe())
def test_encode_decode_roundtrip(rsock: RouteSocket, route: Route) -> None:
    data = rsock.encode(RouteOp.ADD, route, 42)
    ((mtype, flags, seq, offset),) = list(iter_messages(data))
    assert (mtype, seq) == (RTM_NEWROUTE, 42)
    assert flags & NLM_F_ACK and flags & NLM_F_CREATE and flags & NLM_F_EXCL and not flags & NLM_F_REPLACE
    decoded = decode_route(data, offset, rsock.ifnames)
    assert decoded == (route, TABBY_RT_PROTO, 254)
    rtm_scope, rtm_flags = data[16 + 6], struct.unpack_from("=I", data, 16 + 8)[0]
    assert bool(rtm_flags & RTNH_F_ONLINK) == route.onlink
    if route.type == RouteType.UNICAST and not route.gateway and not route.ipv6:
        assert rtm_scope == RT_SCOPE_LINK


def test_replace_and_delete_flags(rsock: RouteSocket) -> None:
    rep = rsock.encode(RouteOp.REPLACE, ROUTES[0], 1)
    assert struct.unpack_from("=H", rep, 6)[0] & NLM_F_REPLACE
    dele = rsock.encode(RouteOp.DELETE, ROUTES[0], 2)
    assert struct.unpack_from("=H", dele, 4)[0] == RTM_DELROUTE
    assert dele[16 + 5] == TABBY_RT_PROTO  # the kernel matches it: only our routes can go
    assert dele[16 + 6] == RT_SCOPE_NOWHERE


def test_unknown_interface_fails_alone_without_sending(rsock: RouteSocket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rsock, "refresh_links", lambda: {})
    failures = rsock.apply([(RouteOp.ADD, Route("10.0.0.0/26", gateway="192.0.2.1", oif="nope0"))])
    assert [f.errno for f in failures] == [19]
    assert rsock.writes == 0


def test_diff_minimal_and_ordered() -> None:
    desired = _normalise(
        [
            Route("10.0.0.0/26", RouteType.BLACKHOLE),
            Route("10.0.1.0/26", gateway="192.0.2.2", oif="eth0"),
            Route("fd00::/122", RouteType.BLACKHOLE),  # metric 0 on IPv6 means 1024
        ]
    )
    assert ("fd00::/122", 1024) in desired
    actual = _normalise(
        [
            Route("10.0.0.0/26", RouteType.BLACKHOLE),
            Route("10.0.1.0/26", gateway="192.0.2.3", oif="eth0"),
            Route("10.0.2.0/26", gateway="192.0.2.3", oif="eth0"),
        ]
    )
    ops = diff(desired, actual)
    assert [(op, r.dst) for op, r in ops] == [
        (RouteOp.REPLACE, "10.0.1.0/26"),
        (RouteOp.ADD, "fd00::/122"),
        (RouteOp.DELETE, "10.0.2.0/26"),
    ]
    assert diff(desired, dict(desired)) == []


# -- multipath (ECMP) -----------------------------------------------------------------------------

MULTIPATH = [
    Route.multipath("198.51.100.0/24", [NextHop("192.0.2.13", "eth0"), NextHop("192.0.2.12", "eth0")]),
    Route.multipath("10.65.9.0/26", [NextHop("198.51.100.13", "tunl0", True), NextHop("192.0.2.12", "eth0")]),
    Route.multipath("10.65.8.0/26", [NextHop("192.0.2.12", "eth0", weight=3), NextHop("192.0.2.9", "eth0")], 7),
    Route.multipath("fd00:99::/64", [NextHop("2001:db8:1::13", "eth0"), NextHop("2001:db8:1::12", "eth0")], 1024),
]


def test_multipath_is_canonical_and_order_insensitive() -> None:
    a = Route.multipath("10.0.0.0/24", [NextHop("192.0.2.10", "eth0"), NextHop("192.0.2.9", "eth0")])
    b = Route.multipath(
        "10.0.0.0/24", [NextHop("192.0.2.9", "eth0"), NextHop("192.0.2.10", "eth0"), NextHop("192.0.2.9", "eth0")]
    )
    assert a == b and hash(a) == hash(b)
    assert [h.gateway for h in a.nexthops] == ["192.0.2.9", "192.0.2.10"]  # numeric, not string order
    assert (a.gateway, a.oif, a.onlink) == (None, None, False)
    # one hop is the plain single-gateway route: one representation per kernel route
    one = Route.multipath("10.0.0.0/24", [NextHop("192.0.2.9", "tunl0", True)])
    assert one == Route("10.0.0.0/24", gateway="192.0.2.9", oif="tunl0", onlink=True)
    with pytest.raises(ValueError):
        Route.multipath("10.0.0.0/24", [])
    assert "nexthop via 192.0.2.9 dev eth0 weight 1" in a.describe()


@pytest.mark.parametrize("route", MULTIPATH, ids=lambda r: r.describe())
@pytest.mark.parametrize("op", [RouteOp.ADD, RouteOp.REPLACE])
def test_multipath_encode_decode_roundtrip(rsock: RouteSocket, route: Route, op: RouteOp) -> None:
    data = rsock.encode(op, route, 7)
    ((mtype, flags, seq, offset),) = list(iter_messages(data))
    assert (mtype, seq) == (RTM_NEWROUTE, 7)
    assert bool(flags & NLM_F_REPLACE) == (op == RouteOp.REPLACE)
    assert bool(flags & NLM_F_EXCL) == (op == RouteOp.ADD)
    assert decode_route(data, offset, rsock.ifnames) == (route, TABBY_RT_PROTO, 254)
    # RTA_MULTIPATH present, no top-level RTA_GATEWAY / RTA_OIF
    types = []
    pos = 28
    while pos + 4 <= len(data):
        alen, atype = struct.unpack_from("=HH", data, pos)
        types.append(atype)
        pos += (alen + 3) & ~3
    assert RTA_MULTIPATH in types and 5 not in types and 4 not in types


def test_multipath_decode_is_order_insensitive_and_ignores_kernel_state_flags(rsock: RouteSocket) -> None:
    route = MULTIPATH[1]
    data = bytearray(rsock.encode(RouteOp.ADD, route, 1))
    # reverse the two rtnexthops as another writer (or the kernel) might order them, and set LINKDOWN|DEAD
    pos = 28
    while True:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if atype == RTA_MULTIPATH:
            break
        pos += (alen + 3) & ~3
    first_len = struct.unpack_from("=H", data, pos + 4)[0]
    first, second = bytes(data[pos + 4 : pos + 4 + first_len]), bytes(data[pos + 4 + first_len : pos + alen])
    swapped = bytearray(second + first)
    swapped[2] |= 0x10 | 0x1  # RTNH_F_LINKDOWN | RTNH_F_DEAD on the (new) first hop
    data[pos + 4 : pos + alen] = swapped
    decoded = decode_route(bytes(data), 0, rsock.ifnames)
    assert decoded is not None and decoded[0] == route


def test_multipath_delete_uses_the_plain_encoder(rsock: RouteSocket) -> None:
    route = MULTIPATH[0]
    dele = rsock.encode(RouteOp.DELETE, route, 3)
    assert struct.unpack_from("=H", dele, 4)[0] == RTM_DELROUTE
    assert dele == rsock.encode(RouteOp.DELETE, Route(route.dst), 3)  # dst + priority + protocol: the whole set


def test_multipath_weight_out_of_range_fails_alone(rsock: RouteSocket) -> None:
    bad = Route.multipath("10.0.0.0/24", [NextHop("192.0.2.9", "eth0", weight=300), NextHop("192.0.2.8", "eth0")])
    with pytest.raises(ValueError):
        rsock.encode(RouteOp.ADD, bad, 1)


def test_diff_multipath_noop_and_changes() -> None:
    hops = [NextHop("192.0.2.12", "eth0"), NextHop("192.0.2.13", "eth0")]
    # a hand-built (non-canonical) desired route equals the kernel's canonical one after _normalise
    unsorted = Route("198.51.100.0/24", nexthops=tuple(reversed(hops)))
    actual = _normalise([Route.multipath("198.51.100.0/24", hops)])
    assert diff(_normalise([unsorted]), actual) == []
    # losing a hop: a replace to the single-gateway form
    ops = diff(_normalise([Route("198.51.100.0/24", gateway="192.0.2.12", oif="eth0")]), actual)
    assert [(op, r.gateway, r.nexthops) for op, r in ops] == [(RouteOp.REPLACE, "192.0.2.12", ())]
    # IPv6 metric 0 becomes 1024 for multipath too
    v6 = _normalise([Route.multipath("fd00::/64", [NextHop("2001:db8::1", "eth0"), NextHop("2001:db8::2", "eth0")])])
    assert ("fd00::/64", 1024) in v6


def test_any_deletion_under_a_multipath_key_diverges() -> None:
    mp = MULTIPATH[3]
    with RouteProgrammer(None) as prog:
        prog._actual = {mp.key: mp}
        # the kernel may report one IPv6 sibling on its own: never equal to the whole set, still ours
        sibling = Route(mp.dst, gateway="2001:db8:1::12", oif="eth0", metric=1024)
        assert prog.diverges(RouteEvent("del", sibling, TABBY_RT_PROTO, 254))
        assert not prog.diverges(RouteEvent("new", mp, TABBY_RT_PROTO, 254))  # our own echo
        assert prog.diverges(RouteEvent("new", sibling, TABBY_RT_PROTO, 254))
        assert not prog.diverges(RouteEvent("del", sibling, 3, 254))  # not our protocol
