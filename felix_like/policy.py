"""Kubernetes NetworkPolicy and Calico policy -> an nftables program: the pure compiler (no I/O, no root).

Why this shape (Felix's nftables layout, without its iptables-shaped rule splitting): one table of
Tabby's own, ``inet tabby-policy``; the forward hook dispatches on the workload interface through
two verdict maps (``egress`` by iifname, ``ingress`` by oifname) to a per-endpoint chain; each
endpoint chain jumps to one chain per (policy, direction), shared by every local endpoint the
policy selects, and ends in ``drop`` (the endpoint is isolated in that direction). Peers are named
sets: one ``ipv4_addr`` set per distinct selector peer, one ``ipv4_addr . inet_proto .
inet_service`` set per named port; ipBlocks are anonymous interval sets inline. So a pod appearing
or a label change touches set elements only, and a policy change rewrites only its own chains.

Names are short hashes of what they stand for, so the same policy or selector always gets the same
chain or set name (an agent restart adopts its predecessor's names), and chain texts depend only on
their policy: set names are functions of the selectors, never of their members.

Calico's kinds compile to the same shapes: an endpoint chain holds the tiers (jumps to the policy
chains in Calico's order, each tier's end-of-tier action, a Pass mark that skips the rest of a
tier) and then the profiles; Calico selectors are interval sets that also hold network-set CIDRs.
Both families: every selector and named-port set has an IPv6 twin, and rules that use one render
one nft rule per family.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import ipaddress
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from datamodel.resources.calicopolicy import (
    DEFAULT_TIER,
    KUBERNETES_POLICY_ORDER,
    CalicoNetworkPolicy,
    EntityRule,
    GlobalNetworkPolicy,
    Profile,
    Rule,
    Tier,
    port_range,
    protocol_number,
    tier_of,
)
from datamodel.resources.kubernetes import (
    LabelSelector,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    namespace_labels,
)
from datamodel.selector import canonical_selector, parse_selector
from felix_like.conntrack import ConntrackCutter, CutWorker
from felix_like.nft_elements import ElementWriter
from felix_like.policy_ids import FAIL_CLOSED_REFS, RuleRef, fail_closed_ref, log_statement, rule_id

log = structlog.get_logger("tabby.felix.policy")

TABLE = "tabby-policy"
FAMILY = "inet"
MAP_INGRESS = "ingress"
MAP_EGRESS = "egress"
#: Workload interfaces (felix_like.workload names them tab + 11 hex).
IFACE_PREFIX = "tab"
#: Egress runs before ingress: two base chains on the forward hook, each with its own verdict (an
#: accept in the first hands the packet to the second; a drop anywhere is final).
PRIO_EGRESS = -10
PRIO_INGRESS = -5

#: Set by a Pass rule (and the policy chain returns); the endpoint chain then skips the rest of the
#: tier. Cleared at the start of every tier that has a Pass, and before the profiles.
PASS_MARK = 0x00200000

# Kubernetes: (namespace or None for every namespace, pod selector, namespace selector or None),
# matching workload endpoints by their own labels. Calico: the same plus a scope, "wep" (a policy's
# own endpoints) or "all" (a rule's peers: endpoints and network sets), matching with the labels
# Calico adds (projectcalico.org/namespace on endpoints, projectcalico.org/name on namespaces).
SelKey = tuple[str | None, str, str | None] | tuple[str | None, str, str | None, str]
# (the selector of the pods whose named port it is, or None for every pod; port name)
PortKey = tuple[SelKey | None, str]
#: A policy of any kind the compiler enforces.
AnyPolicy = NetworkPolicy | CalicoNetworkPolicy | GlobalNetworkPolicy
CALICO_NS_LABEL = "projectcalico.org/namespace"
CALICO_NAME_LABEL = "projectcalico.org/name"


@dataclass(frozen=True)
class EndpointInfo:
    """A WorkloadEndpoint (or a network set) as policy cares: where it is, its labels, addresses, named ports."""

    key: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    ips: tuple[str, ...]
    ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, port)
    node: str = ""
    interface: str = ""
    container_id: str = ""
    profiles: tuple[str, ...] = ()
    #: "wep" (a workload endpoint) or "netset" (a NetworkSet / GlobalNetworkSet: ``ips`` holds its
    #: CIDRs, ``namespace`` is "" for a global one); only Calico rule selectors match network sets.
    kind: str = "wep"

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@functools.lru_cache(maxsize=1 << 16)
def _hash(*parts: object) -> str:
    """A short stable name for chains and sets (memoised: a cold start of 1,000 policies x 50 local
    endpoints names the same chains 50,000 times)."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def set_name(key: SelKey, family: int = 4) -> str:
    """s- sets hold endpoint addresses (Kubernetes peers); c- sets are interval sets of endpoint
    addresses and network-set CIDRs (Calico rule selectors); s6-/c6- the same for IPv6."""
    return ("c" if len(key) == 4 else "s") + ("6-" if family == 6 else "-") + _hash("sel", key)


def port_set_name(key: PortKey, family: int = 4) -> str:
    return ("n6-" if family == 6 else "n-") + _hash("port", key)


def set_family(name: str) -> int:
    return 6 if name[1:3] == "6-" else 4


def names_of(refs: Refs) -> dict[str, SelKey | PortKey]:
    """Every set name (both families) the rules of ``refs`` reference, with what it stands for."""
    out: dict[str, SelKey | PortKey] = {set_name(k, f): k for k in refs.sets for f in (4, 6)}
    out.update({port_set_name(k, f): k for k in refs.ports for f in (4, 6)})
    return out


def policy_chain(namespace: str, name: str, direction: str, kind: str = "KubernetesNetworkPolicy") -> str:
    parts: tuple[str, ...] = (namespace, name) if kind == "KubernetesNetworkPolicy" else (kind, namespace, name)
    return f"p-{_hash('pol', *parts)}-{direction[0]}"


def profile_chain(name: str, direction: str) -> str:
    return f"r-{_hash('profile', name)}-{direction[0]}"


def policy_kind(policy: AnyPolicy) -> str:
    if isinstance(policy, NetworkPolicy):
        return "KubernetesNetworkPolicy"
    return policy.KIND


def chain_of(policy: AnyPolicy, direction: str) -> str:
    return policy_chain(policy.namespace or "", policy.name, direction, policy_kind(policy))


def endpoint_chain(interface: str, direction: str) -> str:
    return f"e-{interface}-{direction[0]}"


def _sel(s: LabelSelector) -> str:
    return str(s.to_selector())


