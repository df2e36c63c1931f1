"""Which set-member additions can take an allow away (felix_like.policy.narrowing_refs, added_sets):
a new member of a set under a Deny, a Pass/return or a negated match narrows; of a set matched only
positively by accept rules it can only widen."""

from __future__ import annotations

from felix_like.policy import added_sets, narrowing_refs


def test_negated_and_non_accept_references_narrow_positive_accepts_do_not() -> None:
    rules = [
        "ip saddr @s-allow accept",
        "ip saddr != @s-neg accept",
        'ip saddr @s-deny log group 1 prefix "r1" drop',
        "ip saddr @s-pass meta mark set meta mark or 0x00010000 return",
        "ip daddr . meta l4proto . th dport @n-port accept",
        "ip saddr @s-both accept",
        "ip saddr @s-both reject",
    ]
    assert narrowing_refs(rules) == {"s-neg", "s-deny", "s-pass", "s-both"}
    assert narrowing_refs(["counter accept", "ct state established accept"]) == frozenset()


def test_added_sets_names_the_sets_not_the_verdict_maps() -> None:
    cmds = ["add element inet tabby-policy s-a { 10.0.0.1, 10.0.0.2 }",
            'add element inet tabby-policy ingress { "tab1" : jump ep-in-tab1 }',
            "delete element inet tabby-policy s-b { 10.0.0.3 }",
            "add element inet tabby-policy n-c { 10.0.0.4 . tcp . 80 }"]
    assert added_sets(cmds) == {"s-a", "n-c"}
