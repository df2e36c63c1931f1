"""NAT outgoing through nftables, checked the way a user would: what source address the far end sees.

Shape (all inside ``tabbytest-*`` namespaces, deleted afterwards):

    wa 10.65.1.5 ─┐
    wb 10.65.1.6 ─┼─ node (eth0 203.0.113.2/24) ── outside (eth0 203.0.113.1/24, TEST-NET-3)
    wc 10.66.0.5 ─┘

10.65.0.0/16 has natOutgoing, 10.66.0.0/16 not. The outside namespace has a route back only to
10.66.0.0/16 (as an upstream router that learned it over BGP would), so an un-NATed 10.65 source
could not even complete a TCP handshake.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from felix_like.nat import NATManager, NATPool
from tests.uml.nslab import Lab, Netns

pytestmark = pytest.mark.root

NAT_POOL = NATPool("10.65.0.0/16", nat_outgoing=True)
PLAIN_POOL = NATPool("10.66.0.0/16")
V6_POOL = NATPool("fd00:65::/48", nat_outgoing=True)
FOREIGN = """
table ip foreign {
    chain post {
        type nat hook postrouting priority 50; policy accept;
        counter
    }
}
table inet filter {
    set keep { type ipv4_addr; elements = { 192.0.2.7 } }
    chain passthru {
        type filter hook forward priority 0; policy accept;
        counter
    }
}
"""


@dataclass
class NATLab:
    lab: Lab
    node: Netns
    outside: Netns
    pods: dict[str, Netns]

    def nft(self, *args: str) -> str:
        return self.node.exec("nft", *args).stdout

    def set_elements(self, table: str, name: str, family: str = "ip") -> list[str]:
        data = json.loads(self.nft("-j", "list", "set", family, table, name))
        elems = next(i["set"] for i in data["nftables"] if "set" in i).get("elem", [])
        return sorted(f"{e['prefix']['addr']}/{e['prefix']['len']}" if isinstance(e, dict) else e for e in elems)

    def rule_handle(self) -> int:
        data = json.loads(self.nft("-j", "list", "chain", "ip", "tabby-nat", "postrouting"))
        return next(i["rule"]["handle"] for i in data["nftables"] if "rule" in i)

    def foreign_intact(self) -> bool:
        text = self.nft("list", "ruleset")
        return "table ip foreign" in text and "table inet filter" in text and "192.0.2.7" in text


@pytest.fixture
def natlab() -> Iterator[NATLab]:
    with Lab() as lab:
        node, outside = lab.netns("node"), lab.netns("outside")
        lab.veth(node, "eth0", outside, "eth0")
        node.ip("addr", "add", "203.0.113.2/24", "dev", "eth0")
        outside.ip("addr", "add", "203.0.113.1/24", "dev", "eth0")
        outside.ip("route", "add", "10.66.0.0/16", "via", "203.0.113.2")
        pods = {
            "wa": lab.workload(node, "wa", "10.65.1.5", "tabwa"),
            "wb": lab.workload(node, "wb", "10.65.1.6", "tabwb"),
            "wc": lab.workload(node, "wc", "10.66.0.5", "tabwc"),
        }
        proc = subprocess.run(
            ["ip", "netns", "exec", node.name, "nft", "-f", "-"],
            input=FOREIGN,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert proc.returncode == 0, proc.stderr
        yield NATLab(lab, node, outside, pods)


def test_nat_outgoing_masquerades_to_outside_only(natlab: NATLab) -> None:
    result = NATManager(natlab.node.name).apply([NAT_POOL, PLAIN_POOL, V6_POOL])
    assert result.ok and result.kind == "rebuild", result
    lab, outside, pods = natlab.lab, natlab.outside, natlab.pods
    # natOutgoing pool to the outside: the outside sees the node's address
    assert lab.tcp_peer(outside, pods["wa"], "203.0.113.1", 9001) == "203.0.113.2"
    # to a destination inside the pools (same pool, other pool): no NAT
    assert lab.tcp_peer(pods["wb"], pods["wa"], "10.65.1.6", 9002) == "10.65.1.5"
    assert lab.tcp_peer(pods["wc"], pods["wa"], "10.66.0.5", 9003) == "10.65.1.5"
    # a pool without natOutgoing keeps its source towards the outside
    assert lab.tcp_peer(outside, pods["wc"], "203.0.113.1", 9004) == "10.66.0.5"
    assert natlab.set_elements("tabby-nat", "pools") == ["10.65.0.0/16", "10.66.0.0/16"]
    assert natlab.set_elements("tabby-nat", "masq-pools") == ["10.65.0.0/16"]
    assert natlab.set_elements("tabby-nat6", "masq-pools", "ip6") == ["fd00:65::/48"]
    assert natlab.foreign_intact()


def test_without_nat_outgoing_the_outside_cannot_answer(natlab: NATLab) -> None:
    assert NATManager(natlab.node.name).apply([NATPool("10.65.0.0/16"), PLAIN_POOL]).ok
    with pytest.raises(Exception):  # noqa: B017 - connect timeout or refused: either proves no NAT
        natlab.lab.tcp_peer(natlab.outside, natlab.pods["wa"], "203.0.113.1", 9005, timeout=2)


def test_pool_changes_are_incremental_and_noop_writes_nothing(natlab: NATLab) -> None:
    mgr = NATManager(natlab.node.name)
    assert mgr.apply([NAT_POOL, PLAIN_POOL]).kind == "rebuild"
    handle = natlab.rule_handle()
    again = mgr.apply([NAT_POOL, PLAIN_POOL])
    assert again.ok and again.kind == "noop" and again.transactions == 0
    removed = mgr.apply([PLAIN_POOL])  # the natOutgoing pool is deleted
    assert removed.ok and removed.kind == "elements" and (removed.added, removed.removed) == (0, 2)
    assert natlab.set_elements("tabby-nat", "pools") == ["10.66.0.0/16"]
    assert natlab.set_elements("tabby-nat", "masq-pools") == []
    added = mgr.apply([PLAIN_POOL, NATPool("10.67.0.0/16", nat_outgoing=True)])
    assert added.kind == "elements" and (added.added, added.removed) == (2, 0)
    assert natlab.rule_handle() == handle  # the rule was never rewritten
    assert natlab.foreign_intact()
    assert mgr.transactions == 3


def test_hand_edit_causes_atomic_rebuild_and_foreign_tables_survive(natlab: NATLab) -> None:
    mgr = NATManager(natlab.node.name)
    assert mgr.apply([NAT_POOL, PLAIN_POOL]).ok
    natlab.nft("flush", "chain", "ip", "tabby-nat", "postrouting")
    natlab.nft("add", "chain", "ip", "tabby-nat", "extra")
    natlab.nft("add", "element", "ip", "tabby-nat", "pools", "{ 10.99.0.0/16 }")
    result = mgr.apply([NAT_POOL, PLAIN_POOL])
    assert result.ok and result.kinds == {4: "rebuild", 6: "noop"}, result
    text = natlab.nft("list", "table", "ip", "tabby-nat")
    assert "extra" not in text and "10.99.0.0" not in text
    assert "ip saddr @masq-pools ip daddr != @pools masquerade fully-random" in text
    assert natlab.foreign_intact()
    assert natlab.lab.tcp_peer(natlab.outside, natlab.pods["wa"], "203.0.113.1", 9006) == "203.0.113.2"


def test_tables_survive_manager_going_away(natlab: NATLab) -> None:
    assert NATManager(natlab.node.name).apply([NAT_POOL]).ok
    # no shutdown hook deletes anything: a fresh manager finds the tables and has nothing to do
    assert NATManager(natlab.node.name).apply([NAT_POOL]).kind == "noop"