def peer_key(policy_ns: str, peer: NetworkPolicyPeer) -> SelKey:
    """The pods a selector peer means: podSelector alone = the policy's namespace; namespaceSelector
    alone = every pod of the selected namespaces; both = AND."""
    pods = _sel(peer.podSelector) if peer.podSelector is not None else "all()"
    if peer.namespaceSelector is None:
        return (policy_ns, pods, None)
    return (None, pods, _sel(peer.namespaceSelector))


def _csel(text: str | None) -> str:
    return canonical_selector(text) if text else "all()"


def target_key(policy: AnyPolicy) -> SelKey:
    """The endpoints a policy applies to (workload endpoints only)."""
    if isinstance(policy, NetworkPolicy):
        return (policy.namespace or "default", _sel(policy.spec.podSelector), None)
    if isinstance(policy, GlobalNetworkPolicy):
        nss = policy.spec.namespaceSelector
        return (None, _csel(policy.spec.selector), _csel(nss) if nss else None, "wep")
    return (policy.namespace or "default", _csel(policy.spec.selector), None, "wep")


def selkey_matches(key: SelKey, ep: EndpointInfo, ns_labels: Mapping[str, str]) -> bool:
    ns, pods, nss = key[0], key[1], key[2]
    calico = len(key) == 4
    if ep.kind != "wep" and (not calico or key[3] != "all"):
        return False
    if ns is not None and ep.namespace != ns:
        return False
    if nss is not None:
        if not ep.namespace:  # a GlobalNetworkSet is in no namespace
            return False
        labels = {**ns_labels, CALICO_NAME_LABEL: ep.namespace} if calico else ns_labels
        if not parse_selector(nss).matches(labels):
            return False
    if calico and ep.namespace:
        return parse_selector(pods).matches({**ep.label_map, CALICO_NS_LABEL: ep.namespace})
    return parse_selector(pods).matches(ep.label_map)


def _version(ip: str) -> int:
    return 6 if ":" in ip else 4


def port_elements(ep: EndpointInfo, name: str, family: int | None = None) -> set[str]:
    return {f"{ip} . {proto.lower()} . {port}" for ip in ep.ips for (n, proto, port) in ep.ports
            if n == name and (family is None or _version(ip) == family)}


# -- rules ---------------------------------------------------------------------------------------


@dataclass
class Refs:
    """The sets a policy's chains reference."""

    sets: set[SelKey] = field(default_factory=set)
    ports: set[PortKey] = field(default_factory=set)
    #: the rule ids the chain's verdicts carry (rule id -> what it stands for)
    rule_refs: dict[str, RuleRef] = field(default_factory=dict)


def verdict_rule(match: str, ref: RuleRef, verdict: str, rule_refs: dict[str, RuleRef], flow_logs: bool) -> str:
    """``match`` + (with flow logging) the NFLOG statement with the rule's id + ``verdict``.

    Only a connection's first packet ever gets here: the base chains accept established/related and
    drop invalid before any policy chain, so the log is a per-connection (``ct state new``) record."""
    rid = rule_id(ref)
    rule_refs[rid] = ref
    return " ".join(p for p in (match, log_statement(rid) if flow_logs else "", verdict) if p)


def _ipblock(peer: NetworkPolicyPeer, side: str) -> str:
    assert peer.ipBlock is not None
    net = ipaddress.ip_network(peer.ipBlock.cidr, strict=False)
    proto = "ip" if net.version == 4 else "ip6"
    text = f"{proto} {side} {net}"
    excepts = sorted({ipaddress.ip_network(e, strict=False) for e in peer.ipBlock.except_ or []},
                     key=lambda n: (n.version, n))
    if excepts:
        text += f" {proto} {side} != {{ {', '.join(str(e) for e in excepts)} }}"
    return text


def _port(port: NetworkPolicyPort | None, named_set: str | None, family: int = 4) -> str:
    if port is None:
        return ""
    proto = port.protocol.lower()
    if isinstance(port.port, str):
        assert named_set is not None
        return f"{'ip6' if family == 6 else 'ip'} daddr . meta l4proto . th dport @{named_set}"
    if port.port is None:
        return f"meta l4proto {proto}"
    if port.endPort is not None and port.endPort != port.port:
        return f"meta l4proto {proto} th dport {port.port}-{port.endPort}"
    return f"meta l4proto {proto} th dport {port.port}"


def policy_rules(policy: AnyPolicy, direction: str, refs: Refs | None = None,
                 flow_logs: bool = True) -> tuple[str, ...]:
    """The rules of one policy's chain for ``direction`` ("ingress"/"egress"): any rule, any peer of
    it and any port of it allows (accept); no match falls back to the endpoint chain's drop. Every
    nft rule of Kubernetes rule ``i`` carries that rule's id (a Kubernetes policy sits in Calico's
    default tier)."""
    refs = refs if refs is not None else Refs()
    if not isinstance(policy, NetworkPolicy):
        return calico_rules(policy, direction, refs, flow_logs)
    ns = policy.namespace or "default"
    rules = policy.spec.ingress if direction == "ingress" else policy.spec.egress
    side = "saddr" if direction == "ingress" else "daddr"
    out: list[str] = []
    for index, rule in enumerate(rules or []):
        ref = RuleRef("default", "KubernetesNetworkPolicy", ns, policy.name, direction, index, "allow")
        peers: list[NetworkPolicyPeer | None] = list(
            (rule.from_ if direction == "ingress" else rule.to) or []) or [None]  # type: ignore[union-attr]
        ports: list[NetworkPolicyPort | None] = list(rule.ports or []) or [None]
        for peer in peers:
            key = None
            block = peer is not None and peer.ipBlock is not None
            if peer is not None and not block:
                key = peer_key(ns, peer)
                refs.sets.add(key)
            for port in ports:
                named_port = port is not None and isinstance(port.port, str)
                # one rule for both families unless a set (per family) or an ipBlock (one family) is in it
                if block:
                    assert peer is not None and peer.ipBlock is not None
                    families: tuple[int, ...] = (ipaddress.ip_network(peer.ipBlock.cidr, strict=False).version,)
                else:
                    families = (4, 6) if key is not None or named_port else (0,)
                for family in families:
                    ip = "ip6" if family == 6 else "ip"
                    if peer is None:
                        addr = ""
                    elif block:
                        addr = _ipblock(peer, side)
                    else:
                        assert key is not None
                        addr = f"{ip} {side} @{set_name(key, family)}"
                    named = None
                    if named_port:
                        assert port is not None
                        # the named port is the destination pod's: the policy's own pods on ingress,
                        # the peer's pods on egress (every pod for an ipBlock or no peer)
                        owner = target_key(policy) if direction == "ingress" else key
                        pkey: PortKey = (owner, str(port.port))
                        refs.ports.add(pkey)
                        named = port_set_name(pkey, family)
                        # on egress the named-port set already holds the peer's addresses
                        addr_part = "" if direction == "egress" and key is not None else addr
                    else:
                        addr_part = addr
                    match = " ".join(p for p in (addr_part, _port(port, named, family)) if p)
                    out.append(verdict_rule(match, ref, "accept", refs.rule_refs, flow_logs))
    return tuple(out)


