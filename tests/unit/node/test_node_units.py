"""Node agent pure parts: settings (named errors), autodetection rules, model + graph -> routes,
MTU, WorkloadEndpoint names and labels, live allocations for ipam check."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.node.autodetect import Interface, select
from controller.node.cni_handlers import CNIError, Request, identity, parse_cni_args
from controller.node.config import AutodetectMethod, NodeConfig, NodeConfigError
from controller.node.graph import CalcGraph, encapsulations, pod_mtu
from controller.node.inuse import allocations_from
from controller.node.messages import PolicyUpdate, RouteUpdate
from controller.node.model import Model
from datamodel.resources import parse_resource
from datamodel.resources.workloadendpoint import WorkloadEndpoint, workload_endpoint_name
from datastore import KV, WatchEvent, WatchResync
from felix_like.workload import host_veth_name

BASE = {"ETCD_ENDPOINTS": "http://127.0.0.1:2379", "NODENAME": "node-1"}


def cfg(**env: str) -> NodeConfig:
    return NodeConfig.from_env({**BASE, **env})


# -- config ----------------------------------------------------------------------------------

def test_config_defaults() -> None:
    c = cfg()
    assert c.nodename == "node-1" and c.ip == "autodetect" and c.autodetect == AutodetectMethod("first-found")
    assert str(c.socket_path) == "/run/tabby/node-1/agent.sock" and c.resync_interval == 90.0
    assert cfg(IP="10.0.0.1/24", AS="64512").static_ip == "10.0.0.1/24"
    assert cfg(AS="1.10").as_number == 65546
    assert cfg(IP_AUTODETECTION_METHOD="cidr=10.0.0.0/8,192.168.0.0/16").autodetect.args == (
        "10.0.0.0/8", "192.168.0.0/16")
    assert cfg(TABBY_RUN_DIR="/tmp/x").socket_path.as_posix() == "/tmp/x/agent.sock"


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"IP": "10.0.0.1"}, "IP:"),
        ({"IP": "not-an-ip"}, "IP:"),
        ({"IP": "fd00::1/64"}, "IP:"),
        ({"IP_AUTODETECTION_METHOD": "magic"}, "IP_AUTODETECTION_METHOD:"),
        ({"IP_AUTODETECTION_METHOD": "interface=("}, "IP_AUTODETECTION_METHOD:"),
        ({"IP_AUTODETECTION_METHOD": "can-reach=nowhere"}, "IP_AUTODETECTION_METHOD:"),
        ({"IP_AUTODETECTION_METHOD": "cidr=10.0.0.0/33"}, "IP_AUTODETECTION_METHOD:"),
        ({"IP6": "10.0.0.1/24"}, "IP6:"),
        ({"IP6": "fd00::1"}, "IP6:"),
        ({"IP6": "nope"}, "IP6:"),
        ({"IP6_AUTODETECTION_METHOD": "magic"}, "IP6_AUTODETECTION_METHOD:"),
        ({"AS": "abc"}, "AS:"),
        ({"AS": "0"}, "AS:"),
        ({"NODENAME": "Bad_Name!"}, "NODENAME:"),
        ({"TABBY_RESYNC_INTERVAL": "-1"}, "TABBY_RESYNC_INTERVAL:"),
        ({"TABBY_RESYNC_INTERVAL": "soon"}, "TABBY_RESYNC_INTERVAL:"),
        ({"TABBY_MTU": "9"}, "TABBY_MTU:"),
        ({"VXLAN_TUNNEL_MAC": "zz"}, "VXLAN_TUNNEL_MAC:"),
        ({"TABBY_LOG_FORMAT": "xml"}, "TABBY_LOG_FORMAT:"),
        ({"TABBY_RUN_DIR": "relative"}, "TABBY_RUN_DIR:"),
        ({"ETCD_ENDPOINTS": "ftp://x"}, "ETCD_ENDPOINTS"),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(NodeConfigError) as err:
        cfg(**env)
    assert str(err.value).startswith(var), str(err.value)
    assert "\n" not in str(err.value)


# -- autodetect -----------------------------------------------------------------------------

IFACES = [
    Interface("lo", 1, ("127.0.0.1/8",)),
    Interface("docker0", 2, ("172.17.0.1/16",)),
    Interface("tab1234567890a", 3, ()),
    Interface("eth0", 4, ("169.254.3.3/16", "10.0.0.5/24"), mtu=9000),
    Interface("eth1", 5, ("192.168.7.9/24",)),
    Interface("vxlan.tabby", 6, ("10.65.0.1/32",)),
    Interface("ens3", 7, ("10.9.0.2/16",), up=False),
]


def test_first_found_skips_docker_lo_tunnels_and_link_local() -> None:
    got = select(AutodetectMethod("first-found"), IFACES)
    assert got is not None and (got.interface, got.address, got.mtu) == ("eth0", "10.0.0.5/24", 9000)


def test_interface_regex_cidr_can_reach_and_nothing_yet() -> None:
    assert select(AutodetectMethod("interface", ("eth1",)), IFACES).address == "192.168.7.9/24"
    assert select(AutodetectMethod("interface", ("ens.*",)), IFACES).interface == "ens3"
    assert select(AutodetectMethod("cidr", ("192.168.0.0/16",)), IFACES).interface == "eth1"
    assert select(AutodetectMethod("can-reach", ("8.8.8.8",)), IFACES, route_source="192.168.7.9").interface == "eth1"
    assert select(AutodetectMethod("can-reach", ("8.8.8.8",)), IFACES) is None
    assert select(AutodetectMethod("skip-interface", ("eth.*",)), IFACES).interface == "docker0"
    # the address has not appeared yet: None (the agent retries)
    assert select(AutodetectMethod("first-found"), [Interface("eth0", 2, ())]) is None


def test_ip6_settings_and_ipv6_autodetection() -> None:
    assert cfg().ip6 == "none" and cfg(IP6="none").static_ip6 is None
    assert cfg(IP6="autodetect", IP6_AUTODETECTION_METHOD="interface=eth1").autodetect6 == AutodetectMethod(
        "interface", ("eth1",))
    assert cfg(IP6="fd00::5/64").static_ip6 == "fd00::5/64"
    ifaces = [Interface("lo", 1, ("127.0.0.1/8",), addresses6=("::1/128",)),
              Interface("eth0", 2, ("10.0.0.5/24",), addresses6=("fe80::1/64", "fd00::5/64")),
              Interface("eth1", 3, (), addresses6=("2001:db8::9/64",))]
    got = select(AutodetectMethod("first-found"), ifaces, version=6)
    assert got is not None and (got.interface, got.address) == ("eth0", "fd00::5/64"), "link-local never qualifies"
    assert select(AutodetectMethod("cidr", ("2001:db8::/32",)), ifaces, version=6).interface == "eth1"
    assert select(AutodetectMethod("first-found"), ifaces).address == "10.0.0.5/24", "IPv4 unchanged"
    assert select(AutodetectMethod("interface", ("eth1",)), ifaces) is None


# -- snapshot -------------------------------------------------------------------------------

def kv(key: str, value: object, rev: int = 1) -> KV:
    return KV(key, json.dumps(value).encode(), rev)


POOL = {"spec": {"cidr": "10.65.0.0/16", "ipipMode": "Never", "vxlanMode": "CrossSubnet"}}
NODE_B = {"metadata": {"name": "b"},
          "spec": {"bgp": {"ipv4Address": "10.0.0.2/24"}, "ipv4VXLANTunnelAddr": "10.65.1.0"}}
BLOCK_A = {"cidr": "10.65.0.0/26", "affinity": "host:a", "allocations": [0, None, 1] + [None] * 61,
           "unallocated": [1, *range(3, 64)],
           "attributes": [{"handle_id": "n.c1", "secondary": {"node": "a"}},
                          {"handle_id": "n.c2", "secondary": {"node": "b"}}]}
BLOCK_B = {"cidr": "10.65.1.0/26", "affinity": "host:b", "allocations": [None] * 64, "unallocated": list(range(64)),
           "attributes": []}
WEP_A = {"metadata": {"name": "a-k8s-p-eth0", "namespace": "default"},
         "spec": {"node": "a", "containerID": "c1", "endpoint": "eth0", "ipNetworks": ["10.65.0.0/32"],
                  "interfaceName": "tabaaaaaaaaaaa"}}


def resync() -> WatchResync:
    return WatchResync([
        kv("resources/v3/ippools/p", POOL), kv("resources/v3/nodes/b", NODE_B),
        kv("ipam/v2/block/10.65.0.0-26", BLOCK_A), kv("ipam/v2/block/10.65.1.0-26", BLOCK_B),
        kv("resources/v3/workloadendpoints/default/a-k8s-p-eth0", WEP_A),
        kv("ipam/v2/handle/n.c1", {"block": {}}),
    ], 10)


def test_model_feeds_the_graph_routes() -> None:
    model = Model("a")
    graph = CalcGraph("a", "vxlan")
    graph.set_local_node("10.0.0.1/24", "eth0")
    graph.apply(model.apply(resync()))
    assert model.synced
    assert "ipam/v2/handle/n.c1" not in model.by_kind.get("Block", {})
    routes = {m.dst: m.route for m in graph.flush() if hasattr(m, "dst")}
    assert routes["10.65.0.0/26"].type == "blackhole"  # our block
    assert routes["10.65.1.0/26"].oif == "eth0"  # b's block, VXLAN CrossSubnet, same subnet: native
    assert routes["10.65.0.0/32"].oif == "tabaaaaaaaaaaa"  # our workload
    assert routes["10.65.0.2/32"].gateway == "10.0.0.2"  # borrowed by b from our block
    assert model.find_wep("c1") is not None and model.find_wep("zz") is None
    assert [p.spec.vxlanMode for p in model.pools()] == ["CrossSubnet"]


def test_model_resync_replaces_and_emits_only_changes() -> None:
    model = Model("a")
    model.apply(resync())
    updates = model.apply(WatchResync([kv("resources/v3/ippools/p", POOL)], 20))
    assert {u.key for u in updates if u.new is None} == {
        "resources/v3/nodes/b", "ipam/v2/block/10.65.0.0-26", "ipam/v2/block/10.65.1.0-26",
        "resources/v3/workloadendpoints/default/a-k8s-p-eth0"}
    assert model.apply(WatchEvent("put", kv("resources/v3/nodes/a", {"spec": {}}, 21)))
    assert model.apply(WatchEvent("put", kv("resources/v3/nodes/a", {"spec": {}}, 22))) == []  # same value
    updates = model.apply(WatchEvent("delete", KV("resources/v3/ippools/p", b"", 23)))
    assert [u.kind for u in updates] == ["IPPool"] and model.pools() == []
    assert model.apply(WatchEvent("put", kv("ipam/v2/handle/x", {}, 24))) == []


def test_invalid_value_keeps_the_last_good_version_and_never_valid_is_ignored() -> None:
    model = Model("a")
    model.apply(resync())
    bad = {"spec": {"cidr": "10.65.0.0/16", "ipipMode": "Always", "vxlanMode": "Always"}}
    assert model.apply(WatchEvent("put", kv("resources/v3/ippools/p", bad, 30))) == []
    assert [p.spec.vxlanMode for p in model.pools()] == ["CrossSubnet"]  # last good version kept
    report = model.invalid_report()
    assert report[0]["key"] == "resources/v3/ippools/p" and report[0]["kept_last_good"]
    assert "ipipMode" in report[0]["problems"][0]
    model.apply(WatchEvent("put", kv("resources/v3/ippools/q", {"spec": {"cidr": "300.1.0.0/16"}}, 31)))
    assert [p.name for p in model.pools()] == ["p"]  # never valid: ignored
    assert {r["key"]: r["kept_last_good"] for r in model.invalid_report()} == {
        "resources/v3/ippools/p": True, "resources/v3/ippools/q": False}
    model.apply(WatchEvent("put", kv("resources/v3/ippools/p", POOL | {"spec": {"cidr": "10.65.0.0/16"}}, 32)))
    assert [r["key"] for r in model.invalid_report()] == ["resources/v3/ippools/q"]  # valid again


def test_local_cni_workload_is_a_graph_input_before_the_echo() -> None:
    model = Model("a")
    graph = CalcGraph("a", "vxlan", flow_logs=False)  # not isolated, no flow logs: no chain (None, None)
    graph.set_local_node("10.0.0.1/24", "eth0")
    graph.apply(model.apply(resync()))
    graph.flush()
    key = "resources/v3/workloadendpoints/default/a-k8s-q-eth0"
    wep = {"metadata": {"name": "a-k8s-q-eth0", "namespace": "default"},
           "spec": {"node": "a", "containerID": "c9", "ipNetworks": ["10.65.0.9/32"], "interfaceName": "tabq"}}
    graph.routes.local_add(key, "c9", ["10.65.0.9"], "tabq")
    graph.policy.local_add(key, WorkloadEndpoint.model_validate(wep))
    msgs = graph.flush()
    assert [(m.dst, m.route.oif) for m in msgs if isinstance(m, RouteUpdate)] == [("10.65.0.9/32", "tabq")]
    assert [m.interfaces for m in msgs if isinstance(m, PolicyUpdate)] == [{"tabq": (None, None)}]
    graph.apply(model.apply(WatchEvent("put", kv(key, wep, 40))))
    assert graph.flush() == []  # the echo changes nothing
    graph.routes.local_remove([key], ["tabq"])
    graph.policy.local_remove({key}, {"tabq"})
    msgs = graph.flush()
    assert [(m.dst, m.route) for m in msgs if isinstance(m, RouteUpdate)] == [("10.65.0.9/32", None)]
    assert [m.interfaces for m in msgs if isinstance(m, PolicyUpdate)] == [{"tabq": None}]
    graph.routes.local_add(key, "c10", ["10.65.0.10"], "tabq")  # a new sandbox of the same pod
    wep10 = {**wep, "spec": {**wep["spec"], "containerID": "c10", "ipNetworks": ["10.65.0.10/32"]}}
    graph.policy.local_add(key, WorkloadEndpoint.model_validate(wep10))
    graph.flush()
    graph.apply(model.apply(WatchEvent("delete", KV(key, b"", 41))))  # the late delete of the old one
    assert graph.flush() == []


def test_mtu_from_encapsulation() -> None:
    def pool(spec: dict[str, object]) -> object:
        return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"},
                               "spec": spec})

    assert encapsulations([pool(POOL["spec"])]) == {"vxlan"}  # type: ignore[list-item]
    assert encapsulations([pool({"cidr": "10.0.0.0/16", "ipipMode": "Always"})]) == {"ipip"}  # type: ignore[list-item]
    assert encapsulations([pool({"cidr": "10.0.0.0/16", "ipipMode": "Always", "disabled": True})]) == set()  # type: ignore[list-item]
    assert pod_mtu(1500, set()) == 1500
    assert pod_mtu(1500, {"ipip"}) == 1480
    assert pod_mtu(1500, {"ipip", "vxlan"}) == 1450
    assert pod_mtu(1500, {"vxlan6"}) == 1430
    assert pod_mtu(1500, {"vxlan"}, override=1400) == 1400
    # FelixConfiguration ipipMTU/vxlanMTU: the smallest programmed tunnel bounds the pods.
    assert pod_mtu(1500, {"vxlan"}, tunnel_mtus={"vxlan": 1400}) == 1400
    assert pod_mtu(1500, {"ipip", "vxlan"}, tunnel_mtus={"ipip": 1300}) == 1300
    assert pod_mtu(1500, {"ipip", "vxlan"}, tunnel_mtus={"ipip": 1490}) == 1450
    assert pod_mtu(1500, {"ipip"}, tunnel_mtus={"vxlan": 1200}) == 1480  # not programmed: no bound


def test_felix_turns_a_tunnel_kind_off_whatever_the_pools_ask() -> None:
    from controller.node.graph import EncapSettings, TunnelCalc, pool_info

    def pool(spec: dict[str, object]) -> Any:
        return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"},
                               "spec": spec})

    vx = pool({"cidr": "10.0.0.0/16", "vxlanMode": "Always"})
    off = EncapSettings(vxlan_enabled=False)
    assert pool_info(vx, off).vxlan_mode == "Never" and pool_info(vx).vxlan_mode == "Always"
    v6 = pool({"cidr": "fd00:1::/64", "vxlanMode": "Always"})
    assert pool_info(v6, off).vxlan_mode == "Always"  # vxlanEnabled is Felix's IPv4 switch
    calc = TunnelCalc("a")
    calc.pools["p"] = vx
    assert calc.programmed() == {"vxlan"} and calc.suppressed() == {}
    calc.set_encap(off)
    assert calc.encapsulations() == {"vxlan"}, "the tunnel address still follows the pools"
    assert calc.programmed() == set() and "vxlanEnabled is false" in calc.suppressed()["vxlan"]
    calc.set_encap(EncapSettings(vxlan_enabled=True, vxlan_mtu=1400))
    assert calc.programmed() == {"vxlan"} and calc.suppressed() == {}


# -- names and labels -----------------------------------------------------------------------

def test_wep_names_and_veth_names() -> None:
    assert workload_endpoint_name("node-1", orchestrator="k8s", pod="web-0", endpoint="eth0") == (
        "node--1-k8s-web--0-eth0")
    assert workload_endpoint_name("n1", orchestrator="cni", container_id="abc", endpoint="eth0") == "n1-cni-abc-eth0"
    name = host_veth_name(namespace="default", pod="web-0")
    assert name.startswith("tab") and len(name) == 14
    assert host_veth_name(container_id="abc") != name


def test_identity_labels_from_args_and_runtime_config() -> None:
    req = Request("ADD", {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
                          "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0"},
                  {"name": "net", "labels": {"tier": "web"}, "runtimeConfig": {"labels": {"app": "shop"}}}, "tabby")
    ident = identity(req, "n1")
    assert ident.orchestrator == "k8s" and ident.namespace == "shop" and ident.wep_name == "n1-k8s-web--0-eth0"
    assert ident.labels == {"tier": "web", "app": "shop", "projectcalico.org/namespace": "shop",
                            "projectcalico.org/orchestrator": "k8s"}
    plain = identity(Request("ADD", {"CNI_CONTAINERID": "c9", "CNI_IFNAME": "eth0"}, {"name": "net"}, "tabby"), "n1")
    assert plain.orchestrator == "cni" and plain.namespace == "default" and plain.wep_name == "n1-cni-c9-eth0"
    with pytest.raises(CNIError) as err:
        parse_cni_args("K8S_POD_NAME")
    assert err.value.code == 4


def test_workload_endpoint_model_round_trip() -> None:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
           "metadata": {"name": "n1-k8s-web--0-eth0", "namespace": "shop", "labels": {"app": "web"}},
           "spec": {"orchestrator": "k8s", "node": "n1", "pod": "web-0", "endpoint": "eth0", "containerID": "c1",
                    "ipNetworks": ["10.65.0.5/32"], "interfaceName": "tab0123456789a", "mac": "aa:bb:cc:dd:ee:ff",
                    "profiles": ["kns.shop"]}}
    wep = parse_resource(doc, "test", 0)
    assert wep.to_dict()["spec"]["ipNetworks"] == ["10.65.0.5/32"]
    assert wep.ps_row()["WORKLOAD"] == "web-0" and wep.ps_row()["NAMESPACE"] == "shop"


def test_live_allocations() -> None:
    weps = [{"metadata": {"annotations": {"tabby.io/handle": "net.c1"}}, "spec": {"ipNetworks": ["10.65.0.5/32"]}},
            {"metadata": {}, "spec": {"containerID": "c2", "ipNetworks": ["10.65.0.6/32"]}}]
    nodes = [{"metadata": {"name": "n1"}, "spec": {"bgp": {"ipv4IPIPTunnelAddr": "10.65.0.1"},
                                                    "ipv4VXLANTunnelAddr": "10.65.0.2"}}]
    assert allocations_from(weps, nodes) == {
        "10.65.0.5": "net.c1", "10.65.0.6": "k8s-pod-network.c2",
        "10.65.0.1": "ipip-tunnel-addr-n1", "10.65.0.2": "vxlan-tunnel-addr-n1",
    }


def test_prevalidated_resync_equals_plain_resync() -> None:
    plain, pre = Model("a"), Model("a")
    item = resync()
    expected = plain.apply(item)
    assert pre.apply(item, pre.prevalidate(item.kvs)) == expected
    bad = WatchResync([kv("resources/v3/ippools/p", {"spec": {"cidr": "nope"}})], 11)
    assert pre.apply(bad, pre.prevalidate(bad.kvs)) == plain.apply(bad)
    assert pre.invalid_report() == plain.invalid_report() and pre.invalid_report()[0]["kept_last_good"]


def test_mtu_iface_pattern_host_mtu() -> None:
    from controller.node.graph import EncapSettings, host_mtu, with_host_mtu

    links = [("lo", 65536, True), ("eth0", 1500, True), ("eth1", 9000, True), ("ens3", 1400, False),
             ("vxlan.tabby", 1200, True), ("tabc0ffee", 1000, True), ("bond0", 1300, True)]
    assert host_mtu(links, "^eth") == 1500
    assert host_mtu(links, "^(eth|ens)") == 1500, "a down interface does not count"
    assert host_mtu(links, ".") == 1300, "Tabby's own devices and lo never count"
    assert host_mtu(links, "^wlan") is None
    assert with_host_mtu(EncapSettings(vxlan_mtu=1400), 1300) == EncapSettings(ipip_mtu=1280, vxlan_mtu=1400)
    assert with_host_mtu(EncapSettings(), None) == EncapSettings()
