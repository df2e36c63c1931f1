"""Evaluate a connection against a compiled policy program, without sending traffic.

Why evaluate the compiled program (felix_like.policy.Program: the chains' nft rule texts, the
sets' members, each interface's endpoint plan) rather than the policy resources: ``tabbyctl policy
explain`` must answer what the dataplane would do, and the dataplane runs exactly these rules.
Re-deriving the answer from the resources would be a second implementation of the semantics that
could disagree with the compiler; walking its output cannot (short of this walker misreading a
rule, and it refuses any rule text it does not fully understand instead of guessing).

The walk is netfilter's: an interface's endpoint chain, ``jump`` into policy chains, the first
``accept`` or ``drop`` ends the base chain; the last ``log prefix "tabby:<id>"`` before a verdict
names the deciding rule (the compiler puts the id of every verdict there). Egress is evaluated in
the source pod's node program, ingress in the destination pod's.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from felix_like.policy import Program

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}


class EvalError(ValueError):
    """A rule text the walker does not understand (it refuses rather than guesses)."""


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection: what the rules match on."""

    src: str
    dst: str
    protocol: str = "tcp"
    dport: int | None = None
    sport: int = 40000
    icmp_type: int | None = 8  # echo request
    icmp_code: int | None = 0

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.src).version


@dataclass
class Verdict:
    """Where the walk ended: accept/drop, the deciding rule's id (None: no logged verdict), the chain
    and rule text, and the chains walked through."""

    action: str  # "accept" | "drop"
    rule_id: str | None
    chain: str
    rule: str
    path: list[str] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)


_LOG = re.compile(r'^log prefix "?tabby:([0-9A-Za-z_-]+)"? group \d+')