def policy_types(policy: AnyPolicy) -> list[str]:
    if isinstance(policy, NetworkPolicy):
        return list(policy.spec.policyTypes or [])
    return list(policy.spec.types or [])


def policy_refs(policy: AnyPolicy) -> Refs:
    refs = Refs()
    for direction in ("ingress", "egress"):
        if direction.capitalize() in policy_types(policy):
            policy_rules(policy, direction, refs)
    return refs


# -- Calico rules --------------------------------------------------------------------------------

_NFT_PROTO = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite"}
_VERDICTS = {"Allow": "accept", "Deny": "drop", "Pass": f"meta mark set meta mark | {PASS_MARK:#010x} return"}


def _proto(value: int | str | None) -> str:
    number = protocol_number(value)
    assert number is not None
    return _NFT_PROTO.get(number, str(number))


def _entity_key(entity: EntityRule, policy_ns: str | None) -> SelKey | None:
    """The endpoints and network sets a rule's selector/namespaceSelector means: in a namespaced
    policy, its own namespace unless namespaceSelector picks namespaces; in a global one (or a
    profile), every namespace and the global network sets."""
    if entity.selector is None and entity.namespaceSelector is None:
        return None
    nss = entity.namespaceSelector
    if nss is not None:
        return (None, _csel(entity.selector), _csel(nss), "all")
    return (policy_ns, _csel(entity.selector), None, "all")


def _not_key(entity: EntityRule, policy_ns: str | None) -> SelKey | None:
    if entity.notSelector is None:
        return None
    nss = entity.namespaceSelector
    if nss is not None:
        return (None, _csel(entity.notSelector), _csel(nss), "all")
    return (policy_ns, _csel(entity.notSelector), None, "all")


def _nets(nets: list[str] | None, version: int) -> list[str]:
    found = [ipaddress.ip_interface(n).network for n in nets or []]
    return [str(n) for n in ipaddress.collapse_addresses([n for n in found if n.version == version])]  # type: ignore[misc]


def _ports_match(ports: list[int | str], field_: str, negate: bool) -> str:
    items = []
    for port in ports:
        lo_hi = port_range(port)
        assert lo_hi is not None
        items.append(str(lo_hi[0]) if lo_hi[0] == lo_hi[1] else f"{lo_hi[0]}-{lo_hi[1]}")
    op = "!= " if negate else ""
    return f"{field_} {op}{{ {', '.join(items)} }}" if len(items) > 1 or negate else f"{field_} {items[0]}"


def calico_rules(policy: CalicoNetworkPolicy | GlobalNetworkPolicy | Profile, direction: str, refs: Refs,
                 flow_logs: bool = True) -> tuple[str, ...]:
    """A Calico policy's (or profile's) rules for one direction, in order, each to one or more nft
    rules (one per address family or named port it needs). Allow accepts, Deny drops, Pass sets
    :data:`PASS_MARK` and returns (the endpoint chain skips the rest of the tier), Log logs to NFLOG
    with the rule's id and goes on (rendered with or without flow logging: it is the user's rule)."""
    rules: list[Rule] = (policy.spec.ingress if direction == "ingress" else policy.spec.egress) or []
    if isinstance(policy, Profile):
        kind, tier, ns, scope_ns = "Profile", "", "", None
    else:
        kind = policy.KIND
        tier = policy.spec.tier
        ns = policy.namespace or ""
        scope_ns = (policy.namespace or "default") if isinstance(policy, CalicoNetworkPolicy) else None
    target = None if isinstance(policy, Profile) else target_key(policy)
    out: list[str] = []
    for index, rule in enumerate(rules):
        ref = RuleRef(tier, kind, ns, policy.name, direction, index, rule.action.lower())
        for match in _rule_matches(rule, direction, scope_ns, target, refs):
            if rule.action == "Log":
                rid = rule_id(ref)
                refs.rule_refs[rid] = ref
                out.append(" ".join(p for p in (match, log_statement(rid)) if p))
            elif isinstance(policy, Profile) and rule.action == "Pass":
                out.append(verdict_rule(match, ref, "return", refs.rule_refs, flow_logs))  # on to the next profile
            else:
                out.append(verdict_rule(match, ref, _VERDICTS[rule.action], refs.rule_refs, flow_logs))
    return tuple(out)


def has_pass(policy: AnyPolicy, direction: str) -> bool:
    if isinstance(policy, NetworkPolicy):
        return False
    rules = policy.spec.ingress if direction == "ingress" else policy.spec.egress
    return any(r.action == "Pass" for r in rules or [])


def policy_tier(policy: AnyPolicy) -> str:
    return DEFAULT_TIER if isinstance(policy, NetworkPolicy) else policy.spec.tier


def policy_sort_key(policy: AnyPolicy) -> tuple[bool, float, str]:
    """Calico's order within a tier: by order (none = last), ties by name; a Kubernetes policy is at
    order 1000, named as Calico names it (``<ns>/knp.default.<name>``)."""
    if isinstance(policy, NetworkPolicy):
        return (False, KUBERNETES_POLICY_ORDER, f"{policy.namespace or 'default'}/knp.default.{policy.name}")
    order = policy.spec.order
    name = policy.name if isinstance(policy, GlobalNetworkPolicy) else f"{policy.namespace or 'default'}/{policy.name}"
    return (order is None, order or 0.0, name)


@dataclass(frozen=True)
class PolicyFacts:
    """What an endpoint's plan needs of a policy that selects it. A cold start plans every policy
    for every local endpoint and direction (1,000 x 50 x 2 at the bench's size); deriving these
    each time was a third of the calculation, so the calculator keeps them per policy."""

    types: frozenset[str]
    tier: str
    order: tuple[bool, float, str]
    ingress_chain: str
    egress_chain: str
    passes: frozenset[str]  # the directions with a Pass rule


def policy_facts(policy: AnyPolicy) -> PolicyFacts:
    return PolicyFacts(frozenset(policy_types(policy)), policy_tier(policy), policy_sort_key(policy),
                       chain_of(policy, "ingress"), chain_of(policy, "egress"),
                       frozenset(d for d in ("ingress", "egress") if has_pass(policy, d)))


