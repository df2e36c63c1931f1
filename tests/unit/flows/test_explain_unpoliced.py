"""policy explain's two paths no policy chain sees (found by the truth-table suite, which holds explain
equal to real probes): a pod's traffic to its own address (its loopback), and the node's own stack to
its local pods (output path; the policy hooks only forward)."""

from __future__ import annotations

from controller.cli.policy_cmd import PolicyInputs, explain_packet, node_addresses
from datamodel.resources import parse_resource
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from felix_like.policy_eval import Packet


def wep(name: str, ip: str) -> WorkloadEndpoint:
    return WorkloadEndpoint.model_validate({
        "metadata": {"name": f"n1-k8s-{name}-eth0", "namespace": "prod", "labels": {"app": "web"}},
        "spec": {"node": "n1", "pod": name, "ipNetworks": [f"{ip}/32"], "interfaceName": f"tab{name}"}})


def isolated() -> PolicyInputs:
    """srv isolated for ingress (deny all), a Node n1 at 192.0.2.1 with a VXLAN tunnel address."""
    i = PolicyInputs()
    i.add("/w/srv", wep("srv", "10.0.0.2"))
    i.add("resources/v3/kubernetesnetworkpolicies/prod/iso", parse_resource({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "iso", "namespace": "prod"}, "spec": {"podSelector": {}, "ingress": []}}))
    i.add("resources/v3/nodes/n1", parse_resource({
        "apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n1"},
        "spec": {"bgp": {"ipv4Address": "192.0.2.1/24"}, "ipv4VXLANTunnelAddr": "10.0.0.129"}}))
    return i


def test_isolated_pod_denies_another_address() -> None:
    """The control: an address that is neither the pod nor its node is judged by the ingress chain."""
    _eg, ing, _sn, _dn = explain_packet(isolated(), Packet("198.51.100.7", "10.0.0.2", "tcp", 80))
    assert ing is not None and ing.verdict == "denied"


def test_pod_to_itself_is_not_policed() -> None:
    eg, ing, sn, dn = explain_packet(isolated(), Packet("10.0.0.2", "10.0.0.2", "tcp", 80))
    assert eg is not None and ing is not None
    assert (eg.verdict, ing.verdict, sn, dn) == ("allowed", "allowed", "n1", "n1")
    assert "loopback" in ing.note


def test_own_node_to_local_pod_is_not_policed() -> None:
    i = isolated()
    assert i.node_addresses == {"n1": {"192.0.2.1", "10.0.0.129"}}
    for src in ("192.0.2.1", "10.0.0.129"):
        eg, ing, _sn, dn = explain_packet(i, Packet(src, "10.0.0.2", "icmp"))
        assert eg is None and ing is not None and ing.verdict == "allowed" and dn == "n1", src
        assert "own node" in ing.note


def test_other_node_address_is_policed() -> None:
    """Another node's address reaches the pod forwarded: its ingress policy applies."""
    i = isolated()
    i.node_addresses["n2"] = {"192.0.2.2"}
    ing = explain_packet(i, Packet("192.0.2.2", "10.0.0.2", "tcp", 80))[1]
    assert ing is not None and ing.verdict == "denied"


def test_node_addresses_reads_every_field() -> None:
    node = parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n"},
                           "spec": {"bgp": {"ipv4Address": "192.0.2.1/24", "ipv4IPIPTunnelAddr": "10.1.0.1"},
                                    "wireguard": {"interfaceIPv4Address": "10.2.0.1"},
                                    "addresses": [{"address": "203.0.113.5", "type": "ExternalIP"}]}})
    assert node_addresses(node) == {"192.0.2.1", "10.1.0.1", "10.2.0.1", "203.0.113.5"}
