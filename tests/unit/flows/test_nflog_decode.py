"""The NFLOG and conntrack decoders on datagrams captured from this kernel (felix_like.nflog), and the
configuration message they need; then the recorder and the ring (felix_like.flowlog) on decoded packets."""

from __future__ import annotations

import struct

import pytest

from felix_like import nflog
from felix_like.flowlog import FlowRing, PeerInfo, Recorder
from felix_like.nflog import CtEvent, CtTuple, Headers, NflogPacket

# Two NFLOG packet messages (prefixes tabby:r1 and tabby:deny7, one TCP SYN 127.0.0.1:34206 -> :81) and the
# NLMSG_DONE closing the batch, as the kernel sent them in one datagram (captured in a test namespace).
NFLOG_DATAGRAM = bytes.fromhex(
    "840000000004000000000000000000000200000108000100080003000d000a0074616262793a723100000000080005000000000108"
    "000b000000000008000e0000000000400009004500003cd9c54000400662f47f0000017f000001859e00518b9044f200000000a002"
    "ffd7fe3000000204ffd70402080a5b848ce4000000000103030a84000000000400000000000000000000020000010800010008000300"
    "10000a0074616262793a64656e793700080005000000000108000b000000000008000e0000000000400009004500003cd9c5400040"
    "0662f47f0000017f000001859e00518b9044f200000000a002ffd7fe3000000204ffd70402080a5b848ce4000000000103030a140000"
    "0003000000000000000000000000000001")
# A conntrack DESTROY event of an ICMP echo 127.0.0.1 -> 127.0.0.1 (id 0x7842), accounting on: 1 packet / 84 bytes
# each way.
CT_DESTROY = bytes.fromhex(
    "d4000000020100000000000000000000020000003c00018014000180080001007f000001080002007f000001240002800500010001"
    "0000000600040078420000050005000800000005000600000000003c00028014000180080001007f000001080002007f0000012400"
    "0280050001000100000006000400784200000500050000000000050006000000000008000c009c8dcf33080003000000020a1c0009"
    "800c00010000000000000000010c00020000000000000000541c000a800c00010000000000000000010c0002000000000000000054")


def test_nflog_datagram() -> None:
    msgs = list(nflog.messages(NFLOG_DATAGRAM))
    assert [t for t, _f, _b in msgs] == [0x400, 0x400, nflog.NLMSG_DONE]
    pkts = [nflog.parse_nflog(b) for t, _f, b in msgs if t == 0x400]
    assert [p.prefix for p in pkts if p] == ["tabby:r1", "tabby:deny7"]
    h = pkts[0].headers if pkts[0] else None
    assert h == Headers(4, "127.0.0.1", "127.0.0.1", 6, 34206, 81, 0x02, length=60)
    assert h.flag_names() == ["SYN"] and h.protocol == "tcp"
    assert pkts[0] is not None and pkts[0].hook == 3 and pkts[0].outdev == 1  # NF_INET_LOCAL_OUT, lo


def test_conntrack_destroy() -> None:
    ((typ, _flags, body),) = list(nflog.messages(CT_DESTROY))
    ev = nflog.parse_conntrack(typ, body)
    assert ev is not None and ev.kind == "destroy"
    assert ev.orig == CtTuple("127.0.0.1", "127.0.0.1", 1, 0x7842, 0)
    assert (ev.packets_orig, ev.bytes_orig, ev.packets_reply, ev.bytes_reply) == (1, 84, 1, 84)


def test_config_message_layout() -> None:
    raw = nflog.config_message(1, 7, cmd=nflog.NFULNL_CFG_CMD_BIND)
    length, typ, flags, seq, _pid = struct.unpack_from("=IHHII", raw)
    assert (length, typ, flags, seq) == (len(raw), 0x401, nflog.NLM_F_REQUEST | nflog.NLM_F_ACK, 7)
    assert raw[16:20] == bytes([0, 0, 0, 1])  # AF_UNSPEC, version 0, group 1 big-endian
    assert list(nflog.attrs(raw, 20)) == [(nflog.NFULA_CFG_CMD, memoryview(b"\x01"))]
    mode = nflog.config_message(3, 1, copy_range=128, timeout_cs=2, qthresh=32)
    got = {t: bytes(v) for t, v in nflog.attrs(mode, 20)}
    assert got == {nflog.NFULA_CFG_MODE: struct.pack(">IBB", 128, 2, 0), nflog.NFULA_CFG_TIMEOUT: b"\0\0\0\x02",
                   nflog.NFULA_CFG_QTHRESH: b"\0\0\0\x20"}


@pytest.mark.parametrize("raw", [b"", b"\x45", b"\x60" + b"\0" * 10, b"\x00" * 40])
def test_short_or_foreign_headers(raw: bytes) -> None:
    assert nflog.parse_headers(raw) is None


def test_truncated_messages_stop_cleanly() -> None:
    assert list(nflog.messages(NFLOG_DATAGRAM[:30])) == []
    assert list(nflog.attrs(b"\xff\xff\x01\x00")) == []


# -- recorder ------------------------------------------------------------------------------------------


