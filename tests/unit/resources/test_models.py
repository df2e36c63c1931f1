"""projectcalico.org/v3 models: defaults, round trips, calicoctl examples, names, lists, JSON.

The YAML below is written the way Calico's documentation writes it: users apply such files
unchanged, so each must parse and come back out Calico-shaped.
"""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodel.resources import (
    API_VERSION,
    BGPConfiguration,
    BGPPeer,
    IPAMConfiguration,
    IPPool,
    Metadata,
    Node,
    Resource,
    ResourceError,
    all_kinds,
    kind_for_name,
    parse_as_number,
    parse_documents,
    parse_duration,
    parse_resource,
    pool_overlaps,
)

IPPOOL_CROSS_SUBNET = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: ipip-cross-subnet-pool
spec:
  cidr: 192.168.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: true
  nodeSelector: all()
"""

BGPPEER_GLOBAL_TOR = """
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: my-global-peer
spec:
  peerIP: 192.20.30.40
  asNumber: 64567
"""

BGPPEER_RR = """
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: peer-with-route-reflectors
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
"""

BGPPEER_RACK = """
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  peerIP: "[2001:db8::1]:1179"
  asNumber: "1.10"
  nodeSelector: rack == 'rack-1'
  keepOriginalNextHop: true
  password:
    secretKeyRef:
      name: bgp-secrets
      key: rr-password
  sourceAddress: None
  maxRestartTime: 15m
  keepaliveTime: 20s
  ttlSecurity: 1
  filters: [export-only-pods]
"""

BGPCONFIG_DEFAULT = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 63400
  serviceClusterIPs:
  - cidr: 10.96.0.0/12
  serviceExternalIPs:
  - cidr: 104.244.42.129/32
  - cidr: 172.217.3.0/24
  listenPort: 178
  bindMode: NodeIP
  communities:
  - name: bgp-large-community
    value: 63400:300:100
  prefixAdvertisements:
  - cidr: 172.218.4.0/26
    communities:
    - bgp-large-community
    - 63400:120
"""

NODE_WITH_BGP = """
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-hostname
  labels:
    route-reflector: "true"
  resourceVersion: "10249"
  uid: 1d0f1e0a-6e9b-4f0e-9b1c-6c0a5a4d2f10
  creationTimestamp: 2024-05-01T10:00:00Z
spec:
  bgp:
    asNumber: 64512
    ipv4Address: 10.244.0.1/24
    ipv6Address: 2001:db8:85a3::8a2e:370:7334/120
    ipv4IPIPTunnelAddr: 192.168.0.1
    routeReflectorClusterID: 224.0.0.1
  ipv4VXLANTunnelAddr: 192.168.0.2
  vxlanTunnelMACAddr: 66:d1:a5:2b:9c:01
  addresses:
  - address: 10.244.0.1/24
    type: CalicoNodeIP
  orchRefs:
  - nodeName: node-hostname
    orchestrator: k8s
status:
  podCIDRs: [10.244.0.0/24]
"""

IPAMCONFIG = """
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata:
  name: default
spec:
  strictAffinity: true
  maxBlocksPerHost: 4
"""

EXAMPLES = {
    "ippool_cross_subnet": IPPOOL_CROSS_SUBNET,
    "bgppeer_global_tor": BGPPEER_GLOBAL_TOR,
    "bgppeer_rr": BGPPEER_RR,
    "bgppeer_rack": BGPPEER_RACK,
    "bgpconfig_default": BGPCONFIG_DEFAULT,
    "node_with_bgp": NODE_WITH_BGP,
    "ipamconfig": IPAMCONFIG,
}


def one(text: str) -> Resource:
    resources = parse_documents(text, "test.yaml")
    assert len(resources) == 1
    return resources[0]


# ---------------------------------------------------------------------------------------------
# calicoctl examples apply unchanged and round-trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_calicoctl_example_round_trips(text: str) -> None:
    resource = one(text)
    stored = resource.to_dict()
    assert stored["apiVersion"] == API_VERSION
    assert stored["kind"] == resource.KIND
    again = parse_resource(json.loads(json.dumps(stored)), "etcd")
    assert again == resource
    assert again.to_dict() == stored
    # What -o yaml prints parses back to the same resource.
    assert one(yaml.safe_dump(stored)) == resource


