"""network_span: the IPPool rules' integer CIDR parse must answer exactly as parse_network does.

The fast path (inet_pton and integer masks) replaced ipaddress objects in IPPool validation; a
difference in what it accepts, how it normalises, or how it words an error would change verdicts.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from datamodel.resources.common import network_span, parse_network


def _reference(text: str) -> tuple[int, int, int, int, str] | str:
    try:
        net = parse_network(text)
    except ValueError as exc:
        return f"error: {exc}"
    return net.version, int(net.network_address), net.prefixlen, int(net.broadcast_address), str(net)


def _ours(text: str) -> tuple[int, int, int, int, str] | str:
    network_span.cache_clear()
    try:
        span = network_span(text)
    except ValueError as exc:
        return f"error: {exc}"
    return span.version, span.first, span.prefix, span.last, span.text


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_cidrs_masked_or_not(value: int, prefix: int) -> None:
    text = f"{ipaddress.IPv4Address(value)}/{prefix}"
    assert _ours(text) == _reference(text)


@given(st.from_regex(r"\A[0-9./a-f:x ]{0,20}\Z"))
def test_arbitrary_text(text: str) -> None:
    assert _ours(text) == _reference(text)


def test_edge_cases() -> None:
    for text in ["10.0.0.0/24", "10.0.0.1/24", "0.0.0.0/0", "255.255.255.255/32", "01.2.3.0/24", "1.2.3.0/33",
                 "1.2.3.0/024", "1.2.3.0/", "/24", "1.2.3/24", " 1.2.3.0/24", "1.2.3.0/24 ", "10.0.0.0",
                 "fd00::/64", "fd00::1/64", "FD00:0::/64", "::ffff:1.2.3.0/120", "1.2.3.0/+24", "1.2.3.0/٢٤"]:
        assert _ours(text) == _reference(text), text
    assert network_span("169.254.0.0/16").overlaps(network_span("169.254.3.0/24"))
    assert not network_span("10.0.0.0/8").overlaps(network_span("11.0.0.0/8"))
    assert not network_span("0.0.0.0/0").overlaps(network_span("::/0"))
