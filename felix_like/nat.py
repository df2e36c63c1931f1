"""NAT outgoing (IPPool.natOutgoing) on nftables, in tables Tabby owns and nobody else writes.

Calico's rule: traffic *from* a pool with natOutgoing *to* a destination outside every pool is
masqueraded to the node's address; pod-to-pod traffic (any pool, any node) keeps its source.
Tabby writes it as, per address family,

    table ip tabby-nat {                       # ip6: table ip6 tabby-nat6, ipv6_addr sets
        set pools      { type ipv4_addr; flags interval; elements = { every pool CIDR } }
        set masq-pools { type ipv4_addr; flags interval; elements = { natOutgoing pools } }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr @masq-pools ip daddr != @pools masquerade fully-random comment "tabby natOutgoing"
        }
    }

Why two single-family tables rather than one ``inet`` table: the sets keep the plain names
``pools`` and ``masq-pools`` in each family (an ``inet`` table needs typed sets per family
anyway), and ``ip``/``ip6`` nat chains work on every kernel nftables NAT works on (``inet`` nat
needs 5.2). ``fully-random`` is Calico's ``--random-fully``: source ports are picked at random,
avoiding the SNAT port-collision races of sequential allocation.

Why sets: a pool change is then a set element add/delete, one tiny transaction that never
rewrites (or briefly removes) the rule. Only when the table's structure differs from the above
(first start, an upgrade, a hand edit) is the table rebuilt: ``flush table`` plus deleting and
re-adding its chains and sets, all in ONE JSON transaction (libnftables in-process,
:mod:`felix_like.nft_context`), so packets see either the old or the new ruleset, never none. Other
tables are never read for decisions nor written; the tables are never deleted, not even on shutdown
(pods keep their NAT while the agent restarts).
Disabled pools stay in both sets: they stop allocation, not the traffic of pods already there.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from felix_like.nft_context import NftContext, NftUnavailable

log = structlog.get_logger("tabby.felix_like.nat")

TABLES = {4: ("ip", "tabby-nat"), 6: ("ip6", "tabby-nat6")}
SET_POOLS = "pools"
SET_MASQ = "masq-pools"
CHAIN = "postrouting"
RULE_COMMENT = "tabby natOutgoing"
#: ``priority srcnat``
NAT_PRIORITY = 100


@dataclass(frozen=True)
class NATPool:
    """An IPPool as NAT outgoing cares: its CIDR and natOutgoing (disabled pools still count)."""

    cidr: str
    nat_outgoing: bool = False


@dataclass(frozen=True)
class FamilySets:
    """Desired (or found) elements of the two sets of one family, as canonical CIDR strings."""

    pools: frozenset[str] = frozenset()
    masq: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NATDesired:
    """Desired set contents for IPv4 and IPv6."""

    v4: FamilySets
    v6: FamilySets

    def family(self, version: int) -> FamilySets:
        return self.v4 if version == 4 else self.v6


def calculate_nat(pools: Iterable[NATPool]) -> NATDesired:
    """The sets' contents from the pools. Pure; CIDRs are normalised (host bits masked)."""
    out: dict[int, tuple[set[str], set[str]]] = {4: (set(), set()), 6: (set(), set())}
    for pool in pools:
        net = ipaddress.ip_network(pool.cidr, strict=False)
        all_set, masq_set = out[net.version]
        all_set.add(str(net))
        if pool.nat_outgoing:
            masq_set.add(str(net))
    return NATDesired(
        FamilySets(frozenset(out[4][0]), frozenset(out[4][1])),
        FamilySets(frozenset(out[6][0]), frozenset(out[6][1])),
    )


def _sorted_cidrs(cidrs: Iterable[str]) -> list[str]:
    return sorted(cidrs, key=lambda c: ipaddress.ip_network(c))


