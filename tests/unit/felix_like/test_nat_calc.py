"""The pure half of NAT outgoing: sets from pools, nft JSON/text, structure checks and plans."""

from __future__ import annotations

import json

from felix_like.nat import (
    FamilySets,
    NATPool,
    calculate_nat,
    parse_table,
    plan,
    rebuild_commands,
    rule_expr,
    ruleset_text,
    structure_ok,
)

POOLS = [
    NATPool("10.65.0.0/16", nat_outgoing=True),
    NATPool("10.66.0.5/16"),  # host bits: normalised
    NATPool("fd00:65::/48", nat_outgoing=True),
]


def _listing(version: int, pools: list[str], masq: list[str], extra_rule: bool = False) -> dict:
    """What ``nft -j list table`` prints for a correct table (the shape nft 1.0.6 uses)."""
    family, table = ("ip", "tabby-nat") if version == 4 else ("ip6", "tabby-nat6")
    kind = "ipv4_addr" if version == 4 else "ipv6_addr"

    def elems(cidrs: list[str]) -> list:
        out: list = []
        for c in cidrs:
            addr, length = c.split("/")
            out.append(addr if int(length) in (32, 128) else {"prefix": {"addr": addr, "len": int(length)}})
        return out

    items: list[dict] = [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": family, "name": table}}]
    for name, cidrs in (("pools", pools), ("masq-pools", masq)):
        s = {"family": family, "name": name, "table": table, "type": kind, "flags": ["interval"]}
        if cidrs:
            s["elem"] = elems(cidrs)
        items.append({"set": s})
    chain = {"family": family, "table": table, "name": "postrouting", "type": "nat", "hook": "postrouting"}
    items.append({"chain": {**chain, "prio": 100, "policy": "accept"}})
    rule = {"family": family, "table": table, "chain": "postrouting", "comment": "tabby natOutgoing"}
    items.append({"rule": {**rule, "expr": rule_expr(version)}})
    if extra_rule:
        items.append({"rule": {**rule, "comment": None, "expr": [{"accept": None}]}})
    return {"nftables": items}


def test_sets_from_pools() -> None:
    desired = calculate_nat(POOLS)
    assert desired.v4 == FamilySets(frozenset({"10.65.0.0/16", "10.66.0.0/16"}), frozenset({"10.65.0.0/16"}))
    assert desired.v6 == FamilySets(frozenset({"fd00:65::/48"}), frozenset({"fd00:65::/48"}))
    assert calculate_nat([]).v4 == FamilySets()


def test_ruleset_text_is_calicos_rule() -> None:
    text = ruleset_text(calculate_nat(POOLS))
    assert "table ip tabby-nat {" in text and "table ip6 tabby-nat6 {" in text
    assert "elements = { 10.65.0.0/16, 10.66.0.0/16 }" in text
    assert "type nat hook postrouting priority srcnat; policy accept;" in text
    assert "ip saddr @masq-pools ip daddr != @pools masquerade fully-random" in text
    assert "ip6 saddr @masq-pools ip6 daddr != @pools masquerade fully-random" in text


def test_rebuild_is_one_flush_then_readd() -> None:
    existing = parse_table(_listing(4, ["10.9.0.0/16"], [], extra_rule=True))
    cmds = rebuild_commands(4, calculate_nat(POOLS).v4, existing)
    ops = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in cmds]
    assert ops[:2] == [("add", "table"), ("flush", "table")]
    assert ops[2:5] == [("delete", "chain"), ("delete", "set"), ("delete", "set")]
    adds = ["set", "set", "chain", "rule", "element", "element"]
    assert ops[5:] == [("add", what) for what in adds]
    assert all(json.dumps(c).count('"tabby-nat"') >= 1 for c in cmds)  # never another table
    rule = cmds[8]["add"]["rule"]
    assert rule["expr"][2] == {"masquerade": {"flags": "fully-random"}}
    assert cmds[-1]["add"]["element"]["elem"] == [{"prefix": {"addr": "10.65.0.0", "len": 16}}]


def test_structure_checks() -> None:
    assert not structure_ok(None, 4)
    assert structure_ok(parse_table(_listing(4, ["10.65.0.0/16"], [])), 4)
    assert structure_ok(parse_table(_listing(6, ["fd00::/48"], ["fd00::/48"])), 6)
    assert not structure_ok(parse_table(_listing(4, [], [], extra_rule=True)), 4)
    wrong_type = _listing(4, [], [])
    wrong_type["nftables"][2]["set"]["type"] = "ipv6_addr"
    assert not structure_ok(parse_table(wrong_type), 4)
    wrong_prio = _listing(4, [], [])
    wrong_prio["nftables"][4]["chain"]["prio"] = 0
    assert not structure_ok(parse_table(wrong_prio), 4)


def test_masquerade_flags_as_list_compare_equal() -> None:
    listing = _listing(4, [], [])
    listing["nftables"][5]["rule"]["expr"][2] = {"masquerade": {"flags": ["fully-random"]}}
    assert structure_ok(parse_table(listing), 4)


def test_plan_noop_elements_rebuild() -> None:
    desired = calculate_nat(POOLS)
    good = {
        4: parse_table(_listing(4, ["10.65.0.0/16", "10.66.0.0/16"], ["10.65.0.0/16"])),
        6: parse_table(_listing(6, ["fd00:65::/48"], ["fd00:65::/48"])),
    }
    assert plan(desired, good) == ([], {4: "noop", 6: "noop"})
    # a pool gone, a /32 pool added: deletes first, then adds; no rule touched
    changed = calculate_nat([NATPool("10.65.0.0/16", nat_outgoing=True), NATPool("10.70.0.1/32"), POOLS[2]])
    cmds, kinds = plan(changed, good)
    assert kinds == {4: "elements", 6: "noop"}
    assert [next(iter(c)) for c in cmds] == ["delete", "add"]
    assert cmds[0]["delete"]["element"]["elem"] == [{"prefix": {"addr": "10.66.0.0", "len": 16}}]
    assert cmds[1]["add"]["element"]["elem"] == [{"prefix": {"addr": "10.70.0.1", "len": 32}}]
    # a /32 element prints as a bare address in listings and still compares equal
    with_host = parse_table(_listing(4, ["10.65.0.0/16", "10.70.0.1/32"], ["10.65.0.0/16"]))
    assert plan(changed, {4: with_host, 6: good[6]}) == ([], {4: "noop", 6: "noop"})
    # table missing: rebuild of that family only
    cmds, kinds = plan(desired, {4: None, 6: good[6]})
    assert kinds == {4: "rebuild", 6: "noop"}
    assert cmds[0] == {"add": {"table": {"family": "ip", "name": "tabby-nat"}}}


def test_unknown_element_forms_force_rebuild() -> None:
    listing = _listing(4, [], [])
    listing["nftables"][2]["set"]["elem"] = [{"range": ["10.0.0.1", "10.0.0.9"]}]
    assert not structure_ok(parse_table(listing), 4)