def _facts_order(facts: PolicyFacts) -> tuple[bool, float, str]:
    return facts.order


def tier_sort_key(name: str, tiers: Mapping[str, Tier]) -> tuple[bool, float, str]:
    order, _ = tier_of(name, tiers.get(name))
    return (order is None, order or 0.0, name)


def _rule_matches(rule: Rule, direction: str, scope_ns: str | None, target: SelKey | None, refs: Refs) -> list[str]:
    """The nft match texts (alternatives, OR) of one Calico rule; [] when it can never match."""
    proto = protocol_number(rule.protocol)
    families = {4, 6}
    if rule.ipVersion is not None:
        families &= {rule.ipVersion}
    if proto == 1:
        families &= {4}
    if proto == 58:
        families &= {6}
    sides = (("saddr", "sport", rule.source), ("daddr", "dport", rule.destination))
    for _addr, _port, entity in sides:
        if entity.nets:
            families &= {parse_net.version for parse_net in (ipaddress.ip_interface(n).network for n in entity.nets)}
    # with nets, selectors (one set per family) or named ports the family is explicit: one
    # alternative per family (notNets constrain their own family only)
    restricted = families != {4, 6} or any(
        e.nets or e.notNets or e.selector is not None or e.namespaceSelector is not None or e.notSelector is not None
        or any(port_range(p) is None for p in (*(e.ports or []), *(e.notPorts or []))) for _a, _p, e in sides)
    out: list[str] = []
    for family in sorted(families) if restricted else [0]:
        ip = "ip6" if family == 6 else "ip"
        head: list[str] = []
        if restricted:
            head.append(f"meta nfproto ipv{family}")
        if rule.protocol is not None:
            head.append(f"meta l4proto {_proto(rule.protocol)}")
        if rule.notProtocol is not None:
            head.append(f"meta l4proto != {_proto(rule.notProtocol)}")
        icmp = "icmpv6" if proto == 58 else "icmp"
        if rule.icmp is not None and rule.icmp.type is not None:
            head.append(f"{icmp} type {rule.icmp.type}")
            if rule.icmp.code is not None:
                head.append(f"{icmp} code {rule.icmp.code}")
        if rule.notICMP is not None and rule.notICMP.type is not None:
            if rule.notICMP.code is not None:
                head.append(f"{icmp} type . {icmp} code != {{ {rule.notICMP.type} . {rule.notICMP.code} }}")
            else:
                head.append(f"{icmp} type != {rule.notICMP.type}")
        # per side: address parts, then port alternatives (numeric ranges, or one per named port)
        variants: list[list[str]] = [head]
        for addr, port_field, entity in sides:
            parts: list[str] = []
            nets = _nets(entity.nets, family or 4) if entity.nets else []
            if nets:
                parts.append(f"{ip} {addr} {{ {', '.join(nets)} }}" if len(nets) > 1 else f"{ip} {addr} {nets[0]}")
            not_nets = _nets(entity.notNets, family) if family else []
            if not_nets:
                parts.append(f"{ip} {addr} != {{ {', '.join(not_nets)} }}")
            key = _entity_key(entity, scope_ns)
            if key is not None:
                refs.sets.add(key)
                parts.append(f"{ip} {addr} @{set_name(key, family)}")
            nkey = _not_key(entity, scope_ns)
            if nkey is not None:
                refs.sets.add(nkey)
                parts.append(f"{ip} {addr} != @{set_name(nkey, family)}")
            # the named ports are the endpoint's on this side: the policy's own endpoint on its side
            local = (direction == "ingress") == (addr == "daddr")
            owner = target if local else key
            numeric = [p for p in entity.ports or [] if port_range(p) is not None]
            named = [p for p in entity.ports or [] if port_range(p) is None]
            alts: list[str] = []
            if numeric:
                alts.append(_ports_match(numeric, f"th {port_field}", False))
            for pname in named:
                pkey: PortKey = (owner, str(pname))
                refs.ports.add(pkey)
                alts.append(f"{ip} {addr} . meta l4proto . th {port_field} @{port_set_name(pkey, family)}")
            not_numeric = [p for p in entity.notPorts or [] if port_range(p) is not None]
            if not_numeric:
                parts.append(_ports_match(not_numeric, f"th {port_field}", True))
            for pname in [p for p in entity.notPorts or [] if port_range(p) is None]:
                pkey = (owner, str(pname))
                refs.ports.add(pkey)
                parts.append(f"{ip} {addr} . meta l4proto . th {port_field} != @{port_set_name(pkey, family)}")
            variants = [v + parts + ([a] if a else []) for v in variants for a in (alts or [""])]
        out += [" ".join(p for p in v if p) for v in variants]
    return out



# -- the whole program ---------------------------------------------------------------------------


RefItems = tuple[tuple[str, RuleRef], ...]


@dataclass(frozen=True)
class EndpointPlan:
    """One local interface's chain for one direction: the policy (and profile) chains it jumps to and
    its rules in order (the jumps, then the synthetic verdicts), with the ids those verdicts carry."""

    chains: tuple[str, ...]
    rules: tuple[str, ...]
    refs: RefItems = ()


_CLEAR_PASS = f"meta mark set meta mark and {0xFFFFFFFF ^ PASS_MARK:#010x}"
_NOT_PASSED = f"meta mark and {PASS_MARK:#010x} == 0"