def rule_expr(version: int) -> list[dict]:
    """The rule's expression in nft JSON, in the form ``nft -j list`` prints it (so it compares equal)."""
    proto = "ip" if version == 4 else "ip6"
    return [
        {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}}, "right": f"@{SET_MASQ}"}},
        {"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "daddr"}}, "right": f"@{SET_POOLS}"}},
        {"masquerade": {"flags": "fully-random"}},
    ]


def _elem(cidr: str) -> dict:
    net = ipaddress.ip_network(cidr)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _set_type(version: int) -> str:
    return "ipv4_addr" if version == 4 else "ipv6_addr"


def _element_cmd(op: str, version: int, set_name: str, cidrs: Iterable[str]) -> dict:
    family, table = TABLES[version]
    elems = [_elem(c) for c in _sorted_cidrs(cidrs)]
    return {op: {"element": {"family": family, "table": table, "name": set_name, "elem": elems}}}


@dataclass(frozen=True)
class TableState:
    """What ``nft -j list table`` shows of one of our tables, reduced to what Tabby compares."""

    sets: dict[str, tuple[str, tuple[str, ...], frozenset[str] | None]] = field(default_factory=dict)
    chains: dict[str, tuple[str | None, str | None, int | None, str | None]] = field(default_factory=dict)
    rules: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)

    def elements(self, set_name: str) -> frozenset[str]:
        entry = self.sets.get(set_name)
        return entry[2] or frozenset() if entry else frozenset()


def _canonical_elem(elem: object) -> str | None:
    """A set element from nft JSON as a CIDR string; None for forms Tabby never writes (ranges, ...)."""
    if isinstance(elem, dict) and "elem" in elem:  # element with options (timeout, comment)
        elem = elem["elem"].get("val")
    if isinstance(elem, str):
        try:
            return str(ipaddress.ip_network(elem))
        except ValueError:
            return None
    if isinstance(elem, dict) and "prefix" in elem:
        prefix = elem["prefix"]
        try:
            return str(ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}"))
        except (KeyError, ValueError):
            return None
    return None


def _canonical_expr(expr: list) -> str:
    """A rule expression as comparable text; masquerade flags print as a string or a list."""
    norm = []
    for stmt in expr:
        if isinstance(stmt, dict) and "masquerade" in stmt and isinstance(stmt["masquerade"], dict):
            flags = stmt["masquerade"].get("flags")
            if isinstance(flags, list) and len(flags) == 1:
                stmt = {"masquerade": {**stmt["masquerade"], "flags": flags[0]}}
        norm.append(stmt)
    return json.dumps(norm, sort_keys=True)


def parse_table(listing: dict) -> TableState:
    """Reduce ``nft -j list table`` output to a :class:`TableState`."""
    state = TableState()
    for item in listing.get("nftables", []):
        if "set" in item:
            s = item["set"]
            elems: set[str] = set()
            broken = False
            for e in s.get("elem", []):
                cidr = _canonical_elem(e)
                if cidr is None:
                    broken = True
                else:
                    elems.add(cidr)
            flags = s.get("flags", [])
            flags = tuple(sorted([flags] if isinstance(flags, str) else flags))
            state.sets[s["name"]] = (s.get("type"), flags, None if broken else frozenset(elems))
        elif "chain" in item:
            c = item["chain"]
            state.chains[c["name"]] = (c.get("type"), c.get("hook"), c.get("prio"), c.get("policy"))
            state.rules.setdefault(c["name"], [])
        elif "rule" in item:
            r = item["rule"]
            state.rules.setdefault(r["chain"], []).append((_canonical_expr(r.get("expr", [])), r.get("comment")))
    return state


def structure_ok(state: TableState | None, version: int) -> bool:
    """True when the table has exactly Tabby's sets, chain and rule (elements aside)."""
    if state is None:
        return False
    want_set = (_set_type(version), ("interval",))
    if set(state.sets) != {SET_POOLS, SET_MASQ}:
        return False
    for entry in state.sets.values():
        if entry[:2] != want_set or entry[2] is None:
            return False
    if state.chains != {CHAIN: ("nat", "postrouting", NAT_PRIORITY, "accept")}:
        return False
    return state.rules.get(CHAIN) == [(_canonical_expr(rule_expr(version)), RULE_COMMENT)]