class Ref:
    def __init__(self, tier: str, name: str, direction: str, index: int, action: str, kind: str = "NetworkPolicy",
                 namespace: str = "prod") -> None:
        self.tier, self.kind, self.namespace, self.name = tier, kind, namespace, name
        self.direction, self.index, self.action = direction, index, action


REFS = {
    "a1": Ref("default", "allow-web", "ingress", 0, "allow"),
    "p1": Ref("security", "to-default", "ingress", 2, "pass"),
    "d1": Ref("default", "", "ingress", -1, "end-of-tier-deny", kind="Tier", namespace=""),
    "n1": Ref("", "", "egress", -1, "no-profile-deny", kind="", namespace=""),
}
PEERS = {"10.0.0.1": PeerInfo("cli", "prod", (("role", "client"),), "n1"),
         "10.0.0.2": PeerInfo("srv", "prod", (("app", "web"),), "n2")}


def syn(prefix: str, sport: int = 40000, dport: int = 80) -> NflogPacket:
    return NflogPacket(prefix, Headers(4, "10.0.0.1", "10.0.0.2", 6, sport, dport, 0x02))


def recorder(capacity: int = 16) -> Recorder:
    return Recorder("n2", FlowRing(capacity), REFS.get, PEERS.get)


def test_allowed_record_fields() -> None:
    rec = recorder()
    r = rec.packet(syn("tabby:a1"), now=5.0)
    assert r is not None
    j = r.to_json()
    assert j["verdict"] == "allowed" and j["direction"] == "ingress" and j["protocol"] == "tcp"
    assert j["source"] == {"ip": "10.0.0.1", "port": 40000, "pod": "cli", "namespace": "prod",
                           "labels": {"role": "client"}, "node": "n1"}
    assert j["destination"]["pod"] == "srv" and j["tcp_flags"] == ["SYN"]
    assert j["policy"] == {"tier": "default", "kind": "NetworkPolicy", "namespace": "prod", "name": "allow-web"}
    assert j["rule"]["index"] == 0 and j["rule"]["rule_id"] == "a1" and j["drop_reason"] is None
    assert rec.counters.flows == {("allowed", "ingress"): 1}
    assert rec.counters.verdicts == {("prod/allow-web", "default", "allow"): 1}


def test_pass_then_default_deny_is_one_record_with_a_trace() -> None:
    rec = recorder()
    assert rec.packet(syn("tabby:p1")) is None
    r = rec.packet(syn("tabby:d1"))
    assert r is not None
    j = r.to_json()
    assert j["verdict"] == "denied" and j["drop_reason"] == "end-of-tier-default-deny"
    assert j["reason"] == "end of tier default: default deny" and j["policy"] is None
    assert [t["name"] for t in j["trace"]] == ["to-default"] and j["trace"][0]["action"] == "pass"
    assert rec.counters.drops == {"end-of-tier-default-deny": 1}
    # the next packet has no pending pass
    r2 = rec.packet(syn("tabby:d1"))
    assert r2 is not None and r2.trace == []


def test_no_profile_and_unknown_and_foreign_prefixes() -> None:
    rec = recorder()
    r = rec.packet(syn("tabby:n1"))
    assert r is not None and r.to_json()["reason"] == "no profile matched" and r.direction == "egress"
    u = rec.packet(syn("tabby:zzz"))
    assert u is not None and u.verdict == "unknown" and u.reason == "unknown-rule"
    assert rec.packet(syn("other:a1")) is None
    assert rec.packet(NflogPacket("tabby:a1", None)) is None


def test_ring_bounded_drop_oldest_and_counts() -> None:
    rec = recorder(capacity=8)
    for i in range(100):
        rec.packet(syn("tabby:a1", sport=1000 + i))
    ring = rec.ring
    assert len(ring) == 8 and ring.dropped == 92 and ring.seq == 100
    assert [r.seq for r in ring.records()] == list(range(93, 101))
    assert [r.seq for r in ring.records(last=3)] == [98, 99, 100]
    assert [r.seq for r in ring.records(after=98)] == [99, 100]
    assert len(ring._open) <= 8  # waiting-for-conntrack index bounded with the ring


def test_conntrack_end_fills_counters_of_allowed_records_only() -> None:
    rec = recorder()
    allowed = rec.packet(syn("tabby:a1", sport=5555))
    denied = rec.packet(syn("tabby:d1", sport=6666))
    ev = CtEvent("destroy", CtTuple("10.0.0.1", "10.0.0.2", 6, 5555, 80), CtTuple(), 10, 1000, 8, 4000)
    rec.conntrack(ev)
    assert allowed is not None and allowed.counters == {"packets_to_destination": 10, "bytes_to_destination": 1000,
                                                        "packets_to_source": 8, "bytes_to_source": 4000}
    assert allowed.ended is not None and rec.counters.ct_ends == 1
    rec.conntrack(CtEvent("destroy", CtTuple("10.0.0.1", "10.0.0.2", 6, 6666, 80), CtTuple()))
    assert denied is not None and denied.counters is None and rec.counters.ct_ends == 1