def endpoint_plan(ep: EndpointInfo, direction: str, policies: Iterable[AnyPolicy | PolicyFacts],
                  tiers: Mapping[str, Tier] | None = None, profiles: Mapping[str, Profile] | None = None,
                  flow_logs: bool = True) -> EndpointPlan | None:
    """An endpoint's chain for ``direction``, Calico's evaluation order: every tier that has a policy
    selecting the endpoint, by tier order (none = last, ties by name); in it, those policies by
    order (none = last, ties by name), then the tier's default action (Deny: the end-of-tier drop;
    Pass: on to the next tier). A Pass rule sets :data:`PASS_MARK`, so the rest of its tier is
    skipped. After the last tier the endpoint's profiles decide (the ``kns.<namespace>`` profile
    without a Profile document allows, as under Kubernetes; an endpoint naming no profile is treated
    as naming its namespace's), and nothing matched = the no-profile drop.

    None: no chain is needed (nothing selects the endpoint and its profile allows everything, with
    no flow log to write): the verdict map accepts.

    ``policies`` may be given as their :class:`PolicyFacts` (what the plan needs of a policy), which
    the calculator keeps per policy instead of deriving them again for every endpoint."""
    tiers = tiers or {}
    profiles = profiles or {}
    refs: dict[str, RuleRef] = {}
    chains: list[str] = []
    rules: list[str] = []
    by_tier: dict[str, list[PolicyFacts]] = {}
    for pol in policies:
        facts = pol if isinstance(pol, PolicyFacts) else policy_facts(pol)
        by_tier.setdefault(facts.tier, []).append(facts)
    ingress = direction == "ingress"
    passed = False
    for tier in sorted(by_tier, key=lambda t: tier_sort_key(t, tiers)):
        pols = sorted(by_tier[tier], key=_facts_order)
        tier_pass = any(direction in f.passes for f in pols)
        if tier_pass:
            rules.append(_CLEAR_PASS)
            passed = True
        cond = f"{_NOT_PASSED} " if tier_pass else ""
        for facts in pols:
            chain = facts.ingress_chain if ingress else facts.egress_chain
            chains.append(chain)
            rules.append(f"{cond}jump {chain}")
        _order, action = tier_of(tier, tiers.get(tier))
        if action == "Deny":
            eot = RuleRef(tier, "Tier", "", tier, direction, -1, "end-of-tier-deny")
            rules.append(verdict_rule(cond.strip(), eot, "drop", refs, flow_logs))
            if not tier_pass:  # every packet got its verdict in this tier: nothing after it runs
                return EndpointPlan(tuple(chains), tuple(rules), tuple(refs.items()))
    if passed:
        rules.append(_CLEAR_PASS)
    own = f"kns.{ep.namespace}"
    for name in ep.profiles or (own,):
        doc = profiles.get(name)
        if doc is not None:
            chain = profile_chain(name, direction)
            chains.append(chain)
            rules.append(f"jump {chain}")
        elif name == own:
            if not rules and not flow_logs:
                return None
            allow = RuleRef("", "Profile", "", own, direction, -1, "allow")
            rules.append(verdict_rule("", allow, "accept", refs, flow_logs))
            return EndpointPlan(tuple(chains), tuple(rules), tuple(refs.items()))
    deny = RuleRef("", "Profile", "", "", direction, -1, "no-profile-deny")
    rules.append(verdict_rule("", deny, "drop", refs, flow_logs))
    return EndpointPlan(tuple(chains), tuple(rules), tuple(refs.items()))


@dataclass(frozen=True)
class Program:
    """What the table must hold (the manager renders it): named sets with their members, policy
    chains with their rules, and each local interface's chain per direction (None: no chain, the
    verdict map accepts). ``rule_refs``: every rule id the chains' log statements can carry (plus the
    fail-closed drops'), mapped to what it stands for (the flow reader's lookup)."""

    sets: dict[str, tuple[str, frozenset[str]]]
    chains: dict[str, tuple[str, ...]]
    ingress: dict[str, EndpointPlan | None]
    egress: dict[str, EndpointPlan | None]
    rule_refs: dict[str, RuleRef] = field(default_factory=lambda: dict(FAIL_CLOSED_REFS))


ADDR_TYPE = "ipv4_addr"
PORT_TYPE = "ipv4_addr . inet_proto . inet_service"


NET_TYPE = "ipv4_addr ; flags interval"
ADDR_TYPE6 = "ipv6_addr"
PORT_TYPE6 = "ipv6_addr . inet_proto . inet_service"
NET_TYPE6 = "ipv6_addr ; flags interval"


def addr_set_value(key: SelKey, members: Iterable[EndpointInfo], family: int = 4) -> tuple[str, frozenset[str]]:
    """A selector set's type and elements (of one family): endpoint addresses (s-), or for a Calico
    selector (c-) the collapsed intervals of endpoint addresses and network-set CIDRs
    (non-overlapping, so element deltas apply cleanly to an interval set)."""
    if len(key) == 4:
        nets = [ipaddress.ip_network(ip, strict=False) for e in members for ip in e.ips]
        full = 32 if family == 4 else 128
        merged = ipaddress.collapse_addresses([n for n in nets if n.version == family])  # type: ignore[misc]
        return (NET_TYPE if family == 4 else NET_TYPE6,
                frozenset(str(n.network_address) if n.prefixlen == full else str(n) for n in merged))
    return (ADDR_TYPE if family == 4 else ADDR_TYPE6,
            frozenset(ip for e in members for ip in e.ips if _version(ip) == family))


def port_set_value(members: Iterable[EndpointInfo], name: str, family: int = 4) -> tuple[str, frozenset[str]]:
    return (PORT_TYPE if family == 4 else PORT_TYPE6,
            frozenset(el for e in members for el in port_elements(e, name, family)))


def compile_program(policies: Iterable[AnyPolicy], endpoints: Iterable[EndpointInfo],
                    namespaces: Mapping[str, Mapping[str, str]], node: str, flow_logs: bool = True,
                    tiers: Mapping[str, Tier] | None = None, profiles: Mapping[str, Profile] | None = None) -> Program:
    """From scratch: every local endpoint's policy, the chains and sets that needs. The reference
    the incremental calculator (controller/node/policy.py) must always agree with. ``endpoints``
    holds network sets too (kind "netset"); ``tiers`` and ``profiles`` are the documents by name."""
    eps = list(endpoints)
    pols = list(policies)
    profiles = profiles or {}

    def ns_labels(name: str) -> Mapping[str, str]:
        return namespaces.get(name) or namespace_labels(name, None)

    sets: dict[str, tuple[str, frozenset[str]]] = {}
    chains: dict[str, tuple[str, ...]] = {}
    ingress: dict[str, EndpointPlan | None] = {}
    egress: dict[str, EndpointPlan | None] = {}
    rule_refs: dict[str, RuleRef] = dict(FAIL_CLOSED_REFS)
    local = [e for e in eps if e.node == node and e.interface and e.kind == "wep"]
    for ep in sorted(local, key=lambda e: e.interface):
        for direction, table in (("ingress", ingress), ("egress", egress)):
            chosen = [p for p in pols if direction.capitalize() in policy_types(p)
                      and selkey_matches(target_key(p), ep, ns_labels(ep.namespace))]
            plan = endpoint_plan(ep, direction, chosen, tiers, profiles, flow_logs)
            table[ep.interface] = plan
            rule_refs.update(plan.refs if plan is not None else ())
            sources: dict[str, AnyPolicy | Profile] = {chain_of(p, direction): p for p in chosen}
            sources.update({profile_chain(n, direction): profiles[n]
                            for n in ep.profiles or (f"kns.{ep.namespace}",) if n in profiles})
            for chain, src in sources.items():
                if plan is None or chain not in plan.chains:
                    continue
                refs = Refs()
                chains[chain] = policy_rules(src, direction, refs, flow_logs) if not isinstance(src, Profile) \
                    else calico_rules(src, direction, refs, flow_logs)
                rule_refs.update(refs.rule_refs)
                for key in refs.sets:
                    members = [e for e in eps if selkey_matches(key, e, ns_labels(e.namespace))]
                    for family in (4, 6):
                        sets[set_name(key, family)] = addr_set_value(key, members, family)
                for pkey in refs.ports:
                    owner, pname = pkey
                    pmembers = [e for e in eps if owner is None or selkey_matches(owner, e, ns_labels(e.namespace))]
                    for family in (4, 6):
                        sets[port_set_name(pkey, family)] = port_set_value(pmembers, pname, family)
    return Program(sets, chains, ingress, egress, rule_refs)