@pytest.mark.parametrize("text", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_user_fields_survive_to_dict(text: str) -> None:
    """Everything the user wrote is in the stored form (plus defaults), nothing renamed."""
    original = yaml.safe_load(text)
    stored = one(text).to_dict()

    def contains(big: object, small: object) -> bool:
        if isinstance(small, dict):
            return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
        return True  # values may be normalised (asdot -> number, datetime -> text)

    assert contains(stored, original)


def test_ippool_example_fields() -> None:
    pool = one(IPPOOL_CROSS_SUBNET)
    assert isinstance(pool, IPPool)
    assert pool.spec.ipipMode == "CrossSubnet"
    assert pool.spec.natOutgoing is True
    assert pool.network == ipaddress.ip_network("192.168.0.0/16")
    assert pool.ip_version == 4


def test_bgppeer_examples() -> None:
    tor = one(BGPPEER_GLOBAL_TOR)
    assert isinstance(tor, BGPPeer)
    assert tor.ps_row() == {"NAME": "my-global-peer", "PEERIP": "192.20.30.40", "NODE": "(global)", "ASN": "64567"}
    assert tor.peer_address() == ("192.20.30.40", None)

    rr = one(BGPPEER_RR)
    assert rr.spec.peerSelector == "route-reflector == 'true'"
    assert rr.spec.asNumber is None
    assert rr.ps_row()["NODE"] == "all()"
    assert rr.peer_address() is None

    rack = one(BGPPEER_RACK)
    assert rack.spec.asNumber == 65546  # asdot 1.10
    assert rack.peer_address() == ("2001:db8::1", 1179)
    assert parse_duration(rack.spec.maxRestartTime) == 900
    assert rack.spec.password.secretKeyRef.key == "rr-password"


def test_bgpconfiguration_example() -> None:
    cfg = one(BGPCONFIG_DEFAULT)
    assert isinstance(cfg, BGPConfiguration)
    assert cfg.spec.nodeToNodeMeshEnabled is False
    assert cfg.spec.asNumber == 63400
    assert [b.cidr for b in cfg.spec.serviceExternalIPs] == ["104.244.42.129/32", "172.217.3.0/24"]
    assert cfg.ps_row() == {"NAME": "default", "LOGSEVERITY": "Info", "MESHENABLED": "false", "ASNUMBER": "63400"}
    assert cfg.node_name is None


def test_node_example() -> None:
    node = one(NODE_WITH_BGP)
    assert isinstance(node, Node)
    assert node.spec.bgp.ipv4Address == "10.244.0.1/24"  # host bits are the point here
    assert node.metadata.creationTimestamp == "2024-05-01T10:00:00Z"
    assert node.metadata.resourceVersion == "10249"
    assert node.status == {"podCIDRs": ["10.244.0.0/24"]}
    assert node.ps_row() == {"NAME": "node-hostname"}
    assert node.wide_row() == {
        "NAME": "node-hostname",
        "ASN": "64512",
        "IPV4": "10.244.0.1/24",
        "IPV6": "2001:db8:85a3::8a2e:370:7334/120",
    }


# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------


def test_ippool_defaults_v4() -> None:
    pool = one("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.1.0.0/16}\n")
    assert pool.to_dict()["spec"] == {
        "cidr": "10.1.0.0/16",
        "vxlanMode": "Never",
        "ipipMode": "Never",
        "natOutgoing": False,
        "disabled": False,
        "disableBGPExport": False,
        "blockSize": 26,
        "nodeSelector": "all()",
        "allowedUses": ["Workload", "Tunnel"],
    }
    assert pool.wide_row() == {
        "NAME": "p",
        "CIDR": "10.1.0.0/16",
        "NAT": "false",
        "IPIPMODE": "Never",
        "VXLANMODE": "Never",
        "DISABLED": "false",
        "DISABLEBGPEXPORT": "false",
        "SELECTOR": "all()",
    }
    assert list(pool.ps_row()) == ["NAME", "CIDR", "SELECTOR"]


def test_ippool_defaults_v6_and_normalisation() -> None:
    pool = one(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p6}\n"
        "spec: {cidr: 'fd00:0:0:10::/64', ipipMode: '', vxlanMode: Always, nodeSelector: '', allowedUses: []}\n"
    )
    assert pool.spec.cidr == str(ipaddress.ip_network("fd00:0:0:10::/64"))
    assert pool.spec.blockSize == 122
    assert pool.spec.ipipMode == "Never"  # empty means Never
    assert pool.spec.nodeSelector == "all()"
    assert pool.spec.allowedUses == ["Workload", "Tunnel"]


