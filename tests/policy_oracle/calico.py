"""Calico ``projectcalico.org/v3`` policy on top of Kubernetes NetworkPolicy, evaluated per connection
from Calico's documentation (https://docs.tigera.io/calico/latest/reference/resources/).

For one endpoint and one direction:

- the policies that apply: Kubernetes NetworkPolicies of its namespace selecting it (tier
  ``default``, order 1000, rules all Allow), Calico NetworkPolicies of its namespace whose
  ``selector`` matches it, GlobalNetworkPolicies whose ``selector`` (and ``namespaceSelector``)
  match it; each only for the directions in its ``types``;
- tiers in order (``order`` from the Tier documents, ``default`` = 1,000,000; none = last; ties by
  name); only tiers with an applying policy are visited; in a tier, policies by order (none = last,
  ties by name), rules in order: the first matching Allow/Deny decides, Pass goes to the next tier,
  Log continues; no rule matched in a visited tier = the tier's ``defaultAction`` (Deny unless Pass);
- after the last tier: the namespace profile ``kns.<ns>`` allows.

Rules (the fields the scenarios use): ``action``, ``protocol``, ``source``/``destination`` with
``selector`` (endpoints, and network sets of the same scope), ``namespaceSelector``, ``nets``,
``notNets``, ``ports``/``notPorts`` (numbers and ``"a:b"`` ranges). Selectors are the subset
``k == 'v'``, ``k != 'v'``, ``has(k)``, ``all()`` joined by ``&&``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.policy_oracle import k8s

DEFAULT_TIER_ORDER = 1_000_000.0
K8S_ORDER = 1000.0
_TERM = re.compile(r"""^\s*(?:(all\(\))|has\(([^)]+)\)|([\w./-]+)\s*(==|!=)\s*['"]([^'"]*)['"])\s*$""")


@dataclass(frozen=True)
class NetSet:
    name: str
    namespace: str | None  # None: a GlobalNetworkSet
    labels: Mapping[str, str]
    nets: tuple[str, ...]


@dataclass
class CalicoCluster(k8s.Cluster):
    netsets: list[NetSet] = field(default_factory=list)


def selector_matches(text: str | None, labels: Mapping[str, str]) -> bool:
    if text is None or not text.strip():
        return True
    for term in text.split("&&"):
        m = _TERM.match(term)
        if m is None:
            raise ValueError(f"oracle: unsupported selector term {term!r}")
        if m.group(1):
            continue
        if m.group(2):
            if m.group(2).strip() not in labels:
                return False
            continue
        key, op, value = m.group(3), m.group(4), m.group(5)
        if (labels.get(key) == value) != (op == "=="):
            return False
    return True


def _ns_labels(cluster: k8s.Cluster, ns: str) -> dict[str, str]:
    return {**cluster.ns_labels(ns), "projectcalico.org/name": ns}


def _in_nets(ip: str, nets: list[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(n, strict=False) for n in nets)


def _ports_match(ports: list[Any], port: int) -> bool:
    for p in ports:
        if isinstance(p, int) and p == port:
            return True
        if isinstance(p, str) and ":" in p:
            lo, hi = p.split(":")
            if int(lo) <= port <= int(hi):
                return True
    return False


def _entity(cluster: CalicoCluster, ent: Mapping[str, Any] | None, scope_ns: str | None, ip: str,
            pod: k8s.PodSpec | None, proto: str, port: int | None) -> bool:
    """Does the peer (ip, pod) and port satisfy an EntityRule? ``port`` None: not the port's side."""
    ent = ent or {}
    if "nets" in ent and not _in_nets(ip, ent["nets"]):
        return False
    if "notNets" in ent and _in_nets(ip, ent["notNets"]):
        return False
    if "selector" in ent or "namespaceSelector" in ent:
        sel, nss = ent.get("selector"), ent.get("namespaceSelector")
        hit = False
        if pod is not None:
            ns_ok = selector_matches(nss, _ns_labels(cluster, pod.namespace)) if nss is not None \
                else (scope_ns is None or pod.namespace == scope_ns)
            hit = ns_ok and selector_matches(sel, {**pod.labels, "projectcalico.org/namespace": pod.namespace})
        for ns_set in cluster.netsets:
            if nss is not None:
                ns_ok = ns_set.namespace is not None and selector_matches(nss, _ns_labels(cluster, ns_set.namespace))
            else:
                ns_ok = ns_set.namespace == scope_ns if scope_ns is not None else ns_set.namespace is None
            if ns_ok and selector_matches(sel, ns_set.labels) and _in_nets(ip, list(ns_set.nets)):
                hit = True
        if not hit:
            return False
    if port is not None:
        if "ports" in ent and (proto not in ("TCP", "UDP", "SCTP") or not _ports_match(ent["ports"], port)):
            return False
        if "notPorts" in ent and (proto not in ("TCP", "UDP", "SCTP") or _ports_match(ent["notPorts"], port)):
            return False
    return True


