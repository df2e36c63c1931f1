"""VXLAN between two node namespaces: the manager's device, neighbour and FDB entries carry real traffic.

Shape (all inside ``tabbytest-*`` namespaces, deleted afterwards):

    wa (10.65.1.5/32) -- node-a (192.168.77.1/24) ==veth== node-b (192.168.77.2/24) -- wb (10.65.2.5/32)

Block routes ``10.65.2.0/26 via 10.65.2.0 dev vxlan.tabby onlink`` (and back) come from the
route calculation and route programmer; the VXLAN device, ARP and FDB entries from
:class:`VXLANManager`. A user checks: ping and TCP pass, the vxlan device counters move,
``ip -d link`` shows VNI 4096 / port 4789 / nolearning, and drift is repaired.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from felix_like.route_programmer import RouteProgrammer
from felix_like.routes import (
    BlockInfo,
    EncapMode,
    LocalNodeInfo,
    PoolInfo,
    RemoteNodeInfo,
    RouteInputs,
    calculate_routes,
)
from felix_like.vxlan import RemoteVTEP, VTEPSet, VXLANLocal, VXLANManager, derive_vtep_mac
from tests.uml.nslab import Lab, Netns

pytestmark = pytest.mark.root

POOL = PoolInfo("10.65.0.0/16", vxlan_mode=EncapMode.ALWAYS)
BLOCKS = (BlockInfo("10.65.1.0/26", "node-a"), BlockInfo("10.65.2.0/26", "node-b"))
NODE_IP = {"node-a": "192.168.77.1/24", "node-b": "192.168.77.2/24"}
VTEP_IP = {"node-a": "10.65.1.0", "node-b": "10.65.2.0"}


@dataclass
class VXLANPair:
    lab: Lab
    nodes: dict[str, Netns]
    pods: dict[str, Netns]

    def local(self, name: str, **overrides: object) -> VXLANLocal:
        return VXLANLocal(name, NODE_IP[name], "eth0", VTEP_IP[name], **overrides)  # type: ignore[arg-type]

    def remotes(self, name: str) -> list[RemoteVTEP]:
        return [RemoteVTEP(n, NODE_IP[n], VTEP_IP[n], derive_vtep_mac(n)) for n in NODE_IP if n != name]

    def apply(self, name: str) -> None:
        result = VXLANManager(self.nodes[name].name).apply(self.local(name), self.remotes(name))
        assert result.ok, result.error


def _route_inputs(name: str) -> RouteInputs:
    other = "node-b" if name == "node-a" else "node-a"
    return RouteInputs(
        local_node=LocalNodeInfo(name, NODE_IP[name], "eth0"),
        pools=(POOL,),
        blocks=BLOCKS,
        remote_nodes=(RemoteNodeInfo(other, NODE_IP[other], vxlan_tunnel_address=VTEP_IP[other]),),
    )


@pytest.fixture
def pair() -> Iterator[VXLANPair]:
    with Lab() as lab:
        a, b = lab.netns("node-a"), lab.netns("node-b")
        lab.veth(a, "eth0", b, "eth0")
        a.ip("addr", "add", NODE_IP["node-a"], "dev", "eth0")
        b.ip("addr", "add", NODE_IP["node-b"], "dev", "eth0")
        wa = lab.workload(a, "wa", "10.65.1.5", "tabwa")
        wb = lab.workload(b, "wb", "10.65.2.5", "tabwb")
        yield VXLANPair(lab, {"node-a": a, "node-b": b}, {"node-a": wa, "node-b": wb})


def _program(pair: VXLANPair) -> None:
    for name, ns in pair.nodes.items():
        pair.apply(name)
        with RouteProgrammer(ns.name) as prog:
            res = prog.full_resync(calculate_routes(_route_inputs(name)))
        assert res.ok, res.failures


def _details(ns: Netns, dev: str = "vxlan.tabby") -> dict:
    return json.loads(ns.ip("-j", "-d", "link", "show", "dev", dev).stdout)[0]


def test_ping_and_tcp_cross_the_vxlan_device(pair: VXLANPair) -> None:
    _program(pair)
    a, b = pair.nodes["node-a"], pair.nodes["node-b"]
    info = _details(a)
    data = info["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["local"], data["link"]) == (4096, 4789, "192.168.77.1", "eth0")
    assert data["learning"] is False
    assert info["mtu"] == 1450 and info["address"] == derive_vtep_mac("node-a")
    addrs = json.loads(a.ip("-j", "addr", "show", "dev", "vxlan.tabby").stdout)[0]["addr_info"]
    assert [(x["local"], x["prefixlen"]) for x in addrs if x["family"] == "inet"] == [("10.65.1.0", 32)]
    neigh = json.loads(a.ip("-j", "neigh", "show", "dev", "vxlan.tabby").stdout)
    assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [
        ("10.65.2.0", derive_vtep_mac("node-b"), ["PERMANENT"])
    ]
    fdb = a.exec("bridge", "fdb", "show", "dev", "vxlan.tabby").stdout.strip()
    assert fdb == f"{derive_vtep_mac('node-b')} dst 192.168.77.2 self permanent"
    route = json.loads(a.ip("-j", "route", "show", "10.65.2.0/26").stdout)[0]
    assert (route["gateway"], route["dev"], route["flags"]) == ("10.65.2.0", "vxlan.tabby", ["onlink"])

    before_a, before_b = a.link_stats("vxlan.tabby"), b.link_stats("vxlan.tabby")
    assert pair.pods["node-a"].ping("10.65.2.5", count=3)
    assert pair.lab.tcp_peer(pair.pods["node-b"], pair.pods["node-a"], "10.65.2.5", 8080) == "10.65.1.5"
    after_a, after_b = a.link_stats("vxlan.tabby"), b.link_stats("vxlan.tabby")
    # 3 echo requests + TCP segments leave a; the same arrive on b (and replies the other way)
    assert after_a["tx_packets"] - before_a["tx_packets"] >= 6
    assert after_b["rx_packets"] - before_b["rx_packets"] >= 6
    assert after_a["rx_packets"] - before_a["rx_packets"] >= 6


def test_second_apply_is_a_noop(pair: VXLANPair) -> None:
    pair.apply("node-a")
    result = VXLANManager(pair.nodes["node-a"].name).apply(pair.local("node-a"), pair.remotes("node-a"))
    assert result.ok and result.writes == 0 and not result.changes


def test_hand_changed_mtu_and_mac_are_restored(pair: VXLANPair) -> None:
    a = pair.nodes["node-a"]
    pair.apply("node-a")
    a.ip("link", "set", "vxlan.tabby", "mtu", "1300", "address", "02:00:00:00:00:01")
    a.ip("link", "set", "vxlan.tabby", "down")
    result = VXLANManager(a.name).apply(pair.local("node-a"), pair.remotes("node-a"))
    assert result.ok and not result.recreated
    assert "mtu 1300->1450" in result.changes
    info = _details(a)
    assert info["mtu"] == 1450 and info["address"] == derive_vtep_mac("node-a") and "UP" in info["flags"]


def test_stale_fdb_moved_fdb_and_stale_neighbour_are_fixed_foreign_untouched(pair: VXLANPair) -> None:
    a = pair.nodes["node-a"]
    pair.apply("node-a")
    a.exec("bridge", "fdb", "append", "66:00:00:00:00:99", "dst", "192.168.77.9", "dev", "vxlan.tabby")
    a.exec("bridge", "fdb", "replace", derive_vtep_mac("node-b"), "dst", "192.168.77.8", "dev", "vxlan.tabby")
    a.ip("neigh", "add", "10.65.9.0", "lladdr", "66:00:00:00:00:99", "dev", "vxlan.tabby", "nud", "permanent")
    a.ip("neigh", "add", "192.168.77.50", "lladdr", "02:00:00:00:00:50", "dev", "eth0", "nud", "permanent")
    result = VXLANManager(a.name).apply(pair.local("node-a"), pair.remotes("node-a"))
    assert result.ok
    assert sorted(c.split()[0] for c in result.changes) == ["fdb-del", "fdb-set", "neigh-del"]
    fdb = a.exec("bridge", "fdb", "show", "dev", "vxlan.tabby").stdout.strip()
    assert fdb == f"{derive_vtep_mac('node-b')} dst 192.168.77.2 self permanent"
    neigh = json.loads(a.ip("-j", "neigh", "show", "dev", "vxlan.tabby").stdout)
    assert [n["dst"] for n in neigh] == ["10.65.2.0"]
    assert json.loads(a.ip("-j", "neigh", "show", "dev", "eth0", "192.168.77.50").stdout)  # foreign: untouched


def test_wrong_vni_causes_recreate_and_traffic_recovers(pair: VXLANPair) -> None:
    _program(pair)
    a = pair.nodes["node-a"]
    a.ip("link", "del", "vxlan.tabby")
    wrong_vni = ["type", "vxlan", "id", "42", "dstport", "4789", "local", "192.168.77.1", "dev", "eth0"]
    a.ip("link", "add", "vxlan.tabby", *wrong_vni)
    assert not pair.pods["node-a"].ping("10.65.2.5", count=1)
    result = VXLANManager(a.name).apply(pair.local("node-a"), pair.remotes("node-a"))
    assert result.ok and result.recreated, result
    assert any(c.startswith("recreate vni 42->4096") for c in result.changes)
    assert _details(a)["linkinfo"]["info_data"]["id"] == 4096
    with RouteProgrammer(a.name) as prog:  # the device took its routes with it: the agent resyncs
        assert prog.full_resync(calculate_routes(_route_inputs("node-a"))).added == 1
    assert pair.pods["node-a"].ping("10.65.2.5", count=3)


def test_removed_remote_node_loses_its_entries(pair: VXLANPair) -> None:
    a = pair.nodes["node-a"]
    pair.apply("node-a")
    result = VXLANManager(a.name).apply(pair.local("node-a"), [])
    assert result.ok
    assert sorted(c.split()[0] for c in result.changes) == ["fdb-del", "neigh-del"]
    assert a.exec("bridge", "fdb", "show", "dev", "vxlan.tabby").stdout.strip() == ""


def test_missing_parent_is_reported_not_raised(pair: VXLANPair) -> None:
    local = VXLANLocal("node-a", NODE_IP["node-a"], "nosuch0", VTEP_IP["node-a"])
    result = VXLANManager(pair.nodes["node-a"].name).apply(local, [])
    assert not result.ok and "nosuch0" in (result.error or "")


def test_ipv6_vtep_device(pair: VXLANPair) -> None:
    a = pair.nodes["node-a"]
    a.ip("addr", "add", "fd77::1/64", "dev", "eth0", "nodad")
    local = VXLANLocal("node-a", "fd77::1/64", "eth0", "fd00:65::1")
    remote = RemoteVTEP("node-b", "fd77::2/64", "fd00:65:2::", derive_vtep_mac("node-b", ipv6=True))
    result = VXLANManager(a.name).apply(local, [remote])
    assert result.ok, result.error
    info = _details(a, "vxlan-v6.tabby")
    assert info["mtu"] == 1430 and info["address"] == derive_vtep_mac("node-a", ipv6=True)
    assert info["linkinfo"]["info_data"]["local6"] == "fd77::1"
    neigh = json.loads(a.ip("-j", "-6", "neigh", "show", "dev", "vxlan-v6.tabby").stdout)
    assert [(n["dst"], n["lladdr"]) for n in neigh] == [("fd00:65:2::", derive_vtep_mac("node-b", ipv6=True))]
    fdb = a.exec("bridge", "fdb", "show", "dev", "vxlan-v6.tabby").stdout.strip()
    assert fdb == f"{derive_vtep_mac('node-b', ipv6=True)} dst fd77::2 self permanent"
    again = VXLANManager(a.name).apply(local, [remote])
    assert again.ok and again.writes == 0, again.changes


def _kernel_vteps(ns: Netns) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    neigh = {(n["dst"], n["lladdr"]) for n in json.loads(ns.ip("-j", "neigh", "show", "dev", "vxlan.tabby").stdout)}
    fdb = set()
    for line in ns.exec("bridge", "fdb", "show", "dev", "vxlan.tabby").stdout.splitlines():
        parts = line.split()
        if "dst" in parts and parts[0] != "00:00:00:00:00:00":
            fdb.add((parts[0], parts[parts.index("dst") + 1]))
    return neigh, fdb


def test_a_node_change_writes_only_that_nodes_entries(pair: VXLANPair) -> None:
    """Issue 8: a Node change is O(1) in the kernel too (no dump, two entries written), and the
    result is what the full reconcile would make (which then finds nothing to write)."""
    a = pair.nodes["node-a"]
    local = pair.local("node-a")
    vteps = VTEPSet()
    for i in range(200):
        vteps.set(f"r{i:03d}", RemoteVTEP(f"r{i:03d}", f"192.168.78.{i + 1}", f"10.66.{i}.0", derive_vtep_mac(f"r{i}")))
    mgr = VXLANManager(a.name)
    assert mgr.apply(local, vteps.values()).ok

    def change(node: str, vtep: RemoteVTEP | None) -> int:
        old = vteps.set(node, vtep)
        res = mgr.apply_changes(local, vteps, {node: old})
        assert res.ok, res.error
        full = mgr.apply(local, vteps.values())  # the full reconcile agrees: nothing left to write
        assert full.ok and full.writes == 0, full.changes
        return res.writes

    # moved underlay address, new tunnel address and MAC, a new node, a removed node: 2-4 writes each
    assert change("r005", RemoteVTEP("r005", "192.168.79.5", "10.66.5.0", derive_vtep_mac("r5"))) == 2
    assert change("r006", RemoteVTEP("r006", "192.168.78.7", "10.67.6.0", "66:00:00:00:00:06")) == 4
    assert change("r900", RemoteVTEP("r900", "192.168.78.250", "10.66.250.0", derive_vtep_mac("r900"))) == 2
    assert change("r007", None) == 2
    neigh, fdb = _kernel_vteps(a)
    assert ("10.67.6.0", "66:00:00:00:00:06") in neigh and ("10.66.6.0", derive_vtep_mac("r6")) not in neigh
    assert ("66:00:00:00:00:06", "192.168.78.7") in fdb and (derive_vtep_mac("r5"), "192.168.79.5") in fdb
    assert len(neigh) == len(fdb) == 200
    # a change that clashes with another node's tunnel address: the full reconcile decides (lowest name wins)
    clash = RemoteVTEP("r100", "192.168.78.101", "10.66.1.0", derive_vtep_mac("r100"))
    old = vteps.set("r100", clash)
    assert mgr.apply_changes(local, vteps, {"r100": old}).ok
    neigh, _ = _kernel_vteps(a)
    assert ("10.66.1.0", derive_vtep_mac("r1")) in neigh and ("10.66.100.0", derive_vtep_mac("r100")) not in neigh