def test_disabled_pool_may_be_smaller_than_a_block() -> None:
    """Calico skips the size check for disabled pools (they hand out no blocks)."""
    pool = one(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n"
        "spec: {cidr: 10.0.0.0/30, disabled: true}\n"
    )
    assert pool.spec.blockSize == 26


def test_ipamconfiguration_defaults() -> None:
    cfg = one("apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\n")
    assert isinstance(cfg, IPAMConfiguration)
    assert cfg.to_dict()["spec"] == {"strictAffinity": False, "autoAllocateBlocks": True, "maxBlocksPerHost": 0}
    assert cfg.ps_row() == {"NAME": "default", "STRICTAFFINITY": "false", "AUTOALLOCATEBLOCKS": "true"}
    assert cfg.wide_row()["MAXBLOCKSPERHOST"] == "0"


def test_ipamconfig_kind_synonym() -> None:
    cfg = one(
        "apiVersion: projectcalico.org/v3\nkind: IPAMConfig\nmetadata: {name: default}\nspec: {strictAffinity: true}\n"
    )
    assert cfg.kind == "IPAMConfiguration"
    assert cfg.spec.strictAffinity is True


def test_bgpconfiguration_defaults_only_on_default() -> None:
    default = one("apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec:\n")
    assert default.to_dict()["spec"] == {
        "logSeverityScreen": "Info",
        "nodeToNodeMeshEnabled": True,
        "asNumber": 64512,
        "listenPort": 179,
    }
    per_node = one(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: node.node-1}\n"
        "spec: {logSeverityScreen: Debug}\n"
    )
    assert per_node.to_dict()["spec"] == {"logSeverityScreen": "Debug"}
    assert per_node.node_name == "node-1"
    assert per_node.ps_row() == {"NAME": "node.node-1", "LOGSEVERITY": "Debug", "MESHENABLED": "-", "ASNUMBER": "-"}


def test_programmatic_construction_fills_type_fields() -> None:
    pool = IPPool(metadata=Metadata(name="a"), spec={"cidr": "10.9.0.0/16"})
    assert pool.apiVersion == API_VERSION and pool.kind == "IPPool"
    assert parse_resource(pool.to_dict()) == pool


def test_node_wide_row_without_own_asn_shows_cluster_default() -> None:
    node = one(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n}\nspec: {bgp: {ipv4Address: 10.0.0.5/24}}\n"
    )
    assert node.wide_row()["ASN"] == "(64512)"
    assert node.wide_row(default_asn=65001)["ASN"] == "(65001)"


# ---------------------------------------------------------------------------------------------
# Names, lists, multi-document and JSON input
# ---------------------------------------------------------------------------------------------

ALIASES = {
    IPPool: ["ippool", "ippools", "ipp", "ipps", "pool", "pools", "IPPool", "IPPOOLS"],
    BGPConfiguration: ["bgpconfig", "bgpconfigs", "bgpconfiguration", "bgpconfigurations", "BGPConfiguration"],
    BGPPeer: ["bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps", "BGPPeer"],
    Node: ["node", "nodes", "no", "nos", "Node"],
    IPAMConfiguration: ["ipamconfig", "ipamconfigs", "ipamconfiguration", "ipamconfigurations", "IPAMConfiguration"],
}