def _rule_matches(cluster: CalicoCluster, rule: Mapping[str, Any], direction: str, scope_ns: str | None,
                  src: k8s.PodSpec, dst: k8s.PodSpec, proto: str, port: int) -> bool:
    want = rule.get("protocol")
    if want is not None and str(want).upper() != proto:
        return False
    if rule.get("notProtocol") is not None and str(rule["notProtocol"]).upper() == proto:
        return False
    # the peer side is checked against the peer; the endpoint's own side is the endpoint itself
    if not _entity(cluster, rule.get("source"), scope_ns, src.ip, src, proto, None):
        return False
    return _entity(cluster, rule.get("destination"), scope_ns, dst.ip, dst, proto, port)


@dataclass(frozen=True)
class _Applied:
    tier: str
    order: float | None
    name: str
    rules: list[dict[str, Any]]
    scope_ns: str | None


def _applying(cluster: CalicoCluster, pod: k8s.PodSpec, direction: str) -> list[_Applied]:
    out = []
    key = direction.lower()
    for doc in cluster.policies:
        kind, meta, spec = doc.get("kind"), doc.get("metadata") or {}, doc.get("spec") or {}
        api = str(doc.get("apiVersion", ""))
        if kind == "NetworkPolicy" and api.startswith("networking.k8s.io/"):
            if doc in k8s.selecting(cluster, pod, direction):
                rules = [{"action": "Allow", "_k8s": r} for r in spec.get(key) or []]
                out.append(_Applied("default", K8S_ORDER, f"knp.default.{meta['name']}", rules,
                                    meta.get("namespace", "default")))
            continue
        if kind not in ("NetworkPolicy", "GlobalNetworkPolicy") or not api.startswith("projectcalico.org/"):
            continue
        if direction not in (spec.get("types") or []):
            raise_if_untyped(doc)
            continue
        labels = {**pod.labels, "projectcalico.org/namespace": pod.namespace}
        if kind == "NetworkPolicy":
            if meta.get("namespace", "default") != pod.namespace or not selector_matches(spec.get("selector"), labels):
                continue
            scope: str | None = pod.namespace
        else:
            if not selector_matches(spec.get("selector"), labels):
                continue
            if spec.get("namespaceSelector") and not selector_matches(spec["namespaceSelector"],
                                                                      _ns_labels(cluster, pod.namespace)):
                continue
            scope = None
        out.append(_Applied(spec.get("tier", "default"), spec.get("order"), meta["name"], list(spec.get(key) or []),
                            scope))
    return out


def raise_if_untyped(doc: Mapping[str, Any]) -> None:
    if not (doc.get("spec") or {}).get("types"):
        raise ValueError(f"oracle: {doc['metadata']['name']}: give types explicitly")


def _tier_orders(cluster: CalicoCluster) -> dict[str, tuple[float | None, str]]:
    out: dict[str, tuple[float | None, str]] = {"default": (DEFAULT_TIER_ORDER, "Deny")}
    for doc in cluster.policies:
        if doc.get("kind") == "Tier":
            spec = doc.get("spec") or {}
            out[doc["metadata"]["name"]] = (spec.get("order"), spec.get("defaultAction", "Deny"))
    return out


def side_allows(cluster: CalicoCluster, pod: k8s.PodSpec, direction: str, src: k8s.PodSpec, dst: k8s.PodSpec,
                proto: str, port: int) -> bool:
    tiers = _tier_orders(cluster)
    applied = _applying(cluster, pod, direction)
    by_tier: dict[str, list[_Applied]] = {}
    for a in applied:
        by_tier.setdefault(a.tier, []).append(a)

    def tier_key(t: str) -> tuple[bool, float, str]:
        order = tiers.get(t, (None, "Deny"))[0]
        return (order is None, order or 0.0, t)

    for tier in sorted(by_tier, key=tier_key):
        decided: str | None = None
        for a in sorted(by_tier[tier], key=lambda a: (a.order is None, a.order or 0.0, a.name)):
            for rule in a.rules:
                if "_k8s" in rule:
                    other = src if direction == "Ingress" else dst
                    peers = "from" if direction == "Ingress" else "to"
                    hit = k8s.rule_matches(cluster, a.scope_ns or "default", rule["_k8s"], peers, other.ip, other,
                                           proto, port, dst)
                else:
                    hit = _rule_matches(cluster, rule, direction, a.scope_ns, src, dst, proto, port)
                if not hit or rule.get("action") == "Log":
                    continue
                decided = str(rule["action"])
                break
            if decided is not None:
                break
        if decided == "Allow":
            return True
        if decided == "Deny":
            return False
        if decided == "Pass":
            continue
        if tiers.get(tier, (None, "Deny"))[1] != "Pass":
            return False  # end of tier
    return True  # the kns.<namespace> profile allows


def allowed(cluster: CalicoCluster, client: str, server: str, proto: str, port: int = 0) -> bool:
    dst = cluster.pods[server]
    if client.startswith("node:"):
        if client[5:] == dst.node:
            return True
        raise ValueError(f"{client}: only a pod's own node is a supported host client")
    src = cluster.pods[client]
    if src.name == dst.name:
        return True
    return (side_allows(cluster, src, "Egress", src, dst, proto, port)
            and side_allows(cluster, dst, "Ingress", src, dst, proto, port))