# -- rendering -----------------------------------------------------------------------------------


def base_commands(flow_logs: bool = True) -> list[str]:
    """The table, its two verdict maps and its two base chains (fail-closed: a ``tab*`` interface in
    neither map is dropped, logged with its id under flow logging; established/related accepted
    first, unlogged, invalid dropped)."""
    t = f"{FAMILY} {TABLE}"
    out = [
        f"add table {t}",
        f"add map {t} {MAP_INGRESS} {{ type ifname : verdict ; }}",
        f"add map {t} {MAP_EGRESS} {{ type ifname : verdict ; }}",
    ]
    for name, hook_dir, prio, mapname in (("fwd-egress", "iifname", PRIO_EGRESS, MAP_EGRESS),
                                          ("fwd-ingress", "oifname", PRIO_INGRESS, MAP_INGRESS)):
        fail_closed = verdict_rule("", fail_closed_ref(name[4:]), "drop", {}, flow_logs)
        out += [
            f"add chain {t} {name} {{ type filter hook forward priority {prio} ; policy accept ; }}",
            f'add rule {t} {name} {hook_dir} != "{IFACE_PREFIX}*" accept',
            f"add rule {t} {name} ct state established,related accept",
            f"add rule {t} {name} ct state invalid drop",
            f"add rule {t} {name} {hook_dir} vmap @{mapname}",
            f'add rule {t} {name} {fail_closed} comment "fail-closed: workload interface not programmed yet"',
        ]
    return out


def _set_cmd(name: str, typ: str) -> str:
    return f"add set {FAMILY} {TABLE} {name} {{ type {typ} ; }}"


def _elements(op: str, name: str, members: Iterable[str]) -> list[str]:
    members = sorted(members)
    out = []
    for i in range(0, len(members), 1000):
        out.append(f"{op} element {FAMILY} {TABLE} {name} {{ {', '.join(members[i:i + 1000])} }}")
    return out


def _chain_cmds(name: str, rules: Iterable[str], existed: bool) -> list[str]:
    t = f"{FAMILY} {TABLE}"
    out = [f"add chain {t} {name}"]
    if existed:
        out.append(f"flush chain {t} {name}")
    out += [f"add rule {t} {name} {r}" for r in rules]
    return out


def _endpoint_chains(p: Program) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for direction, table in (("ingress", p.ingress), ("egress", p.egress)):
        for iface, plan in table.items():
            if plan is not None:
                out[endpoint_chain(iface, direction)] = plan.rules
    return out


def _verdict(iface: str, direction: str, plan: EndpointPlan | None) -> str:
    return f'"{iface}" : ' + ("accept" if plan is None else f"jump {endpoint_chain(iface, direction)}")


def full_commands(p: Program, flow_logs: bool = True) -> list[str]:
    """The whole table from nothing, as one transaction (delete + re-add: atomic for packets)."""
    t = f"{FAMILY} {TABLE}"
    out = [f"add table {t}", f"delete table {t}", *base_commands(flow_logs)]
    for name, (typ, members) in sorted(p.sets.items()):
        out.append(_set_cmd(name, typ))
        out += _elements("add", name, members)
    for name, rules in sorted(p.chains.items()):
        out += _chain_cmds(name, rules, False)
    for name, rules in sorted(_endpoint_chains(p).items()):
        out += _chain_cmds(name, rules, False)
    for direction, mapname, table in (("ingress", MAP_INGRESS, p.ingress), ("egress", MAP_EGRESS, p.egress)):
        verdicts = [_verdict(i, direction, c) for i, c in sorted(table.items())]
        if verdicts:
            out.append(f"add element {t} {mapname} {{ {', '.join(verdicts)} }}")
    return out


@dataclass
class Touched:
    """The names a batch of updates touched: a delta looks at these only (O(changes), not O(table))."""

    sets: set[str] = field(default_factory=set)
    chains: set[str] = field(default_factory=set)
    ifaces: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.sets or self.chains or self.ifaces)


def _ep_rules(table: Mapping[str, EndpointPlan | None], iface: str) -> tuple[str, ...] | None:
    plan = table.get(iface)
    return None if plan is None else plan.rules


def delta_commands(old: Program, new: Program, touched: Touched | None = None) -> list[str]:
    """The changes from ``old`` (what the kernel holds) to ``new``, in an order one transaction
    accepts: new sets and chains before what references them, removals after. With ``touched``,
    only those names are compared (the caller knows nothing else changed)."""
    t = f"{FAMILY} {TABLE}"
    if touched is None:
        touched = Touched(set(old.sets) | set(new.sets), set(old.chains) | set(new.chains),
                          set(old.ingress) | set(new.ingress) | set(old.egress) | set(new.egress))
    out: list[str] = []
    for name in sorted(touched.sets):
        if name not in new.sets:
            continue
        typ, members = new.sets[name]
        before = old.sets.get(name)
        if before is None:  # a name fixes its type: s- sets hold addresses, n- sets named ports
            out.append(_set_cmd(name, typ))
            out += _elements("add", name, members)
            continue
        out += _elements("delete", name, before[1] - members)
        out += _elements("add", name, members - before[1])
    for name in sorted(touched.chains):
        if name in new.chains and old.chains.get(name) != new.chains[name]:
            out += _chain_cmds(name, new.chains[name], name in old.chains)
    ep_gone: list[str] = []
    for iface in sorted(touched.ifaces):
        for direction, o, n in (("ingress", old.ingress, new.ingress), ("egress", old.egress, new.egress)):
            name = endpoint_chain(iface, direction)
            before, after = _ep_rules(o, iface), _ep_rules(n, iface)
            if after is not None and after != before:
                out += _chain_cmds(name, after, before is not None)
            elif after is None and before is not None:
                ep_gone.append(name)
    for direction, mapname, o, n in (("ingress", MAP_INGRESS, old.ingress, new.ingress),
                                     ("egress", MAP_EGRESS, old.egress, new.egress)):
        for iface in sorted(touched.ifaces):
            if iface in o and (iface not in n or o[iface] != n[iface]):
                out.append(f'delete element {t} {mapname} {{ "{iface}" }}')
            if iface in n and (iface not in o or o[iface] != n[iface]):
                out.append(f"add element {t} {mapname} {{ {_verdict(iface, direction, n[iface])} }}")
    out += [f"delete chain {t} {name}" for name in sorted(ep_gone)]
    out += [f"delete chain {t} {name}" for name in sorted(touched.chains) if name in old.chains
            and name not in new.chains]
    out += [f"delete set {t} {name}" for name in sorted(touched.sets) if name in old.sets and name not in new.sets]
    return out