def _ip_in(ip: str, spec: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if "-" in spec and "/" not in spec:  # an interval element a-b
        lo, hi = (ipaddress.ip_address(x) for x in spec.split("-", 1))
        return addr.version == lo.version and lo <= addr <= hi  # type: ignore[operator]
    net = ipaddress.ip_network(spec, strict=False)
    return addr.version == net.version and addr in net


def _split_set(text: str) -> list[str]:
    return [x.strip() for x in text.strip().strip("{}").split(",") if x.strip()]


def _tokens(text: str) -> list[str]:
    # keep braces together as one token: '{a,b}'
    raw = re.sub(r"\{\s*([^}]*)\}", lambda m: "{" + m.group(1).replace(" ", "") + "}", text)
    return shlex.split(raw, posix=True)


def _member(program: Program, name: str, element: str) -> bool:
    found = program.sets.get(name)
    if found is None:
        raise EvalError(f"rule references set @{name}, which the program does not hold")
    members = found[1]
    if element in members:
        return True
    if " . " in element:
        return False
    # interval sets (network sets' CIDRs beside pod addresses)
    return any(("/" in m or "-" in m) and _ip_in(element, m) for m in members)


@dataclass
class _State:
    mark: int = 0


def _int(tok: str) -> int:
    return int(tok, 0)


def _operand(toks: list[str], i: int) -> tuple[bool, str, int]:
    """(negated, operand, index after it) at toks[i] ("!=" optional, "==" accepted)."""
    if toks[i] in ("!=", "=="):
        return toks[i] == "!=", toks[i + 1], i + 2
    return False, toks[i], i + 1


def _ports_hit(operand: str, port: int | None, text: str) -> bool:
    hit = False
    for p in _split_set(operand) if operand.startswith("{") else [operand]:
        lo, _, hi = p.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise EvalError(f"cannot evaluate port {p!r} in: {text}")
        if port is not None and int(lo) <= port <= int(hi or lo):
            hit = True
    return hit


_STATEMENTS = ("log", "accept", "drop", "jump", "goto", "return", "counter", "comment")


def evaluate_rule(program: Program, text: str, pkt: Packet, state: _State | None = None) -> tuple[bool, list[str]]:
    """(matches, the statements after the match: log/accept/drop/jump/goto/return/mark set...)."""
    state = state if state is not None else _State()
    toks = _tokens(text)
    i = 0
    ok = True
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if t in _STATEMENTS or (t == "meta" and nxt == "mark" and i + 2 < len(toks) and toks[i + 2] == "set"):
            break
        if t in ("ip", "ip6") and nxt in ("saddr", "daddr"):
            if i + 2 < len(toks) and toks[i + 2] == ".":
                side = "dport" if nxt == "daddr" else "sport"
                if toks[i + 2:i + 8] != [".", "meta", "l4proto", ".", "th", side] or not toks[i + 8].startswith("@"):
                    raise EvalError(f"cannot evaluate concatenation in: {text}")
                ip, port = (pkt.dst, pkt.dport) if nxt == "daddr" else (pkt.src, pkt.sport)
                ok = ok and port is not None and _member(program, toks[i + 8][1:], f"{ip} . {pkt.protocol} . {port}")
                i += 9
                continue
            fam_ok = (t == "ip") == (pkt.family == 4)
            ip = pkt.src if nxt == "saddr" else pkt.dst
            neg, operand, i = _operand(toks, i + 2)
            try:
                if operand.startswith("@"):
                    hit = fam_ok and _member(program, operand[1:], ip)
                elif operand.startswith("{"):
                    hit = fam_ok and any(_ip_in(ip, x) for x in _split_set(operand))
                else:
                    hit = fam_ok and _ip_in(ip, operand)
            except ValueError:
                raise EvalError(f"cannot evaluate address match {operand!r} in: {text}") from None
            # a family mismatch never matches, negated or not (nft: the payload test fails)
            ok = ok and fam_ok and (not hit if neg else hit)
            continue
        if t == "meta" and nxt == "nfproto":
            ok = ok and toks[i + 2] == f"ipv{pkt.family}"
            i += 3
            continue
        if t == "meta" and nxt == "l4proto":
            neg, operand, i = _operand(toks, i + 2)
            protos = _split_set(operand) if operand.startswith("{") else [operand]
            protos = ["icmpv6" if p == "ipv6-icmp" else p for p in protos]
            hit = pkt.protocol in protos or str(PROTO_NUMBERS.get(pkt.protocol)) in protos
            ok = ok and (not hit if neg else hit)
            continue
        if t == "meta" and nxt == "mark" and i + 2 < len(toks) and toks[i + 2] == "and":
            # meta mark and 0x00200000 == 0   /   != 0
            mask = _int(toks[i + 3])
            neg, operand, i = _operand(toks, i + 4)
            hit = (state.mark & mask) == _int(operand)
            ok = ok and (not hit if neg else hit)
            continue
        if t in ("icmp", "icmpv6") and nxt in ("type", "code"):
            if i + 2 < len(toks) and toks[i + 2] == ".":
                # icmp type . icmp code != { 8 . 0 }
                neg, operand, i = _operand(toks, i + 5)
                pairs = {tuple(x.split(".")) for x in _split_set(operand.replace(" ", ""))}
                hit = pkt.protocol == t and (str(pkt.icmp_type), str(pkt.icmp_code)) in pairs
                ok = ok and pkt.protocol == t and (not hit if neg else hit)
                continue
            neg, operand, i = _operand(toks, i + 2)
            have = pkt.icmp_type if nxt == "type" else pkt.icmp_code
            values = _split_set(operand) if operand.startswith("{") else [operand]
            if not all(v.isdigit() for v in values):
                raise EvalError(f"cannot evaluate icmp {nxt} {operand!r} in: {text}")
            hit = pkt.protocol == t and str(have) in values
            ok = ok and pkt.protocol == t and (not hit if neg else hit)
            continue
        if t == "th" and nxt in ("dport", "sport"):
            neg, operand, i = _operand(toks, i + 2)
            hit = _ports_hit(operand, pkt.dport if nxt == "dport" else pkt.sport, text)
            ok = ok and pkt.protocol in ("tcp", "udp", "sctp") and (not hit if neg else hit)
            continue
        raise EvalError(f"cannot evaluate {t!r} in a policy chain: {text}")
    return ok, toks[i:]


def walk(program: Program, plan_rules: tuple[str, ...], pkt: Packet, chain: str = "endpoint",
         depth: int = 0, state: _State | None = None) -> Verdict | None:
    """Walk ``plan_rules`` (an endpoint chain) and the chains it jumps to; None = fell off the end
    (or returned)."""
    if depth > 16:
        raise EvalError("jump depth over 16 (a loop?)")
    state = state if state is not None else _State()
    trace: list[str] = []
    for text in plan_rules:
        matched, stmts = evaluate_rule(program, text, pkt, state)
        if not matched:
            continue
        j = 0
        rid: str | None = None
        while j < len(stmts):
            s = stmts[j]
            if s == "log":
                m = _LOG.match(" ".join(stmts[j:j + 5]))
                if m is None:
                    raise EvalError(f"cannot read the log statement of: {text}")
                if rid is not None:
                    trace.append(rid)
                rid = m.group(1)
                j += 5
                continue
            if s in ("accept", "drop"):
                return Verdict(s, rid, chain, text, [chain], trace)
            if s == "meta" and stmts[j + 1:j + 5] == ["mark", "set", "meta", "mark"] and j + 6 < len(stmts):
                op, value = stmts[j + 5], _int(stmts[j + 6])
                if op in ("|", "or"):
                    state.mark |= value
                elif op in ("&", "and"):
                    state.mark &= value
                else:
                    raise EvalError(f"cannot evaluate mark operation {op!r} in: {text}")
                j += 7
                continue
            if s in ("jump", "goto") and j + 1 < len(stmts):
                target = stmts[j + 1]
                rules = program.chains.get(target)
                if rules is None:
                    raise EvalError(f"rule jumps to chain {target}, which the program does not hold")
                sub = walk(program, rules, pkt, target, depth + 1, state)
                if sub is not None:
                    sub.path.insert(0, chain)
                    sub.trace_ids[:0] = trace
                    return sub
                if s == "goto":
                    return None
                break  # a jump that fell through (or returned): the next rule of this chain
            if s == "return":
                if rid is not None:
                    trace.append(rid)  # a pass (or a profile's pass): its id is part of the trace
                _pending_trace.extend(trace)
                return None
            if s in ("counter", "comment"):
                j += 1 if s == "counter" else 2
                continue
            raise EvalError(f"cannot evaluate statement {s!r} in: {text}")
        else:
            if rid is not None:
                trace.append(rid)  # a Log rule: logged, then on to the next rule
    _pending_trace.extend(trace)
    return None


#: ids of pass/log rules met in chains that returned (read by :func:`decide`; one walk at a time)
_pending_trace: list[str] = []


@dataclass
class Decision:
    """One direction's answer: verdict, deciding rule (id and its RuleRef), path."""

    direction: str
    verdict: str  # "allowed" | "denied" | "not-policed"
    rule_id: str | None = None
    ref: Any = None
    chain: str = ""
    rule: str = ""
    path: list[str] = field(default_factory=list)
    note: str = ""
    trace: list[Any] = field(default_factory=list)  # RuleRefs of the pass/log rules met before the verdict


def decide(program: Program, interface: str, direction: str, pkt: Packet) -> Decision:
    """The verdict of ``program`` for ``pkt`` leaving (egress) or reaching (ingress) ``interface``."""
    table = program.egress if direction == "egress" else program.ingress
    if interface not in table:
        return Decision(direction, "denied", note="fail-closed: the interface is in no verdict map")
    plan = table[interface]
    if plan is None:
        return Decision(direction, "allowed", note="no chain: the verdict map accepts")
    rules = plan.rules if hasattr(plan, "rules") else tuple(plan)
    _pending_trace.clear()
    v = walk(program, rules, pkt)
    refs: Mapping[str, Any] = program.rule_refs
    if v is None:
        return Decision(direction, "allowed", note="fell off the endpoint chain: the base chain's policy accepts",
                        trace=[refs.get(t) for t in _pending_trace])
    trace = [*_pending_trace, *v.trace_ids]
    return Decision(direction, "allowed" if v.action == "accept" else "denied", v.rule_id,
                    refs.get(v.rule_id) if v.rule_id else None, v.chain, v.rule, v.path,
                    trace=[refs.get(t) for t in trace])
