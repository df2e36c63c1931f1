"""Kubernetes NetworkPolicy -> an nftables program: the pure compiler (no I/O, no root).

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

IPv4 only this round: IPv6 pod addresses are in no set, so an isolated endpoint's IPv6 traffic is
allowed only by rules without peers (fail-closed, never fail-open).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from datamodel.resources.kubernetes import (
    LabelSelector,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    namespace_labels,
)
from datamodel.selector import parse_selector

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

# (namespace or None for every namespace, pod selector, namespace selector or None)
SelKey = tuple[str | None, str, str | None]
# (the selector of the pods whose named port it is, or None for every pod; port name)
PortKey = tuple[SelKey | None, str]


@dataclass(frozen=True)
class EndpointInfo:
    """A WorkloadEndpoint as policy cares: where it is, its labels, IPv4 addresses, named ports."""

    key: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    ips: tuple[str, ...]
    ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, port)
    node: str = ""
    interface: str = ""
    container_id: str = ""

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def _hash(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def set_name(key: SelKey) -> str:
    return "s-" + _hash("sel", key)


def port_set_name(key: PortKey) -> str:
    return "n-" + _hash("port", key)


def policy_chain(namespace: str, name: str, direction: str) -> str:
    return f"p-{_hash('pol', namespace, name)}-{direction[0]}"


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


def target_key(policy: NetworkPolicy) -> SelKey:
    return (policy.namespace or "default", _sel(policy.spec.podSelector), None)


def selkey_matches(key: SelKey, ep: EndpointInfo, ns_labels: Mapping[str, str]) -> bool:
    ns, pods, nss = key
    if ns is not None and ep.namespace != ns:
        return False
    if nss is not None and not parse_selector(nss).matches(ns_labels):
        return False
    return parse_selector(pods).matches(ep.label_map)


def port_elements(ep: EndpointInfo, name: str) -> set[str]:
    return {f"{ip} . {proto.lower()} . {port}" for ip in ep.ips for (n, proto, port) in ep.ports if n == name}


# -- rules ---------------------------------------------------------------------------------------


@dataclass
class Refs:
    """The sets a policy's chains reference."""

    sets: set[SelKey] = field(default_factory=set)
    ports: set[PortKey] = field(default_factory=set)


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


def _port(port: NetworkPolicyPort | None, named_set: str | None) -> str:
    if port is None:
        return ""
    proto = port.protocol.lower()
    if isinstance(port.port, str):
        assert named_set is not None
        return f"ip daddr . meta l4proto . th dport @{named_set}"
    if port.port is None:
        return f"meta l4proto {proto}"
    if port.endPort is not None and port.endPort != port.port:
        return f"meta l4proto {proto} th dport {port.port}-{port.endPort}"
    return f"meta l4proto {proto} th dport {port.port}"


def policy_rules(policy: NetworkPolicy, direction: str, refs: Refs | None = None) -> tuple[str, ...]:
    """The rules of one policy's chain for ``direction`` ("ingress"/"egress"): any rule, any peer of
    it and any port of it allows (accept); no match falls back to the endpoint chain's drop."""
    refs = refs if refs is not None else Refs()
    ns = policy.namespace or "default"
    rules = policy.spec.ingress if direction == "ingress" else policy.spec.egress
    side = "saddr" if direction == "ingress" else "daddr"
    out: list[str] = []
    for rule in rules or []:
        peers: list[NetworkPolicyPeer | None] = list(
            (rule.from_ if direction == "ingress" else rule.to) or []) or [None]  # type: ignore[union-attr]
        ports: list[NetworkPolicyPort | None] = list(rule.ports or []) or [None]
        for peer in peers:
            if peer is None:
                addr, key = "", None
            elif peer.ipBlock is not None:
                addr, key = _ipblock(peer, side), None
            else:
                key = peer_key(ns, peer)
                refs.sets.add(key)
                addr = f"ip {side} @{set_name(key)}"
            for port in ports:
                named = None
                if port is not None and isinstance(port.port, str):
                    # the named port is the destination pod's: the policy's own pods on ingress,
                    # the peer's pods on egress (every pod for an ipBlock or no peer)
                    owner = target_key(policy) if direction == "ingress" else key
                    pkey: PortKey = (owner, port.port)
                    refs.ports.add(pkey)
                    named = port_set_name(pkey)
                    # on egress the named-port set already holds the peer's addresses
                    addr_part = "" if direction == "egress" and key is not None else addr
                else:
                    addr_part = addr
                match = " ".join(p for p in (addr_part, _port(port, named)) if p)
                out.append(f"{match} accept" if match else "accept")
    return tuple(out)


