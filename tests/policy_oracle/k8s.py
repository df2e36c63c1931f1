"""Kubernetes ``networking.k8s.io/v1`` NetworkPolicy, evaluated per connection from the API docs.

Semantics implemented (https://kubernetes.io/docs/concepts/services-networking/network-policies/):

- a pod is isolated for a direction once any policy of its namespace selects it (``podSelector``)
  and lists that direction in ``policyTypes``; omitted ``policyTypes`` = ``Ingress``, plus
  ``Egress`` when ``egress`` has rules;
- a connection is allowed when the client's egress allows it AND the server's ingress allows it;
  each side allows when it is not isolated, or when any rule of any selecting policy matches;
- a rule matches when one of its peers matches (no/empty ``from``/``to`` = everyone) and one of its
  ports matches (no/empty ``ports`` = every port and protocol, ICMP included);
- a peer: ``podSelector`` alone = pods of the policy's namespace, ``namespaceSelector`` alone =
  every pod of the matching namespaces, both = AND; ``ipBlock`` = the address within ``cidr`` and
  in no ``except``;
- a port: ``protocol`` (default TCP) and ``port`` (absent = every port of that protocol; a number,
  optionally up to ``endPort``; a name = the destination pod's container port of that name and
  protocol);
- traffic between a pod and its own node, and from a pod to itself, is always allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PodSpec:
    """A pod as the oracle sees it: where it runs, its labels and IP, its named container ports."""

    name: str
    namespace: str
    node: str
    labels: Mapping[str, str]
    ip: str
    ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol upper-case, port)


@dataclass
class Cluster:
    pods: dict[str, PodSpec]
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels (as written)
    policies: list[dict[str, Any]] = field(default_factory=list)  # plain documents

    def ns_labels(self, namespace: str) -> dict[str, str]:
        labels = dict(self.namespaces.get(namespace, {}))
        labels["kubernetes.io/metadata.name"] = namespace  # Kubernetes guarantees it
        return labels


def label_selector_matches(sel: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector: matchLabels AND every matchExpression; ``{}`` matches everything."""
    sel = sel or {}
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policy_types(doc: Mapping[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if spec.get("egress") else [])]


def _kube_policies(cluster: Cluster) -> list[dict[str, Any]]:
    return [p for p in cluster.policies if p.get("kind") == "NetworkPolicy"
            and str(p.get("apiVersion", "")).startswith("networking.k8s.io/")]


def selecting(cluster: Cluster, pod: PodSpec, direction: str) -> list[dict[str, Any]]:
    """The Kubernetes policies that select ``pod`` for ``direction`` ("Ingress"/"Egress")."""
    out = []
    for doc in _kube_policies(cluster):
        ns = (doc.get("metadata") or {}).get("namespace", "default")
        if ns != pod.namespace or direction not in policy_types(doc):
            continue
        if label_selector_matches((doc.get("spec") or {}).get("podSelector"), pod.labels):
            out.append(doc)
    return out


def _ip_in_block(ip: str, block: Mapping[str, Any]) -> bool:
    addr = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block["cidr"], strict=False)
    if addr.version != net.version or addr not in net:
        return False
    return not any(addr in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])


def peer_matches(cluster: Cluster, policy_ns: str, peer: Mapping[str, Any], other_ip: str,
                 other: PodSpec | None) -> bool:
    if "ipBlock" in peer:
        return _ip_in_block(other_ip, peer["ipBlock"])
    if other is None:
        return False  # selectors match pods only
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    if ns_sel is None:
        if other.namespace != policy_ns:
            return False
    elif not label_selector_matches(ns_sel, cluster.ns_labels(other.namespace)):
        return False
    return pod_sel is None or label_selector_matches(pod_sel, other.labels)


def port_matches(entry: Mapping[str, Any], proto: str, port: int, dst: PodSpec | None) -> bool:
    want = str(entry.get("protocol", "TCP")).upper()
    if proto.upper() != want:
        return False
    p = entry.get("port")
    if p is None:
        return True
    if isinstance(p, str):
        return dst is not None and any(n == p and pr == want and num == port for n, pr, num in dst.ports)
    end = entry.get("endPort", p)
    return int(p) <= port <= int(end)


def rule_matches(cluster: Cluster, policy_ns: str, rule: Mapping[str, Any], peers_key: str, other_ip: str,
                 other: PodSpec | None, proto: str, port: int, dst: PodSpec | None) -> bool:
    peers = rule.get(peers_key) or []
    if peers and not any(peer_matches(cluster, policy_ns, p, other_ip, other) for p in peers):
        return False
    ports = rule.get("ports") or []
    if not ports:
        return True
    if proto.upper() == "ICMP":
        return False  # a rule with ports matches its protocols only
    return any(port_matches(e, proto, port, dst) for e in ports)


def side_allows(cluster: Cluster, pod: PodSpec, direction: str, other_ip: str, other: PodSpec | None,
                proto: str, port: int, dst: PodSpec | None) -> bool:
    """Does ``pod``'s ``direction`` allow this connection (True when the pod is not isolated)?"""
    policies = selecting(cluster, pod, direction)
    if not policies:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for doc in policies:
        ns = (doc.get("metadata") or {}).get("namespace", "default")
        for rule in (doc.get("spec") or {}).get(key) or []:
            if rule_matches(cluster, ns, rule, peers_key, other_ip, other, proto, port, dst):
                return True
    return False


def allowed(cluster: Cluster, client: str, server: str, proto: str, port: int = 0) -> bool:
    """Is a connection from pod (or ``node:<name>``) ``client`` to pod ``server`` allowed?

    ``proto`` is "TCP", "UDP", "SCTP" or "ICMP" (``port`` ignored for ICMP)."""
    dst = cluster.pods[server]
    if client.startswith("node:"):
        # a host client: its own node's pods always; other sources would be ipBlock-only (not probed)
        if client[5:] == dst.node:
            return True
        raise ValueError(f"{client}: only a pod's own node is a supported host client")
    src = cluster.pods[client]
    if src.name == dst.name:
        return True  # a pod's traffic to itself is not policed
    return (side_allows(cluster, src, "Egress", dst.ip, dst, proto, port, dst)
            and side_allows(cluster, dst, "Ingress", src.ip, src, proto, port, dst))
