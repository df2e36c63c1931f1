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
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTNH_F_ONLINK,
    TABBY_RT_PROTO,
    Route,
    RouteOp,
    RouteSocket,
    RouteType,
    decode_route,
    iter_messages,
)
from felix_like.route_programmer import _normalise, diff


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
