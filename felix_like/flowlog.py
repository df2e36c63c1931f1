"""Flow records from NFLOG packets and conntrack ends: the ring buffer and the collector thread.

Why a thread and a ring: the dataplane must never wait for flow logging. The kernel hands logged
packets and conntrack events to two netlink sockets and drops what does not fit (counted as
``lost``); one reader thread decodes them off the agent's event loop, turns each into a record
and appends it to a bounded ring (default 4,096 records): when full the oldest goes and is counted
(``dropped``). Nothing here grows without bound.

Which rule decided: the compiler writes ``log prefix "tabby:<id>" group 1`` before every verdict
rule and every synthetic default verdict (at ``ct state new``), so each packet that starts a
connection produces one NFLOG message per verdict it met. The id maps back through the compiled
model's ``rule_refs`` to (tier, kind, namespace, name, direction, index, action). A ``pass`` or
``log`` rule is not a verdict: it is kept as ``trace`` and attached to the verdict record of the
same packet that follows it. Denials come from NFLOG alone (a dropped packet never gets a
confirmed conntrack entry); the byte and packet counts of an allowed flow come from its conntrack
DESTROY event when it ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from felix_like import nflog
from felix_like.nflog import CtEvent, Headers, NflogPacket

log = structlog.get_logger("tabby.felix_like.flowlog")

PREFIX = "tabby:"
NFLOG_GROUP = 1
DEFAULT_CAPACITY = 4096

#: action -> (verdict, drop reason); pass/log are not verdicts (they become a trace).
VERDICTS: dict[str, tuple[str, str | None]] = {
    "allow": ("allowed", None),
    "deny": ("denied", "policy-deny"),
    "end-of-tier-deny": ("denied", "end-of-tier-default-deny"),
    "no-profile-deny": ("denied", "no-profile-matched"),
    "fail-closed-deny": ("denied", "fail-closed"),
}
NON_VERDICTS = ("pass", "log")


class RuleLike(Protocol):
    """What flow records need of felix_like.policy_ids.RuleRef (the compiler's rule-id contract)."""

    tier: str
    kind: str
    namespace: str
    name: str
    direction: str
    index: int
    action: str


@dataclass(frozen=True)
class PeerInfo:
    """What the agent's model knows about an address: the pod (WorkloadEndpoint) holding it."""

    pod: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    node: str = ""


def reason_text(reason: str | None, tier: str) -> str:
    if reason == "end-of-tier-default-deny":
        return f"end of tier {tier}: default deny" if tier else "end of tier: default deny"
    if reason == "no-profile-matched":
        return "no profile matched"
    if reason == "fail-closed":
        return "fail-closed: workload interface not programmed yet"
    if reason == "policy-deny":
        return "denied by rule"
    if reason == "unknown-rule":
        return "rule id not in the compiled model (policy changed since)"
    return ""


def rule_json(rid: str, ref: RuleLike | None) -> dict[str, Any]:
    if ref is None:
        return {"rule_id": rid, "tier": "", "kind": "", "namespace": "", "name": "", "direction": "",
                "index": None, "action": ""}
    return {"rule_id": rid, "tier": ref.tier, "kind": ref.kind, "namespace": ref.namespace, "name": ref.name,
            "direction": ref.direction, "index": ref.index if ref.index >= 0 else None, "action": ref.action}


@dataclass
class FlowRecord:
    """One flow as the API serves it (``to_json`` gives the documented field names, docs/flows.md)."""

    seq: int
    time: float
    node: str
    direction: str
    verdict: str
    headers: Headers
    rule: dict[str, Any]
    reason: str | None
    src: PeerInfo | None
    dst: PeerInfo | None
    trace: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] | None = None
    ended: float | None = None

    def key(self) -> tuple[int, str, int, str, int]:
        h = self.headers
        if h.proto in (1, 58):
            return (h.proto, h.src, h.icmp_id, h.dst, 0)
        return (h.proto, h.src, h.sport, h.dst, h.dport)

    def to_json(self) -> dict[str, Any]:
        h = self.headers

        def peer(ip: str, port: int, info: PeerInfo | None) -> dict[str, Any]:
            return {"ip": ip, "port": port if h.proto in (6, 17, 132) else None,
                    "pod": info.pod if info else None, "namespace": info.namespace if info else None,
                    "labels": dict(info.labels) if info else {}, "node": info.node if info else None}

        rule = self.rule
        return {
            "seq": self.seq, "time": round(self.time, 6), "node": self.node, "direction": self.direction,
            "verdict": self.verdict, "protocol": h.protocol,
            "source": peer(h.src, h.sport, self.src), "destination": peer(h.dst, h.dport, self.dst),
            "tcp_flags": h.flag_names() if h.proto == 6 else [],
            "icmp": {"type": h.icmp_type, "code": h.icmp_code} if h.icmp_type is not None else None,
            # the deciding policy (or profile); None for a synthetic verdict (a tier's end, no profile, fail-closed)
            "policy": {k: rule[k] for k in ("tier", "kind", "namespace", "name")}
            if rule.get("name") and rule.get("kind") not in ("Tier", "") else None,
            "rule": rule, "drop_reason": self.reason, "reason": reason_text(self.reason, rule.get("tier", "")),
            "trace": self.trace, "counters": self.counters, "ended": self.ended,
        }


