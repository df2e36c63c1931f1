"""Explicit FORWARD accepts for workload interfaces where another base chain drops forwarded traffic.

Why: on a host running Docker the iptables FORWARD policy is DROP (``table ip filter``, chain
``FORWARD``, ``policy drop``: iptables-nft shows it in nftables). Every base chain on the forward
hook sees every packet and a drop in any of them wins, so an accept in Tabby's own table cannot
help: pods on that host could not reach anything. Calico inserts its rules into the filter
FORWARD chain for the same reason; Tabby inserts, at the top of each such chain,
``iifname "tab*" accept`` and ``oifname "tab*" accept``, each tagged with the comment
``tabby-forward-accept`` so they are found again (idempotent) and removable by hand.

Pure parts (:func:`dropping_chains`, :func:`missing_rules`) work on ``nft -j list ruleset``; the
:class:`ForwardAccepts` manager reads and writes through libnftables in the node's namespace. Only the nftables view is
covered: rules of the legacy iptables backend are invisible to nft (``tabbyctl node checksystem``
says so when ``iptables-legacy`` holds a FORWARD DROP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from felix_like.nft_context import NftContext

log = structlog.get_logger("tabby.felix.forward")

COMMENT = "tabby-forward-accept"
WORKLOAD_GLOB = "tab*"
OWN_TABLE_PREFIX = "tabby"


@dataclass(frozen=True)
class Chain:
    family: str
    table: str
    name: str

    def __str__(self) -> str:
        return f"{self.family} {self.table} {self.name}"


def _objects(listing: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in listing.get("nftables", []) if isinstance(o, dict)]


def dropping_chains(listing: dict[str, Any]) -> list[Chain]:
    """Base chains on the forward hook with policy drop (ip, ip6, inet), other than Tabby's own."""
    out = []
    for obj in _objects(listing):
        chain = obj.get("chain")
        if not chain or chain.get("hook") != "forward" or chain.get("policy") != "drop":
            continue
        if chain.get("family") not in ("ip", "ip6", "inet") or str(chain.get("table", "")).startswith(OWN_TABLE_PREFIX):
            continue
        out.append(Chain(chain["family"], chain["table"], chain["name"]))
    return out


def _rule_direction(rule: dict[str, Any]) -> str | None:
    """'iifname' / 'oifname' for one of our accept rules, else None."""
    if rule.get("comment") != COMMENT:
        return None
    for expr in rule.get("expr") or []:
        match = expr.get("match") if isinstance(expr, dict) else None
        if match and isinstance(match.get("left"), dict) and "meta" in match["left"]:
            key = match["left"]["meta"].get("key")
            if key in ("iifname", "oifname"):
                return str(key)
    return None


def missing_rules(listing: dict[str, Any], chain: Chain) -> list[str]:
    """Which of our two accepts ('iifname', 'oifname') the chain lacks."""
    have = set()
    for obj in _objects(listing):
        rule = obj.get("rule")
        if rule and (rule.get("family"), rule.get("table"), rule.get("chain")) == (chain.family, chain.table,
                                                                                   chain.name):
            direction = _rule_direction(rule)
            if direction:
                have.add(direction)
    return [d for d in ("iifname", "oifname") if d not in have]


def insert_commands(chain: Chain, directions: list[str]) -> list[dict[str, Any]]:
    return [{"insert": {"rule": {
        "family": chain.family, "table": chain.table, "chain": chain.name, "comment": COMMENT,
        "expr": [{"match": {"op": "==", "left": {"meta": {"key": d}}, "right": WORKLOAD_GLOB}}, {"accept": None}],
    }}} for d in directions]


@dataclass
class ForwardResult:
    dropping: list[str] = field(default_factory=list)
    inserted: list[str] = field(default_factory=list)
    error: str = ""


class ForwardAccepts:
    """Keeps our accepts at the top of every dropping forward chain of one namespace.

    Reads the chains only (no rules: on a node with thousands of policies the whole ruleset is tens of
    thousands of rules) and then the rules of the few dropping base chains; through libnftables
    in-process (:class:`NftContext`), so an insert made from the dataplane thread is not a foreign commit
    to the policy manager's monitor."""

    def __init__(self, netns: str | None = None, nft: NftContext | None = None) -> None:
        self.netns = netns
        self.nft = nft or NftContext(netns)
        self._log = log.bind(netns=netns or "")

    def _list(self, what: str) -> dict[str, Any]:
        rc, listing, err = self.nft.list_json(what)
        if rc != 0:
            raise RuntimeError(f"nft list {what}: {err.strip()}")
        return listing

    def ruleset(self) -> dict[str, Any]:
        """The base chains of the forward hook with policy drop, and their rules (what
        :func:`dropping_chains` and :func:`missing_rules` read), as ``nft -j list`` gives them."""
        chains = self._list("chains")
        objects = list(_objects(chains))
        for chain in dropping_chains(chains):
            objects += [o for o in _objects(self._list(f"chain {chain}")) if "rule" in o]
        return {"nftables": objects}

    def apply(self) -> ForwardResult:
        """Insert what is missing; never raises (nft trouble is in ``error``)."""
        result = ForwardResult()
        try:
            listing = self.ruleset()
            cmds = []
            for chain in dropping_chains(listing):
                result.dropping.append(str(chain))
                missing = missing_rules(listing, chain)
                if missing:
                    cmds += insert_commands(chain, missing)
                    result.inserted += [f"{chain}: {d} {WORKLOAD_GLOB} accept" for d in missing]
            if cmds:
                rc, err = self.nft.transact(cmds)
                if rc != 0:
                    raise RuntimeError(f"nft refused the accepts: {err.strip()}")
                self._log.info("forward.accepts_inserted", rules=result.inserted)
        except (OSError, RuntimeError, ValueError) as exc:
            result.error = str(exc)[:300]
            self._log.warning("forward.accepts_failed", error=result.error)
        return result