EMPTY = Program({}, {}, {}, {})

#: An interface's (ingress, egress) plans; None for the pair: the interface is gone.
IfacePlans = tuple[EndpointPlan | None, EndpointPlan | None]


# -- the manager (the dataplane thread) ----------------------------------------------------------


def narrows(cmds: Iterable[str]) -> bool:
    """Can this delta remove an allow? (a set lost members, a chain was rewritten or removed, a
    verdict-map entry was replaced): then established flows must be judged again. A delta that only
    adds set members narrows too when a set it adds to is a :func:`narrowing_refs` one (the manager
    keeps that index: :meth:`PolicyManager.apply`)."""
    return any(c.startswith(("delete element", "flush chain", "delete chain")) for c in cmds)


_SET_REF = re.compile(r"(!=\s*)?@([\w.\-]+)")


def narrowing_refs(rules: Iterable[str]) -> frozenset[str]:
    """The sets these rules reference such that a NEW member can take an allow away: under a negated
    match (``!= @s``), or in a rule whose verdict is not accept (drop, reject, a return to the next
    tier or profile). A set matched only positively by accept rules can only widen what is allowed."""
    out: set[str] = set()
    for rule in rules:
        if "@" not in rule:
            continue
        accept = rule.rstrip().endswith("accept")
        for m in _SET_REF.finditer(rule):
            if m.group(1) or not accept:
                out.add(m.group(2))
    return frozenset(out)


def added_sets(cmds: Iterable[str]) -> set[str]:
    """The named sets (not the verdict maps) that ``add element`` commands of a delta add to."""
    prefix = f"add element {FAMILY} {TABLE} "
    maps = (MAP_INGRESS, MAP_EGRESS)
    return {name for c in cmds if c.startswith(prefix)
            and (name := c[len(prefix):].split(" ", 1)[0]) not in maps}


def removed_addresses(cmds: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """The addresses whose set membership a narrowing delta changed (the first field of each deleted
    or added element: an address, a CIDR, or the address of a named-port element), or None when
    the delta narrows otherwise (a chain rewritten or removed, a verdict replaced). Why: a member
    leaving a set changes the verdict only of packets with that address, so only the flows to or
    from it need judging again, not the node's whole conntrack table."""
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for c in cmds:
        if c.startswith(("flush chain", "delete chain")):
            return None
        if not c.startswith(("delete element", "add element")):
            continue  # (an added member can narrow too: a rule may match `!= @set`)
        if "{" not in c or not c.endswith("}"):
            return None
        for element in c[c.index("{") + 1:-1].split(","):
            first = element.strip().split(" . ", 1)[0].strip()
            try:
                out.append(ipaddress.ip_network(first, strict=False))
            except ValueError:
                return None  # a verdict-map entry (an interface name) or an unknown element
    return out


class PolicyNFTError(RuntimeError):
    """libnftables refused a transaction (or is missing)."""


@dataclass
class PolicyState:
    """The desired program, folded from PolicyUpdate deltas (mutable; the dataplane thread's).

    ``rule_refs`` is kept exact as chains come and go: each chain's ids (``chain_refs`` of an update)
    and each endpoint plan's are reference-counted, since one id (a tier's end-of-tier deny) sits in
    many endpoint chains."""

    sets: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ingress: dict[str, EndpointPlan | None] = field(default_factory=dict)
    egress: dict[str, EndpointPlan | None] = field(default_factory=dict)
    touched: Touched = field(default_factory=Touched)
    rule_refs: dict[str, RuleRef] = field(default_factory=lambda: dict(FAIL_CLOSED_REFS))
    _chain_refs: dict[str, RefItems] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)

    def fold(self, sets: Mapping[str, tuple[str, frozenset[str]] | None],
             chains: Mapping[str, tuple[str, ...] | None],
             interfaces: Mapping[str, IfacePlans | None],
             chain_refs: Mapping[str, RefItems | None] | None = None) -> None:
        self.touched.sets.update(sets)
        self.touched.chains.update(chains)
        self.touched.ifaces.update(interfaces)
        for name, items in (chain_refs or {}).items():
            self._count(self._chain_refs.pop(name, ()), -1)
            if items:
                self._chain_refs[name] = items
                self._count(items, +1)
        for iface, pair in interfaces.items():
            for plan in (self.ingress.get(iface), self.egress.get(iface)):
                self._count(plan.refs if plan is not None else (), -1)
            for plan in pair or ():
                self._count(plan.refs if plan is not None else (), +1)
        _fold_into(self.sets, self.chains, self.ingress, self.egress, sets, chains, interfaces)

    def _count(self, items: RefItems, delta: int) -> None:
        for rid, ref in items:
            n = self._counts.get(rid, 0) + delta
            if n > 0:
                self._counts[rid] = n
                self.rule_refs[rid] = ref
            else:
                self._counts.pop(rid, None)
                if rid not in FAIL_CLOSED_REFS:
                    self.rule_refs.pop(rid, None)

    def view(self) -> Program:
        """The desired program, without copying (read it before the next fold)."""
        return Program(self.sets, self.chains, self.ingress, self.egress, self.rule_refs)

    def take_touched(self) -> Touched:
        touched, self.touched = self.touched, Touched()
        return touched


def _fold_into(out_sets: dict[str, tuple[str, frozenset[str]]], out_chains: dict[str, tuple[str, ...]],
               out_in: dict[str, EndpointPlan | None], out_eg: dict[str, EndpointPlan | None],
               sets: Mapping[str, tuple[str, frozenset[str]] | None],
               chains: Mapping[str, tuple[str, ...] | None],
               interfaces: Mapping[str, IfacePlans | None]) -> None:
    for name, value in sets.items():
        if value is None:
            out_sets.pop(name, None)
        else:
            out_sets[name] = value
    for name, rules in chains.items():
        if rules is None:
            out_chains.pop(name, None)
        else:
            out_chains[name] = rules
    for iface, pair in interfaces.items():
        if pair is None:
            out_in.pop(iface, None)
            out_eg.pop(iface, None)
        else:
            out_in[iface], out_eg[iface] = pair


