"""Compact ids for the rules of the compiled policy program, and the NFLOG statement that carries them.

Why ids (and not names) in the log prefix: an nft log prefix holds at most 127 bytes, while a policy's
tier, namespace and name reach 253 + 63 + 253 characters. Every verdict the compiler renders (a
policy rule, a profile rule, a tier's end-of-tier deny, the no-profile deny, the fail-closed drop)
gets an id derived from what it stands for (:class:`RuleRef`), so the id of an unchanged policy's
rule is the same in every agent and across restarts, and the flow reader maps the prefix of an
NFLOG record back through :attr:`felix_like.policy.Program.rule_refs`.

Why NFLOG (``log group N``) and not plain ``log``: the kernel suppresses plain log messages outside
the initial network namespace (``net.netfilter.nf_log_all_netns=0``), and a node agent runs in its
node's namespace; NFLOG records go to a netlink socket the agent reads in that namespace.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: The NFLOG group every flow-log statement and every Log action writes to.
NFLOG_GROUP = 1
#: Every prefix starts with this (then the rule id): the reader ignores records of other sources.
LOG_PREFIX = "tabby:"
#: Length of a rule id (hex): 48 bits, far below the 127-byte prefix limit with LOG_PREFIX.
ID_LEN = 12

ACTIONS = ("allow", "deny", "pass", "log", "end-of-tier-deny", "no-profile-deny", "fail-closed-deny")


@dataclass(frozen=True)
class RuleRef:
    """What a rule id stands for.

    ``kind``: ``KubernetesNetworkPolicy``, ``NetworkPolicy``, ``GlobalNetworkPolicy``, ``Profile``
    (``Tier`` for a tier's end-of-tier deny, empty for the fail-closed drop); ``direction``:
    ``ingress`` or ``egress`` (of the workload); ``index``: the rule's index in the policy's rules of
    that direction, -1 for a synthetic verdict; ``action``: one of :data:`ACTIONS`."""

    tier: str
    kind: str
    namespace: str
    name: str
    direction: str
    index: int
    action: str


def rule_id(ref: RuleRef) -> str:
    """The compact, stable id of ``ref`` (a hash of every field: same rule, same id, everywhere)."""
    text = "\x00".join((ref.tier, ref.kind, ref.namespace, ref.name, ref.direction, str(ref.index), ref.action))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()[:ID_LEN]


def log_statement(rid: str) -> str:
    """The nft statement that sends the packet to NFLOG group :data:`NFLOG_GROUP` with the id."""
    return f'log prefix "{LOG_PREFIX}{rid}" group {NFLOG_GROUP}'


def fail_closed_ref(direction: str) -> RuleRef:
    """The drop of a workload interface the agent has not programmed (in the base chain)."""
    return RuleRef("", "", "", "", direction, -1, "fail-closed-deny")


#: The fail-closed refs are always in the model (the base chains exist whenever the table does).
FAIL_CLOSED_REFS: dict[str, RuleRef] = {rule_id(r): r for r in map(fail_closed_ref, ("ingress", "egress"))}