def rebuild_commands(version: int, sets: FamilySets, existing: TableState | None) -> list[dict]:
    """One family's full rebuild: ensure table, flush it, drop its chains and sets, add everything back."""
    family, table = TABLES[version]
    tref = {"family": family, "name": table}
    cmds: list[dict] = [{"add": {"table": dict(tref)}}, {"flush": {"table": dict(tref)}}]
    if existing is not None:
        for chain in sorted(existing.chains):
            cmds.append({"delete": {"chain": {"family": family, "table": table, "name": chain}}})
        for set_name in sorted(existing.sets):
            cmds.append({"delete": {"set": {"family": family, "table": table, "name": set_name}}})
    for set_name in (SET_POOLS, SET_MASQ):
        cmds.append(
            {
                "add": {
                    "set": {
                        "family": family,
                        "table": table,
                        "name": set_name,
                        "type": _set_type(version),
                        "flags": ["interval"],
                    }
                }
            }
        )
    cmds.append(
        {
            "add": {
                "chain": {
                    "family": family,
                    "table": table,
                    "name": CHAIN,
                    "type": "nat",
                    "hook": "postrouting",
                    "prio": NAT_PRIORITY,
                    "policy": "accept",
                }
            }
        }
    )
    cmds.append(
        {
            "add": {
                "rule": {
                    "family": family,
                    "table": table,
                    "chain": CHAIN,
                    "comment": RULE_COMMENT,
                    "expr": rule_expr(version),
                }
            }
        }
    )
    if sets.pools:
        cmds.append(_element_cmd("add", version, SET_POOLS, sets.pools))
    if sets.masq:
        cmds.append(_element_cmd("add", version, SET_MASQ, sets.masq))
    return cmds


def element_commands(version: int, sets: FamilySets, existing: TableState) -> list[dict]:
    """Set element changes only (deletes first: interval sets refuse an overlapping add)."""
    cmds: list[dict] = []
    for set_name, want in ((SET_POOLS, sets.pools), (SET_MASQ, sets.masq)):
        gone = existing.elements(set_name) - want
        if gone:
            cmds.append(_element_cmd("delete", version, set_name, gone))
    for set_name, want in ((SET_POOLS, sets.pools), (SET_MASQ, sets.masq)):
        new = want - existing.elements(set_name)
        if new:
            cmds.append(_element_cmd("add", version, set_name, new))
    return cmds


def plan(desired: NATDesired, existing: dict[int, TableState | None]) -> tuple[list[dict], dict[int, str]]:
    """All commands for one apply (one transaction) and what each family needs: noop, elements or rebuild."""
    cmds: list[dict] = []
    kinds: dict[int, str] = {}
    for version in (4, 6):
        state = existing.get(version)
        sets = desired.family(version)
        if not structure_ok(state, version):
            kinds[version] = "rebuild"
            cmds.extend(rebuild_commands(version, sets, state))
            continue
        assert state is not None
        family_cmds = element_commands(version, sets, state)
        kinds[version] = "elements" if family_cmds else "noop"
        cmds.extend(family_cmds)
    return cmds, kinds


