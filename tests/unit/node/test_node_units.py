"""Node agent pure parts: settings (named errors), autodetection rules, snapshot -> route inputs,
MTU, WorkloadEndpoint names and labels, live allocations for ipam check."""

from __future__ import annotations

import json

import pytest

from controller.node.autodetect import Interface, select
from controller.node.cni_handlers import CNIError, Request, identity, parse_cni_args
from controller.node.config import AutodetectMethod, NodeConfig, NodeConfigError
from controller.node.inuse import allocations_from
from controller.node.snapshot import Snapshot, encapsulations, pod_mtu
from datamodel.resources import parse_resource
from datamodel.resources.workloadendpoint import workload_endpoint_name
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


# -- snapshot -------------------------------------------------------------------------------

def kv(key: str, value: object, rev: int = 1) -> KV:
    return KV(key, json.dumps(value).encode(), rev)


POOL = {"spec": {"cidr": "10.65.0.0/16", "ipipMode": "Never", "vxlanMode": "CrossSubnet"}}
NODE_B = {"metadata": {"name": "b"},
          "spec": {"bgp": {"ipv4Address": "10.0.0.2/24"}, "ipv4VXLANTunnelAddr": "10.65.1.0"}}
BLOCK_A = {"cidr": "10.65.0.0/26", "affinity": "host:a", "allocations": [0, None, 1] + [None] * 61,
           "attributes": [{"handle_id": "n.c1", "secondary": {"node": "a"}},
                          {"handle_id": "n.c2", "secondary": {"node": "b"}}]}
BLOCK_B = {"cidr": "10.65.1.0/26", "affinity": "host:b", "allocations": [None] * 64, "attributes": []}
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


def test_snapshot_route_inputs() -> None:
    snap = Snapshot("a")
    change = snap.apply(resync())
    assert snap.synced and change.resync
    assert "ipam/v2/handle/n.c1" not in snap.values
    inputs = snap.route_inputs("10.0.0.1/24", "eth0")
    assert [b.affinity for b in inputs.blocks] == ["a", "b"]
    assert [n.name for n in inputs.remote_nodes] == ["b"]
    assert inputs.remote_nodes[0].vxlan_tunnel_address == "10.65.1.0"
    assert [(w.ip, w.interface) for w in inputs.workloads] == [("10.65.0.0", "tabaaaaaaaaaaa")]
    assert [(b.ip, b.node) for b in inputs.borrowed] == [("10.65.0.2", "b")]
    assert inputs.pools[0].vxlan_mode == "CrossSubnet"
    assert snap.find_wep("c1") is not None and snap.find_wep("zz") is None


def test_snapshot_resync_replaces_and_events_classify() -> None:
    snap = Snapshot("a")
    snap.apply(resync())
    snap.apply(WatchResync([kv("resources/v3/ippools/p", POOL)], 20))
    assert list(snap.values) == ["resources/v3/ippools/p"]
    ch = snap.apply(WatchEvent("put", kv("resources/v3/nodes/a", {"spec": {}}, 21)))
    assert ch.own_node and ch.routes
    ch = snap.apply(WatchEvent("put", kv("resources/v3/nodes/a", {"spec": {}}, 22)))
    assert not ch.routes  # same value: nothing to do
    ch = snap.apply(WatchEvent("delete", KV("resources/v3/ippools/p", b"", 23)))
    assert ch.pools and snap.pools() == []
    ch = snap.apply(WatchEvent("put", kv("ipam/v2/handle/x", {}, 24)))
    assert not ch.routes


def test_mtu_from_encapsulation() -> None:
    assert encapsulations([POOL]) == {"vxlan"}
    assert encapsulations([{"spec": {"cidr": "10.0.0.0/16", "ipipMode": "Always"}}]) == {"ipip"}
    assert encapsulations([{"spec": {"cidr": "10.0.0.0/16", "ipipMode": "Always", "disabled": True}}]) == set()
    assert pod_mtu(1500, set()) == 1500
    assert pod_mtu(1500, {"ipip"}) == 1480
    assert pod_mtu(1500, {"ipip", "vxlan"}) == 1450
    assert pod_mtu(1500, {"vxlan6"}) == 1430
    assert pod_mtu(1500, {"vxlan"}, override=1400) == 1400


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