@pytest.mark.parametrize(
    ("name", "cls"), [(n, c) for c, names in ALIASES.items() for n in names], ids=lambda v: getattr(v, "KIND", v)
)
def test_kind_for_name(name: str, cls: type[Resource]) -> None:
    assert kind_for_name(name) is cls


def test_kind_for_name_unknown_lists_valid_types() -> None:
    with pytest.raises(ResourceError) as info:
        kind_for_name("foo")
    message = str(info.value)
    assert "unknown resource type 'foo'" in message
    for cls in all_kinds():
        assert cls.KIND.lower() in message


def test_registry_metadata() -> None:
    kinds = all_kinds()
    assert {c.KIND for c in kinds} == {
        "IPPool", "IPAMConfiguration", "Node", "BGPConfiguration", "BGPPeer", "BGPFilter", "WorkloadEndpoint",
        "FelixConfiguration", "ClusterInformation", "NetworkPolicy", "Namespace", "GlobalNetworkPolicy", "Tier",
        "Profile", "NetworkSet", "GlobalNetworkSet", "StagedNetworkPolicy", "StagedGlobalNetworkPolicy",
        "StagedKubernetesNetworkPolicy",
        "KubeControllersConfiguration", "IPReservation", "BlockAffinity", "CalicoNodeStatus",
    }
    assert {c.PLURAL for c in kinds} == {
        "ippools", "ipamconfigurations", "nodes", "bgpconfigurations", "bgppeers", "bgpfilters", "workloadendpoints",
        "felixconfigurations", "clusterinformations", "kubernetesnetworkpolicies", "namespaces", "networkpolicies",
        "globalnetworkpolicies", "tiers", "profiles", "networksets", "globalnetworksets", "stagednetworkpolicies",
        "stagedglobalnetworkpolicies", "stagedkubernetesnetworkpolicies",
        "kubecontrollersconfigurations", "ipreservations", "blockaffinities", "caliconodestatuses",
    }
    assert {c.KIND for c in kinds if c.NAMESPACED} == {"WorkloadEndpoint", "NetworkPolicy", "NetworkSet",
                                                       "StagedNetworkPolicy", "StagedKubernetesNetworkPolicy"}


def test_multi_document_yaml_with_empty_documents() -> None:
    text = "---\n" + IPPOOL_CROSS_SUBNET + "---\n---\n" + BGPPEER_GLOBAL_TOR + "---\n# only a comment\n"
    resources = parse_documents(text)
    assert [r.KIND for r in resources] == ["IPPool", "BGPPeer"]


def test_typed_list_document() -> None:
    text = """
apiVersion: projectcalico.org/v3
kind: IPPoolList
metadata:
  resourceVersion: "123"
items:
- metadata: {name: a}
  spec: {cidr: 10.0.0.0/16}
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata: {name: b}
  spec: {cidr: 10.1.0.0/16, vxlanMode: Always}
"""
    pools = parse_documents(text)
    assert [p.name for p in pools] == ["a", "b"]
    assert pools[1].spec.vxlanMode == "Always"


def test_generic_list_document() -> None:
    items = [yaml.safe_load(IPPOOL_CROSS_SUBNET), yaml.safe_load(BGPPEER_RR)]
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    assert [r.KIND for r in parse_documents(text)] == ["IPPool", "BGPPeer"]


def test_json_input_single_and_concatenated() -> None:
    pool = yaml.safe_load(IPPOOL_CROSS_SUBNET)
    peer = yaml.safe_load(BGPPEER_GLOBAL_TOR)
    assert parse_documents(json.dumps(pool, indent=2))[0].name == "ipip-cross-subnet-pool"
    both = parse_documents(json.dumps(pool) + "\n" + json.dumps(peer, indent="\t"))
    assert [r.KIND for r in both] == ["IPPool", "BGPPeer"]
    listed = parse_documents(json.dumps({"apiVersion": API_VERSION, "kind": "BGPPeerList", "items": [peer]}))
    assert listed[0].spec.peerIP == "192.20.30.40"