class FlowRing:
    """A bounded ring of records (drop oldest, count drops), safe to append from the reader thread
    while the event loop reads."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ring: deque[FlowRecord] = deque()
        self._lock = threading.Lock()
        self.seq = 0
        self.dropped = 0
        #: 5-tuple -> the allowed records waiting for their conntrack end (only records still in the ring)
        self._open: OrderedDict[tuple[int, str, int, str, int], list[FlowRecord]] = OrderedDict()

    def next_seq(self) -> int:
        with self._lock:
            self.seq += 1
            return self.seq

    def append(self, rec: FlowRecord) -> None:
        with self._lock:
            if len(self._ring) >= self.capacity:
                old = self._ring.popleft()
                self.dropped += 1
                waiting = self._open.get(old.key())
                if waiting is not None and old in waiting:
                    waiting.remove(old)
                    if not waiting:
                        del self._open[old.key()]
            self._ring.append(rec)
            if rec.verdict == "allowed" and rec.headers.proto in (1, 6, 17, 58, 132):
                self._open.setdefault(rec.key(), []).append(rec)
                self._open.move_to_end(rec.key())
                while len(self._open) > self.capacity:
                    self._open.popitem(last=False)

    def end(self, ev: CtEvent) -> int:
        """A conntrack entry ended: its counters go onto the allowed records of that 5-tuple."""
        o = ev.orig
        key = (o.proto, o.src, o.sport, o.dst, o.dport if o.proto not in (1, 58) else 0)
        with self._lock:
            recs = self._open.pop(key, None)
            if not recs:
                return 0
            counters = {"packets_to_destination": ev.packets_orig, "bytes_to_destination": ev.bytes_orig,
                        "packets_to_source": ev.packets_reply, "bytes_to_source": ev.bytes_reply}
            now = time.time()
            for rec in recs:
                rec.counters = counters
                rec.ended = now
            return len(recs)

    def __len__(self) -> int:
        return len(self._ring)

    def records(self, *, after: int = 0, since: float | None = None, last: int | None = None) -> list[FlowRecord]:
        with self._lock:
            out = [r for r in self._ring if r.seq > after and (since is None or r.time >= since)]
        if last is not None:
            out = out[-last:] if last > 0 else []
        return out


@dataclass
class FlowCounters:
    """Counts for the Prometheus endpoint (written by the reader thread only)."""

    flows: dict[tuple[str, str], int] = field(default_factory=dict)  # (verdict, direction)
    verdicts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (policy, tier, action)
    drops: dict[str, int] = field(default_factory=dict)  # reason
    lost: int = 0  # netlink messages the kernel could not deliver (receive buffer full)
    ct_ends: int = 0


def _bump(d: dict[Any, int], key: Any) -> None:
    d[key] = d.get(key, 0) + 1


class Recorder:
    """NFLOG packets and conntrack events -> records in a :class:`FlowRing` (pure logic: the
    collector thread feeds it, unit tests feed it by hand)."""

    def __init__(self, node: str, ring: FlowRing, resolve: Callable[[str], RuleLike | None],
                 peer: Callable[[str], PeerInfo | None], *, on_record: Callable[[FlowRecord], None] | None = None,
                 on_verdict: Callable[[FlowRecord], None] | None = None) -> None:
        self.node = node
        self.ring = ring
        self.resolve = resolve
        self.peer = peer
        self.on_record = on_record
        self.on_verdict = on_verdict
        self.counters = FlowCounters()
        #: pass/log rules met by a packet whose verdict has not been logged yet (same packet: the
        #: kernel logs them in order, so the next verdict of that 5-tuple and direction closes it)
        self._pending: OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = OrderedDict()

    def packet(self, pkt: NflogPacket, now: float | None = None) -> FlowRecord | None:
        if not pkt.prefix.startswith(PREFIX) or pkt.headers is None:
            return None
        rid = pkt.prefix[len(PREFIX):]
        ref = self.resolve(rid)
        h = pkt.headers
        direction = ref.direction if ref is not None else ""
        pkey = (h.proto, h.src, h.sport, h.dst, h.dport, h.icmp_id, direction)
        rule = rule_json(rid, ref)
        if ref is not None and ref.action in NON_VERDICTS:
            self._pending.setdefault(pkey, []).append(rule)
            self._pending.move_to_end(pkey)
            while len(self._pending) > 256:
                self._pending.popitem(last=False)
            _bump(self.counters.verdicts, (_policy_name(ref), ref.tier, ref.action))
            return None
        if ref is None:
            verdict, reason = "unknown", "unknown-rule"
        else:
            verdict, reason = VERDICTS.get(ref.action, ("unknown", None))
        rec = FlowRecord(
            seq=self.ring.next_seq(), time=now if now is not None else (pkt.timestamp or time.time()),
            node=self.node, direction=direction, verdict=verdict, headers=h, rule=rule, reason=reason,
            src=self.peer(h.src), dst=self.peer(h.dst), trace=self._pending.pop(pkey, []))
        self.ring.append(rec)
        c = self.counters
        _bump(c.flows, (verdict, direction))
        if ref is not None:
            _bump(c.verdicts, (_policy_name(ref), ref.tier, ref.action))
        if reason is not None:
            _bump(c.drops, reason)
        if self.on_record is not None:
            self.on_record(rec)
        return rec

    def conntrack(self, ev: CtEvent) -> None:
        if ev.kind == "destroy" and self.ring.end(ev):
            self.counters.ct_ends += 1


def _policy_name(ref: RuleLike) -> str:
    if not ref.name:
        return ""
    return f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name


class Collector:
    """The reader thread: NFLOG group ``group`` and conntrack DESTROY events in ``netns`` into a
    :class:`Recorder`. ``start`` opens the sockets (errors raise there, in the caller), then reads
    until ``stop``."""

    def __init__(self, netns: str | None, recorder: Recorder, *, group: int = NFLOG_GROUP,
                 conntrack: bool = True) -> None:
        self.netns = netns
        self.recorder = recorder
        self.group = group
        self.want_conntrack = conntrack
        self._nflog: socket.socket | None = None
        self._ct: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self.accounting = False

    def start(self) -> None:
        if self.want_conntrack:
            self.accounting = nflog.enable_conntrack_accounting(self.netns)
        self._nflog = nflog.open_nflog(self.netns, self.group)
        if self.want_conntrack:
            try:
                self._ct = nflog.open_conntrack_events(self.netns)
            except OSError as exc:
                log.warning("flows.conntrack_events_unavailable", error=str(exc))
        self._thread = threading.Thread(target=self._run, name="flow-collector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        for sock in (self._nflog, self._ct):
            if sock is not None:
                sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        socks: list[Any] = [s for s in (self._nflog, self._ct) if s is not None]
        rec = self.recorder
        while not self._stopping:
            try:
                ready, _, _ = select.select([*socks, self._wake_r], [], [], 1.0)
            except (OSError, ValueError):
                return
            for sock in ready:
                if sock is self._wake_r:
                    continue
                # drain what is waiting (bounded: the kernel keeps filling while we read)
                for _ in range(64):
                    try:
                        data, lost = nflog.recv_all(sock)
                    except OSError as exc:
                        log.warning("flows.recv_failed", error=str(exc))
                        data, lost = None, False
                    if lost:
                        rec.counters.lost += 1
                        continue
                    if data is None:
                        break
                    try:
                        self._handle(sock, data)
                    except Exception:  # a malformed message must not end flow logging
                        log.exception("flows.decode_failed")

    def _handle(self, sock: socket.socket, data: bytes) -> None:
        rec = self.recorder
        is_nflog = sock is self._nflog
        for typ, _flags, body in nflog.messages(data):
            if is_nflog:
                if typ == (nflog.NFNL_SUBSYS_ULOG << 8) | nflog.NFULNL_MSG_PACKET:
                    pkt = nflog.parse_nflog(body)
                    if pkt is not None:
                        rec.packet(pkt)
            else:
                ev = nflog.parse_conntrack(typ, body)
                if ev is not None:
                    rec.conntrack(ev)


def peer_index(entries: Iterable[tuple[Iterable[str], PeerInfo]]) -> Mapping[str, PeerInfo]:
    return {ip: info for ips, info in entries for ip in ips}