class PolicyManager:
    """Owns ``inet tabby-policy`` in one namespace, through libnftables in-process (one ctypes call
    per transaction instead of an ``nft`` process start; the context's netlink socket is opened in
    the node's namespace once and stays bound to it).

    :meth:`apply` writes the delta from what it last wrote (set members as element adds/deletes,
    only changed chains rewritten), one transaction; the table is never read back. :meth:`resync`
    rebuilds the whole table in one transaction (delete + re-add: atomic for packets, so an agent
    restart or a hand edit never opens a window). Nothing is flushed on shutdown."""

    def __init__(self, netns: str | None, flow_logs: bool = True) -> None:
        try:
            import nftables  # Debian python3-nftables (a ctypes binding of libnftables)
        except ImportError as exc:
            raise PolicyNFTError(f"python3-nftables is not installed: {exc}") from exc
        from felix_like.netns import run_in_netns

        self.netns = netns
        self.flow_logs = flow_logs  # the fail-closed drops' log statements (the calculator renders the rest)
        self._nft = run_in_netns(netns, nftables.Nftables)
        self._applied: Program | None = None
        self.transactions = 0
        #: Set-member deltas over raw nf_tables netlink (None: always libnftables).
        self.elements: ElementWriter | None = None
        try:
            self.elements = ElementWriter(netns)
        except OSError as exc:
            log.warning("policy.element_writer_unavailable", netns=netns, error=str(exc))
        #: Cuts the established flows a narrowing change no longer allows (felix_like.conntrack);
        #: None when conntrack is unavailable (then only new connections see a new deny).
        self.cutter: ConntrackCutter | None = None
        self._cuts: CutWorker | None = None  # started at the first narrowing change
        #: full rebuilds made (by resync, or by apply when the kernel's state was unknown): the
        #: table's handle changes with each
        self.rebuilds = 0
        self.last_resync_s: tuple[float, float] = (0.0, 0.0)  # (render, transaction) of the last rebuild
        #: chain -> the sets it references narrowingly (:func:`narrowing_refs`), and how many chains
        #: do so per set: built at the first add-only delta after a rebuild, then kept per touched chain
        self._narrowing: dict[str, frozenset[str]] | None = None
        self._narrowing_count: collections.Counter[str] = collections.Counter()
        try:
            self.cutter = ConntrackCutter(netns)
        except Exception as exc:  # enforcement must not depend on it
            log.warning("policy.conntrack_cutter_unavailable", netns=netns, error=str(exc))

    def _run(self, cmds: list[str]) -> None:
        if not cmds:
            return
        rc, _out, err = self._nft.cmd("\n".join(cmds))
        self.transactions += 1
        if rc != 0:
            self._applied = None  # unknown state: the next apply rebuilds
            raise PolicyNFTError(f"nft transaction refused: {err.strip()}")

    def _elements_only(self, cmds: list[str], program: Program) -> bool:
        """A delta of set-member changes only goes straight over netlink (felix_like.nft_elements:
        libnftables would first cache every set of the table). False: not such a delta."""
        if self.elements is None or not cmds:
            return False
        try:
            done = self.elements.apply(cmds, {n: t for n, (t, _m) in program.sets.items()}, TABLE)
        except OSError as exc:
            self._applied = None  # unknown state: the next apply rebuilds
            raise PolicyNFTError(str(exc)) from exc
        if done:
            self.transactions += 1
        return done

    def resync(self, program: Program) -> int:
        """The whole table, one transaction. Returns the number of commands. ``last_resync_s`` holds
        how long rendering the commands and the transaction (libnftables parse + kernel commit) took."""
        t0 = time.perf_counter()
        cmds = full_commands(program, self.flow_logs)
        t1 = time.perf_counter()
        self._run(cmds)
        self.last_resync_s = (round(t1 - t0, 4), round(time.perf_counter() - t1, 4))
        self.rebuilds += 1
        self._applied = Program(dict(program.sets), dict(program.chains), dict(program.ingress),
                                dict(program.egress), {})
        self._narrowing = None  # rebuilt only when an add-only delta needs it (not on the cold start)
        return len(cmds)

    def _adds_narrow(self, cmds: list[str], program: Program, touched: Touched) -> bool:
        """Whether the delta adds a member to a set some rule uses under a Deny or a negated match."""
        if self._narrowing is None:
            self._narrowing, self._narrowing_count = {}, collections.Counter()
            self._index_narrowing(program, program.chains)
        return any(self._narrowing_count[name] for name in added_sets(cmds))

    def _index_narrowing(self, program: Program, chains: Iterable[str]) -> None:
        assert self._narrowing is not None
        for chain in chains:
            old = self._narrowing.pop(chain, frozenset())
            self._narrowing_count.subtract(old)
            rules = program.chains.get(chain)
            new = narrowing_refs(rules) if rules is not None else frozenset()
            if new:
                self._narrowing[chain] = new
                self._narrowing_count.update(new)

    def apply(self, program: Program, touched: Touched) -> int:
        """The changes of the ``touched`` names since the last write, one transaction (a rebuild when
        the kernel's state is unknown). O(changes): only the touched names are compared and copied."""
        if self._applied is None:
            return self.resync(program)
        applied = self._applied
        cmds = delta_commands(applied, program, touched)
        if not self._elements_only(cmds, program):
            self._run(cmds)
        if self.cutter is not None and self._narrowing is not None and touched.chains:
            self._index_narrowing(program, touched.chains)  # keep the index current once it exists
        if self.cutter is not None and (narrows(cmds) or self._adds_narrow(cmds, program, touched)):
            if self._cuts is None:
                self._cuts = CutWorker(self.cutter)
            # a snapshot (shallow copies of dicts with immutable values: a few ms at 60,000 entries):
            # the worker judges the program as applied, never one the dataplane thread is folding into
            self._cuts.request(removed_addresses(cmds), Program(
                dict(program.sets), dict(program.chains), dict(program.ingress), dict(program.egress),
                dict(program.rule_refs)))
        _fold_into(applied.sets, applied.chains, applied.ingress, applied.egress,
                   {n: program.sets.get(n) for n in touched.sets},
                   {n: program.chains.get(n) for n in touched.chains},
                   {i: (program.ingress.get(i), program.egress.get(i)) if i in program.ingress else None
                    for i in touched.ifaces})
        return len(cmds)