def test_get_output_parses_back() -> None:
    """A `get -o yaml` of several resources (a List of to_dict()s) applies unchanged."""
    resources = parse_documents("---\n".join(EXAMPLES.values()))
    listing = yaml.safe_dump({"apiVersion": API_VERSION, "kind": "List", "items": [r.to_dict() for r in resources]})
    assert parse_documents(listing) == resources


def test_go_yaml_scalars() -> None:
    """Unquoted aa:nn stays a string (PyYAML alone would read 65000:10 as a base-60 number)."""
    text = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  communities: [{name: c, value: 65000:10}]
  prefixAdvertisements: [{cidr: 10.0.0.0/8, communities: [c, 65000:20]}]
"""
    cfg = one(text)
    assert cfg.spec.communities[0].value == "65000:10"
    assert cfg.spec.prefixAdvertisements[0].communities == ["c", "65000:20"]


# ---------------------------------------------------------------------------------------------
# Errors: all collected, nothing returned
# ---------------------------------------------------------------------------------------------


def test_all_problems_reported_at_once_and_nothing_returned() -> None:
    text = (
        IPPOOL_CROSS_SUBNET
        + "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-b}\n"
        + "spec: {cidr: 10.5.0.0/16, blockSize: 33}\n"
        + "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\n"
        + "spec: {peerIP: 1.2.3.4, localWorkloadSelector: all()}\n"
    )
    with pytest.raises(ResourceError) as info:
        parse_documents(text, "pools.yaml")
    assert info.value.problems == [
        "pools.yaml document 2 (IPPool pool-b): spec.blockSize: must be between 20 and 32 for an IPv4 pool, got 33",
        "pools.yaml document 3 (BGPPeer p): spec.asNumber: must NOT be empty when localWorkloadSelector is specified",
        "pools.yaml document 3 (BGPPeer p): spec.peerIP: must be empty when localWorkloadSelector is specified",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_one_document_several_problems() -> None:
    text = (
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\n"
        "spec: {node: n1, nodeSelector: all(), peerIP: 1.2.3.4, peerSelector: has(rr)}\n"
    )
    with pytest.raises(ResourceError) as info:
        parse_resource(yaml.safe_load(text), "peer.yaml")
    paths = [line.split(": ")[1] for line in info.value.problems]
    assert paths == ["spec.node", "spec.peerIP"]


def test_parse_resource_rejects_bad_dict() -> None:
    with pytest.raises(ResourceError, match=r"etcd document 7 \(IPPool x\): spec.cidr: host bits set"):
        parse_resource(
            {"apiVersion": API_VERSION, "kind": "IPPool", "metadata": {"name": "x"}, "spec": {"cidr": "10.0.0.1/8"}},
            "etcd",
            7,
        )


def test_ippool_update_immutable_fields() -> None:
    old = one(IPPOOL_CROSS_SUBNET)
    data = old.to_dict()
    data["spec"]["natOutgoing"] = False
    assert parse_resource(data).check_update(old) == []
    data["spec"]["blockSize"] = 28
    problems = parse_resource(data).check_update(old)
    assert problems == ["spec.blockSize: cannot be changed (was 26, now 28)"]


def test_pool_overlaps_ignores_same_name_and_other_family() -> None:
    a = IPPool(metadata=Metadata(name="a"), spec={"cidr": "10.0.0.0/16"})
    a2 = IPPool(metadata=Metadata(name="a"), spec={"cidr": "10.0.0.0/17"})
    b = IPPool(metadata=Metadata(name="b"), spec={"cidr": "fd00::/64"})
    c = IPPool(metadata=Metadata(name="c"), spec={"cidr": "10.0.255.0/24"})
    assert pool_overlaps([a, a2, b]) == []
    assert [(x.name, y.name) for x, y in pool_overlaps([a, b, c])] == [("a", "c")]


# ---------------------------------------------------------------------------------------------
# Shared parsers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("1m30s", 90),
        ("500ms", 0.5),
        ("2h", 7200),
        ("1.5h", 5400),
        ("0", 0),
        ("120s", 120),
        ("1h2m3s", 3723),
        ("250us", 0.00025),
        ("-1s", -1),
        (".5s", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1d", "s", "1m 30s", "1.2.3s", "--1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "asn"), [(64512, 64512), ("64512", 64512), ("1.10", 65546), ("0.1", 1), (4294967295, 4294967295)]
)
def test_parse_as_number(value: object, asn: int) -> None:
    assert parse_as_number(value) == asn


@pytest.mark.parametrize("value", [0, -1, 4294967296, "65536.0", "AS1", 1.1, True, "1.2.3"])
def test_parse_as_number_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_as_number(value)


# ---------------------------------------------------------------------------------------------
# Property: any pool satisfying the rules validates and round-trips
# ---------------------------------------------------------------------------------------------


@st.composite
def valid_pools(draw: st.DrawFn) -> dict:
    v6 = draw(st.booleans())
    if v6:
        low, high = 116, 128
        block = draw(st.integers(low, high))
        prefix = draw(st.integers(11, block))  # /10 or shorter could overlap fe80::/10
        addr = ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))
        net = ipaddress.IPv6Network(f"{addr}/{prefix}", strict=False)
        if net.overlaps(ipaddress.ip_network("fe80::/10")):
            net = ipaddress.IPv6Network(f"fd00::/{prefix}", strict=False)
        modes = ("Never", "Always", "CrossSubnet")
        ipip, vxlan = "Never", draw(st.sampled_from(modes))
    else:
        block = draw(st.integers(20, 32))
        prefix = draw(st.integers(1, block))
        addr = ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1)))
        net = ipaddress.IPv4Network(f"{addr}/{prefix}", strict=False)
        if net.overlaps(ipaddress.ip_network("169.254.0.0/16")):
            net = ipaddress.IPv4Network(f"10.0.0.0/{prefix}", strict=False)
        encap = draw(st.sampled_from(["none", "ipip", "vxlan"]))
        mode = draw(st.sampled_from(["Always", "CrossSubnet"]))
        ipip = mode if encap == "ipip" else draw(st.sampled_from(["Never", ""]))
        vxlan = mode if encap == "vxlan" else "Never"
    spec = {
        "cidr": str(net),
        "blockSize": block,
        "ipipMode": ipip,
        "vxlanMode": vxlan,
        "natOutgoing": draw(st.booleans()),
        "disabled": draw(st.booleans()),
        "disableBGPExport": draw(st.booleans()),
        "nodeSelector": draw(st.sampled_from(["all()", "", "zone == 'a'", "has(edge) && rack in {'r1', 'r2'}"])),
        "allowedUses": draw(st.sampled_from([["Workload"], ["Tunnel"], ["Workload", "Tunnel"], ["LoadBalancer"]])),
    }
    if spec["allowedUses"] == ["LoadBalancer"]:
        # Calico: a LoadBalancer pool has no encapsulation, keeps BGP export and selects all nodes.
        spec.update(ipipMode="Never", vxlanMode="Never", disableBGPExport=False, nodeSelector="all()")
    # Starts with a letter: PyYAML leaves "0.e0" unquoted, which a YAML 1.2 reader takes as a float.
    name = draw(st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,5})?", fullmatch=True))
    return {"apiVersion": API_VERSION, "kind": "IPPool", "metadata": {"name": name}, "spec": spec}


@settings(max_examples=100, deadline=None)
@given(valid_pools())
def test_random_valid_pools_validate_and_round_trip(doc: dict) -> None:
    pool = parse_resource(doc, "hypothesis")
    assert isinstance(pool, IPPool)
    assert pool.spec.blockSize == doc["spec"]["blockSize"]
    assert pool.network == ipaddress.ip_network(doc["spec"]["cidr"])
    stored = pool.to_dict()
    assert parse_resource(json.loads(json.dumps(stored))) == pool
    assert parse_documents(yaml.safe_dump(stored)) == [pool]