def policy_refs(policy: NetworkPolicy) -> Refs:
    refs = Refs()
    for direction in ("ingress", "egress"):
        if direction.capitalize() in (policy.spec.policyTypes or []):
            policy_rules(policy, direction, refs)
    return refs


# -- the whole program ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """What the table must hold (the manager renders it): named sets with their members, policy
    chains with their rules, and each local interface's policy chains per direction (None: not
    isolated in that direction, the verdict map accepts)."""

    sets: dict[str, tuple[str, frozenset[str]]]
    chains: dict[str, tuple[str, ...]]
    ingress: dict[str, tuple[str, ...] | None]
    egress: dict[str, tuple[str, ...] | None]


ADDR_TYPE = "ipv4_addr"
PORT_TYPE = "ipv4_addr . inet_proto . inet_service"


def compile_program(policies: Iterable[NetworkPolicy], endpoints: Iterable[EndpointInfo],
                    namespaces: Mapping[str, Mapping[str, str]], node: str) -> Program:
    """From scratch: every local endpoint's policy, the chains and sets that needs. The reference
    the incremental calculator (controller/node/policy.py) must always agree with."""
    eps = list(endpoints)
    pols = sorted(policies, key=lambda p: (p.namespace or "", p.name))

    def ns_labels(name: str) -> Mapping[str, str]:
        return namespaces.get(name) or namespace_labels(name, None)

    sets: dict[str, tuple[str, frozenset[str]]] = {}
    chains: dict[str, tuple[str, ...]] = {}
    ingress: dict[str, tuple[str, ...] | None] = {}
    egress: dict[str, tuple[str, ...] | None] = {}
    local = [e for e in eps if e.node == node and e.interface]
    for ep in sorted(local, key=lambda e: e.interface):
        for direction, table in (("ingress", ingress), ("egress", egress)):
            chosen = [p for p in pols if direction.capitalize() in (p.spec.policyTypes or [])
                      and selkey_matches(target_key(p), ep, ns_labels(ep.namespace))]
            table[ep.interface] = tuple(policy_chain(p.namespace or "", p.name, direction) for p in chosen) \
                if chosen else None
            for p in chosen:
                refs = Refs()
                chains[policy_chain(p.namespace or "", p.name, direction)] = policy_rules(p, direction, refs)
                for key in refs.sets:
                    members = frozenset(ip for e in eps if selkey_matches(key, e, ns_labels(e.namespace))
                                        for ip in e.ips)
                    sets[set_name(key)] = (ADDR_TYPE, members)
                for pkey in refs.ports:
                    owner, pname = pkey
                    members = frozenset(el for e in eps
                                        if owner is None or selkey_matches(owner, e, ns_labels(e.namespace))
                                        for el in port_elements(e, pname))
                    sets[port_set_name(pkey)] = (PORT_TYPE, members)
    return Program(sets, chains, ingress, egress)


# -- rendering -----------------------------------------------------------------------------------


def base_commands() -> list[str]:
    """The table, its two verdict maps and its two base chains (fail-closed: a ``tab*`` interface in
    neither map is dropped; established/related accepted first, invalid dropped)."""
    t = f"{FAMILY} {TABLE}"
    out = [
        f"add table {t}",
        f"add map {t} {MAP_INGRESS} {{ type ifname : verdict ; }}",
        f"add map {t} {MAP_EGRESS} {{ type ifname : verdict ; }}",
    ]
    for name, hook_dir, prio, mapname in (("fwd-egress", "iifname", PRIO_EGRESS, MAP_EGRESS),
                                          ("fwd-ingress", "oifname", PRIO_INGRESS, MAP_INGRESS)):
        out += [
            f"add chain {t} {name} {{ type filter hook forward priority {prio} ; policy accept ; }}",
            f'add rule {t} {name} {hook_dir} != "{IFACE_PREFIX}*" accept',
            f"add rule {t} {name} ct state established,related accept",
            f"add rule {t} {name} ct state invalid drop",
            f"add rule {t} {name} {hook_dir} vmap @{mapname}",
            f'add rule {t} {name} drop comment "fail-closed: workload interface not programmed yet"',
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
        for iface, chains in table.items():
            if chains is not None:
                out[endpoint_chain(iface, direction)] = (*(f"jump {c}" for c in chains), "drop")
    return out


def _verdict(iface: str, direction: str, chains: tuple[str, ...] | None) -> str:
    return f'"{iface}" : ' + ("accept" if chains is None else f"jump {endpoint_chain(iface, direction)}")


def full_commands(p: Program) -> list[str]:
    """The whole table from nothing, as one transaction (delete + re-add: atomic for packets)."""
    t = f"{FAMILY} {TABLE}"
    out = [f"add table {t}", f"delete table {t}", *base_commands()]
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


def _ep_rules(table: Mapping[str, tuple[str, ...] | None], iface: str) -> tuple[str, ...] | None:
    chains = table.get(iface)
    return None if chains is None else (*(f"jump {c}" for c in chains), "drop")


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


# -- the manager (the dataplane thread) ----------------------------------------------------------


class PolicyNFTError(RuntimeError):
    """libnftables refused a transaction (or is missing)."""


@dataclass
class PolicyState:
    """The desired program, folded from PolicyUpdate deltas (mutable; the dataplane thread's)."""

    sets: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ingress: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    egress: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    touched: Touched = field(default_factory=Touched)

    def fold(self, sets: Mapping[str, tuple[str, frozenset[str]] | None],
             chains: Mapping[str, tuple[str, ...] | None],
             interfaces: Mapping[str, tuple[tuple[str, ...] | None, tuple[str, ...] | None] | None]) -> None:
        self.touched.sets.update(sets)
        self.touched.chains.update(chains)
        self.touched.ifaces.update(interfaces)
        _fold_into(self.sets, self.chains, self.ingress, self.egress, sets, chains, interfaces)

    def view(self) -> Program:
        """The desired program, without copying (read it before the next fold)."""
        return Program(self.sets, self.chains, self.ingress, self.egress)

    def take_touched(self) -> Touched:
        touched, self.touched = self.touched, Touched()
        return touched


def _fold_into(out_sets: dict[str, tuple[str, frozenset[str]]], out_chains: dict[str, tuple[str, ...]],
               out_in: dict[str, tuple[str, ...] | None], out_eg: dict[str, tuple[str, ...] | None],
               sets: Mapping[str, tuple[str, frozenset[str]] | None],
               chains: Mapping[str, tuple[str, ...] | None],
               interfaces: Mapping[str, tuple[tuple[str, ...] | None, tuple[str, ...] | None] | None]) -> None:
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

    def __init__(self, netns: str | None) -> None:
        try:
            import nftables  # Debian python3-nftables (a ctypes binding of libnftables)
        except ImportError as exc:
            raise PolicyNFTError(f"python3-nftables is not installed: {exc}") from exc
        from felix_like.netns import run_in_netns

        self.netns = netns
        self._nft = run_in_netns(netns, nftables.Nftables)
        self._applied: Program | None = None
        self.transactions = 0

    def _run(self, cmds: list[str]) -> None:
        if not cmds:
            return
        rc, _out, err = self._nft.cmd("\n".join(cmds))
        self.transactions += 1
        if rc != 0:
            self._applied = None  # unknown state: the next apply rebuilds
            raise PolicyNFTError(f"nft transaction refused: {err.strip()}")

    def resync(self, program: Program) -> int:
        """The whole table, one transaction. Returns the number of commands."""
        cmds = full_commands(program)
        self._run(cmds)
        self._applied = Program(dict(program.sets), dict(program.chains), dict(program.ingress),
                                dict(program.egress))
        return len(cmds)

    def apply(self, program: Program, touched: Touched) -> int:
        """The changes of the ``touched`` names since the last write, one transaction (a rebuild when
        the kernel's state is unknown). O(changes): only the touched names are compared and copied."""
        if self._applied is None:
            return self.resync(program)
        applied = self._applied
        cmds = delta_commands(applied, program, touched)
        self._run(cmds)
        _fold_into(applied.sets, applied.chains, applied.ingress, applied.egress,
                   {n: program.sets.get(n) for n in touched.sets},
                   {n: program.chains.get(n) for n in touched.chains},
                   {i: (program.ingress.get(i), program.egress.get(i)) if i in program.ingress else None
                    for i in touched.ifaces})
        return len(cmds)
