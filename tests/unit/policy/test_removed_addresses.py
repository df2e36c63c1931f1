"""Which addresses a narrowing policy delta moved in or out of sets (felix_like.policy.removed_addresses):
the conntrack cut judges only their flows (an added member counts: a rule may match `!= @set`), so
anything it cannot read must widen to 'all'."""

from __future__ import annotations

import ipaddress

from felix_like.policy import removed_addresses


def test_element_deletions_name_their_addresses() -> None:
    cmds = ["add element inet tabby-policy s-1 { 10.0.0.9 }",
            "delete element inet tabby-policy s-1 { 10.0.0.1, 10.0.0.2 }",
            "delete element inet tabby-policy n-2 { 10.0.0.3 . tcp . 80 }",
            "delete element inet tabby-policy c-3 { 10.1.0.0/24 }",
            "delete element inet tabby-policy s6-1 { fd00::5 }"]
    assert removed_addresses(cmds) == [ipaddress.ip_network(x) for x in
                                       ("10.0.0.9/32", "10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "10.1.0.0/24",
                                        "fd00::5/128")]


def test_anything_else_that_narrows_judges_every_flow() -> None:
    assert removed_addresses(["flush chain inet tabby-policy p-x-i", "add rule inet tabby-policy p-x-i drop"]) is None
    assert removed_addresses(["delete chain inet tabby-policy p-x-i"]) is None
    # a verdict-map entry replaced (an interface name, not an address)
    assert removed_addresses(['delete element inet tabby-policy ingress { "tab1234" }']) is None
    assert removed_addresses(["delete element inet tabby-policy ingress { tab1234 : goto e-x }"]) is None


def test_an_added_member_counts_and_other_commands_add_nothing() -> None:
    added = removed_addresses(["add element inet tabby-policy s-1 { 10.0.0.9 }"])
    assert added == [ipaddress.ip_network("10.0.0.9/32")]
    assert removed_addresses(["add rule inet tabby-policy p-x-i accept"]) == []