def ruleset_text(desired: NATDesired) -> str:
    """The tables in ``nft -f`` syntax, for docs, logs and humans comparing with ``nft list ruleset``."""
    parts = []
    for version in (4, 6):
        family, table = TABLES[version]
        proto = "ip" if version == 4 else "ip6"
        sets = desired.family(version)
        lines = [f"table {family} {table} {{"]
        for set_name, elems in ((SET_POOLS, sets.pools), (SET_MASQ, sets.masq)):
            lines += [f"\tset {set_name} {{", f"\t\ttype {_set_type(version)}", "\t\tflags interval"]
            if elems:
                lines.append(f"\t\telements = {{ {', '.join(_sorted_cidrs(elems))} }}")
            lines.append("\t}")
        lines += [
            f"\tchain {CHAIN} {{",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            f"\t\t{proto} saddr @{SET_MASQ} {proto} daddr != @{SET_POOLS} masquerade fully-random"
            f' comment "{RULE_COMMENT}"',
            "\t}",
            "}",
        ]
        parts.append("\n".join(lines))
    return "\n".join(parts) + "\n"


@dataclass
class NATResult:
    """What one apply did: per-family kind (noop / elements / rebuild), elements added/removed, error."""

    kinds: dict[int, str] = field(default_factory=dict)
    added: int = 0
    removed: int = 0
    transactions: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def kind(self) -> str:
        """The heaviest thing done: rebuild > elements > noop."""
        for kind in ("rebuild", "elements"):
            if kind in self.kinds.values():
                return kind
        return "noop"


class NFTError(RuntimeError):
    """``nft`` failed (missing binary, refused transaction, timeout)."""


class NATManager:
    """Keeps Tabby's NAT tables in one namespace equal to :func:`calculate_nat` of the pools.

    Reads the two tables on every apply (so hand edits and restarts are repaired), writes at
    most one transaction, and none when nothing differs.
    """

    def __init__(self, netns: str | None = None, nft: NftContext | None = None):
        self.netns = netns
        self.nft = nft or NftContext(netns)  # in-process: our commits are not "foreign" to the policy monitor
        self.transactions = 0
        self._log = log.bind(netns=netns or "")

    def read(self) -> dict[int, TableState | None]:
        """Our two tables as the kernel has them (None: table absent)."""
        out: dict[int, TableState | None] = {}
        for version, (family, table) in TABLES.items():
            try:
                rc, listing, err = self.nft.list_json(f"table {family} {table}")
            except NftUnavailable as exc:
                raise NFTError(str(exc)) from exc
            if rc != 0:
                if "No such file or directory" in err:
                    out[version] = None
                    continue
                raise NFTError(f"nft list table {family} {table}: {err.strip()}")
            out[version] = parse_table(listing)
        return out

    def transact(self, cmds: list[dict]) -> None:
        """Run ``cmds`` as one nft transaction (all or nothing)."""
        try:
            rc, err = self.nft.transact(cmds)
        except NftUnavailable as exc:
            raise NFTError(str(exc)) from exc
        self.transactions += 1
        if rc != 0:
            raise NFTError(f"nft transaction refused: {err.strip()}")

    def apply(self, pools: Iterable[NATPool]) -> NATResult:
        """Make the tables match ``pools``. Never raises for nft trouble: see ``error``."""
        desired = calculate_nat(pools)
        result = NATResult()
        try:
            existing = self.read()
            cmds, result.kinds = plan(desired, existing)
            for version in (4, 6):
                state = existing.get(version)
                sets = desired.family(version)
                if result.kinds[version] == "rebuild":
                    result.added += len(sets.pools) + len(sets.masq)
                elif state is not None:
                    for set_name, want in ((SET_POOLS, sets.pools), (SET_MASQ, sets.masq)):
                        result.added += len(want - state.elements(set_name))
                        result.removed += len(state.elements(set_name) - want)
            if cmds:
                self.transact(cmds)
                result.transactions = 1
        except (NFTError, ValueError) as exc:
            result.error = str(exc)
            self._log.error("nat.failed", error=result.error)
            return result
        self._log.info(
            "nat.applied",
            kind=result.kind,
            v4=result.kinds.get(4),
            v6=result.kinds.get(6),
            added=result.added,
            removed=result.removed,
            pools=len(desired.v4.pools) + len(desired.v6.pools),
            masq_pools=len(desired.v4.masq) + len(desired.v6.masq),
        )
        return result
