"""Which forward chains drop, and which of Tabby's accepts they lack (nft -j shapes)."""

from __future__ import annotations

from felix_like.forward import COMMENT, Chain, dropping_chains, insert_commands, missing_rules


def _rule(direction: str, comment: str = COMMENT) -> dict:
    return {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "comment": comment, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": direction}}, "right": "tab*"}}, {"accept": None}]}}


LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"table": {"family": "ip", "name": "filter"}},
    {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter", "hook": "forward",
               "prio": 0, "policy": "drop"}},
    {"chain": {"family": "inet", "table": "fw", "name": "fwd", "type": "filter", "hook": "forward", "prio": 0,
               "policy": "accept"}},
    {"chain": {"family": "ip", "table": "tabby-nat", "name": "x", "type": "filter", "hook": "forward", "prio": 0,
               "policy": "drop"}},
    {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "type": "filter", "hook": "input", "prio": 0,
               "policy": "drop"}},
    _rule("iifname"),
    _rule("oifname", comment="someone else's"),
]}


def test_dropping_chains_and_missing_rules() -> None:
    chains = dropping_chains(LISTING)
    assert chains == [Chain("ip", "filter", "FORWARD")]
    assert missing_rules(LISTING, chains[0]) == ["oifname"]
    (cmd,) = insert_commands(chains[0], ["oifname"])
    rule = cmd["insert"]["rule"]
    assert rule["comment"] == COMMENT and rule["expr"][0]["match"]["left"] == {"meta": {"key": "oifname"}}
    full = {"nftables": [*LISTING["nftables"], _rule("oifname")]}
    assert missing_rules(full, chains[0]) == []
