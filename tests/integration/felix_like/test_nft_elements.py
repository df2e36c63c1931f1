"""Set-member deltas over raw nf_tables netlink (felix_like.nft_elements) against the real kernel:
what ``nft list`` shows afterwards, the fallback for anything else, and a refused batch."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from felix_like.nft_elements import ElementWriter, encode
from felix_like.policy import PolicyManager, Program, Touched

pytestmark = pytest.mark.root


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    ns = f"tbe-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def listed(ns: str, name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "set", "inet", "tabby-policy", name],
                          capture_output=True, text=True, check=True).stdout


def test_element_deltas_reach_the_kernel(netns: str) -> None:
    prog = Program({"s-a": ("ipv4_addr", frozenset({"10.0.0.1"})),
                    "n-p": ("ipv4_addr . inet_proto . inet_service", frozenset({"10.0.0.1 . tcp . 80"}))},
                   {"p-x-i": ("ip saddr @s-a ip daddr . meta l4proto . th dport @n-p accept",)}, {}, {})
    mgr = PolicyManager(netns)
    mgr.resync(prog)
    assert mgr.elements is not None
    prog.sets["s-a"] = ("ipv4_addr", frozenset({"10.0.0.2", "10.0.0.3"}))
    prog.sets["n-p"] = ("ipv4_addr . inet_proto . inet_service", frozenset({"10.0.0.1 . udp . 53"}))
    before = mgr.elements.batches
    mgr.apply(prog, Touched(sets={"s-a", "n-p"}))
    assert mgr.elements.batches == before + 1  # went over netlink, not libnftables
    a, p = listed(netns, "s-a"), listed(netns, "n-p")
    assert "10.0.0.2" in a and "10.0.0.3" in a and "10.0.0.1" not in a, a
    assert "10.0.0.1 . udp . 53" in p and "tcp" not in p, p
    # a chain change is not an element delta: libnftables applies it
    prog.chains["p-x-i"] = ("ip saddr @s-a accept",)
    mgr.apply(prog, Touched(chains={"p-x-i"}))
    assert mgr.elements.batches == before + 1


def test_refused_batch_raises_and_applies_nothing(netns: str) -> None:
    mgr = PolicyManager(netns)
    mgr.resync(Program({"s-a": ("ipv4_addr", frozenset({"10.0.0.1"}))}, {}, {}, {}))
    writer = ElementWriter(netns)
    cmds = ["add element inet tabby-policy s-a { 10.0.0.9 }", "delete element inet tabby-policy s-a { 10.7.7.7 }"]
    with pytest.raises(OSError):
        writer.apply(cmds, {"s-a": "ipv4_addr"}, "tabby-policy")
    assert "10.0.0.9" not in listed(netns, "s-a")  # atomic: the add went with the refused delete
    assert writer.apply(cmds[:1], {"s-a": "ipv4_addr"}, "tabby-policy")  # the socket is usable again
    assert "10.0.0.9" in listed(netns, "s-a")
    writer.close()


def test_encode_refuses_what_it_cannot_express() -> None:
    types = {"s-a": "ipv4_addr", "s-net": "ipv4_addr"}
    assert encode(["add element inet tabby-policy s-a { 10.0.0.1, 10.0.0.2 }"], types, "tabby-policy")
    assert encode(["add element inet tabby-policy s-net { 10.0.0.0/24 }"], types, "tabby-policy") is None
    assert encode(["flush chain inet tabby-policy p-x-i"], types, "tabby-policy") is None
    assert encode(["add element inet tabby-policy s-unknown { 10.0.0.1 }"], types, "tabby-policy") is None
    assert encode(['add element inet tabby-policy ingress { "tab1" : accept }'], types, "tabby-policy") is None
