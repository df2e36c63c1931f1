"""NFLOG and conntrack-event netlink, decoded by hand: the kernel side of flow logs.

Why hand-written: pyroute2 (0.9.7) has no NFULNL (nfnetlink_log) support at all, and its
conntrack socket decodes every message through its generic NLA machinery, which is the hot path
here (one message per new connection). Both message shapes are small and fixed:

* **NFLOG** (``NETLINK_NETFILTER``, subsystem ``NFNL_SUBSYS_ULOG``): the agent binds one group
  (``log group N`` in the nft rules), asks for the first :data:`COPY_RANGE` bytes of each packet
  (the IP and L4 headers, never the payload) and a short flush timeout, and reads
  ``NFULNL_MSG_PACKET`` messages carrying the rule's prefix, the hook, the interfaces and the
  header bytes. Plain nft ``log`` (the kernel log) is suppressed outside the initial namespace;
  NFLOG is per namespace and works in every node's namespace.
* **conntrack DESTROY events** (multicast group ``NFNLGRP_CONNTRACK_DESTROY``): the end of a
  tracked connection with its packet/byte counters in each direction (only when
  ``net.netfilter.nf_conntrack_acct=1`` was set before the entry was created).

Neither socket can slow the dataplane: the kernel drops NFLOG messages and events when the
socket's receive buffer is full (the reader sees ``ENOBUFS`` and counts the loss), it never
waits for the reader.
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from felix_like.netns import run_in_netns

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

# NFULA_CFG_*
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2

# NFULA_* of a packet message
NFULA_PACKET_HDR = 1
NFULA_MARK = 2
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10

# CTA_*
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2
CTA_ID = 12

NLA_TYPE_MASK = 0x3FFF

#: Bytes of each logged packet handed to the agent: IPv4 header with options (60) + a TCP header
#: with options (60) = 120; IPv6 (40) + TCP (60) = 100. No payload reaches user space.
COPY_RANGE = 128
#: Flush a partly filled NFLOG batch after this many 1/100 s (the kernel's default is 1 s, which
#: would delay a record that long); batches of up to QTHRESH packets go out at once.
FLUSH_TIMEOUT_CS = 2
QTHRESH = 32
RCVBUF = 4 << 20

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
TCP_FLAGS = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10), ("URG", 0x20),
             ("ECE", 0x40), ("CWR", 0x80))


def _align(n: int) -> int:
    return (n + 3) & ~3


def attrs(data: bytes | memoryview, offset: int = 0, end: int | None = None) -> Iterator[tuple[int, memoryview]]:
    """(type without flag bits, payload) of each netlink attribute in ``data[offset:end]``."""
    mv = memoryview(data)
    end = len(mv) if end is None else end
    while offset + 4 <= end:
        length, typ = struct.unpack_from("=HH", mv, offset)
        if length < 4 or offset + length > end:
            return
        yield typ & NLA_TYPE_MASK, mv[offset + 4:offset + length]
        offset += _align(length)


def messages(data: bytes) -> Iterator[tuple[int, int, memoryview]]:
    """(type, flags, body after the nlmsghdr) of each netlink message of one datagram."""
    mv = memoryview(data)
    offset = 0
    while offset + 16 <= len(mv):
        length, typ, flags, _seq, _pid = struct.unpack_from("=IHHII", mv, offset)
        if length < 16 or offset + length > len(mv):
            return
        yield typ, flags, mv[offset + 16:offset + length]
        offset += _align(length)


def _attr(typ: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def _msg(typ: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), typ, flags, seq, 0) + body


def config_message(group: int, seq: int, *, cmd: int | None = None, copy_range: int | None = None,
                   timeout_cs: int | None = None, qthresh: int | None = None, nlbufsiz: int | None = None) -> bytes:
    """An ``NFULNL_MSG_CONFIG`` request for ``group`` (commands and settings are big-endian)."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group))
    if cmd is not None:
        body += _attr(NFULA_CFG_CMD, struct.pack("B", cmd))
    if copy_range is not None:
        body += _attr(NFULA_CFG_MODE, struct.pack(">IBB", copy_range, NFULNL_COPY_PACKET, 0))
    if nlbufsiz is not None:
        body += _attr(NFULA_CFG_NLBUFSIZ, struct.pack(">I", nlbufsiz))
    if timeout_cs is not None:
        body += _attr(NFULA_CFG_TIMEOUT, struct.pack(">I", timeout_cs))
    if qthresh is not None:
        body += _attr(NFULA_CFG_QTHRESH, struct.pack(">I", qthresh))
    return _msg((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, body)


# -- decoded shapes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Headers:
    """What the first bytes of a packet say: addresses, protocol, ports, TCP flags, ICMP type/code."""

    family: int  # 4 or 6
    src: str
    dst: str
    proto: int
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int = 0
    length: int = 0

    @property
    def protocol(self) -> str:
        return PROTOCOLS.get(self.proto, str(self.proto))

    def flag_names(self) -> list[str]:
        return [name for name, bit in TCP_FLAGS if self.tcp_flags & bit]


def parse_headers(pkt: bytes | memoryview) -> Headers | None:
    """The IPv4/IPv6 and L4 headers at the start of ``pkt`` (None when not an IP packet)."""
    b = bytes(pkt[:COPY_RANGE])
    if not b:
        return None
    version = b[0] >> 4
    if version == 4 and len(b) >= 20:
        ihl = (b[0] & 0x0F) * 4
        total = struct.unpack_from(">H", b, 2)[0]
        proto = b[9]
        src, dst = str(ipaddress.IPv4Address(b[12:16])), str(ipaddress.IPv4Address(b[16:20]))
        frag = struct.unpack_from(">H", b, 6)[0] & 0x1FFF
        l4 = b[ihl:] if frag == 0 else b""
        family = 4
    elif version == 6 and len(b) >= 40:
        total = struct.unpack_from(">H", b, 4)[0] + 40
        proto = b[6]
        src, dst = str(ipaddress.IPv6Address(b[8:24])), str(ipaddress.IPv6Address(b[24:40]))
        l4 = b[40:]
        family = 6
    else:
        return None
    if proto in (6, 17, 132) and len(l4) >= 4:
        sport, dport = struct.unpack_from(">HH", l4, 0)
        flags = l4[13] if proto == 6 and len(l4) >= 14 else 0
        return Headers(family, src, dst, proto, sport, dport, flags, length=total)
    if proto in (1, 58) and len(l4) >= 2:
        ident = struct.unpack_from(">H", l4, 4)[0] if len(l4) >= 6 else 0
        return Headers(family, src, dst, proto, icmp_type=l4[0], icmp_code=l4[1], icmp_id=ident, length=total)
    return Headers(family, src, dst, proto, length=total)


@dataclass(frozen=True)
class NflogPacket:
    """One logged packet: the rule's prefix, where it was seen, its headers."""

    prefix: str
    headers: Headers | None
    hook: int = 0
    indev: int = 0
    outdev: int = 0
    timestamp: float | None = None


def parse_nflog(body: memoryview) -> NflogPacket | None:
    """The body of one ``NFULNL_MSG_PACKET`` message (after the nlmsghdr)."""
    if len(body) < 4:
        return None
    prefix, headers, hook, indev, outdev, ts = "", None, 0, 0, 0, None
    for typ, val in attrs(body, 4):
        if typ == NFULA_PREFIX:
            prefix = bytes(val).split(b"\0", 1)[0].decode("utf-8", "replace")
        elif typ == NFULA_PAYLOAD:
            headers = parse_headers(val)
        elif typ == NFULA_PACKET_HDR and len(val) >= 3:
            hook = val[2]
        elif typ == NFULA_IFINDEX_INDEV and len(val) >= 4:
            indev = struct.unpack(">I", val[:4])[0]
        elif typ == NFULA_IFINDEX_OUTDEV and len(val) >= 4:
            outdev = struct.unpack(">I", val[:4])[0]
        elif typ == NFULA_TIMESTAMP and len(val) >= 16:
            sec, usec = struct.unpack(">QQ", val[:16])
            ts = sec + usec / 1e6
    return NflogPacket(prefix, headers, hook, indev, outdev, ts)


@dataclass(frozen=True)
class CtTuple:
    src: str = ""
    dst: str = ""
    proto: int = 0
    sport: int = 0
    dport: int = 0

    def key(self) -> tuple[int, str, int, str, int]:
        return (self.proto, self.src, self.sport, self.dst, self.dport)


@dataclass(frozen=True)
class CtEvent:
    """A conntrack event: the original-direction tuple and the counters of each direction."""

    kind: str  # "destroy" | "new"
    orig: CtTuple
    reply: CtTuple
    packets_orig: int = 0
    bytes_orig: int = 0
    packets_reply: int = 0
    bytes_reply: int = 0
    ct_id: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _tuple(val: memoryview) -> CtTuple:
    src = dst = ""
    proto = sport = dport = 0
    for typ, inner in attrs(val):
        if typ == CTA_TUPLE_IP:
            for t2, v in attrs(inner):
                if t2 in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = str(ipaddress.ip_address(bytes(v)))
                elif t2 in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = str(ipaddress.ip_address(bytes(v)))
        elif typ == CTA_TUPLE_PROTO:
            for t2, v in attrs(inner):
                if t2 == CTA_PROTO_NUM:
                    proto = v[0]
                elif t2 == CTA_PROTO_SRC_PORT:
                    sport = struct.unpack(">H", v[:2])[0]
                elif t2 == CTA_PROTO_DST_PORT:
                    dport = struct.unpack(">H", v[:2])[0]
                elif t2 == CTA_PROTO_ICMP_ID:
                    sport = struct.unpack(">H", v[:2])[0]
    return CtTuple(src, dst, proto, sport, dport)


def _counters(val: memoryview) -> tuple[int, int]:
    packets = nbytes = 0
    for typ, v in attrs(val):
        if typ == CTA_COUNTERS_PACKETS and len(v) >= 8:
            packets = struct.unpack(">Q", v[:8])[0]
        elif typ == CTA_COUNTERS_BYTES and len(v) >= 8:
            nbytes = struct.unpack(">Q", v[:8])[0]
    return packets, nbytes


def parse_conntrack(msg_type: int, body: memoryview) -> CtEvent | None:
    """The body of one ctnetlink event message (after the nlmsghdr)."""
    if msg_type >> 8 != NFNL_SUBSYS_CTNETLINK or len(body) < 4:
        return None
    sub = msg_type & 0xFF
    kind = "destroy" if sub == IPCTNL_MSG_CT_DELETE else "new" if sub == IPCTNL_MSG_CT_NEW else ""
    if not kind:
        return None
    orig = reply = CtTuple()
    po = bo = pr = br = cid = 0
    for typ, val in attrs(body, 4):
        if typ == CTA_TUPLE_ORIG:
            orig = _tuple(val)
        elif typ == CTA_TUPLE_REPLY:
            reply = _tuple(val)
        elif typ == CTA_COUNTERS_ORIG:
            po, bo = _counters(val)
        elif typ == CTA_COUNTERS_REPLY:
            pr, br = _counters(val)
        elif typ == CTA_ID and len(val) >= 4:
            cid = struct.unpack(">I", val[:4])[0]
    return CtEvent(kind, orig, reply, po, bo, pr, br, cid)


# -- sockets ---------------------------------------------------------------------------------------


class NetlinkError(OSError):
    """The kernel refused a configuration request."""


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _await_ack(sock: socket.socket, seq: int) -> None:
    sock.settimeout(2.0)
    try:
        while True:
            data = sock.recv(65536)
            for typ, _flags, body in messages(data):
                if typ == NLMSG_ERROR and len(body) >= 8:
                    code, _ = struct.unpack_from("=iI", body, 0)
                    got_seq = struct.unpack_from("=I", body, 12)[0] if len(body) >= 16 else seq
                    if got_seq != seq:
                        continue
                    if code:
                        raise NetlinkError(-code, f"NFLOG config refused: {os.strerror(-code)}")
                    return
    finally:
        sock.settimeout(None)


def open_nflog(netns: str | None, group: int, *, copy_range: int = COPY_RANGE, timeout_cs: int = FLUSH_TIMEOUT_CS,
               qthresh: int = QTHRESH, rcvbuf: int = RCVBUF) -> socket.socket:
    """A socket in ``netns`` bound to NFLOG ``group``, copying headers only. Raises NetlinkError
    (EPERM/EBUSY) when another socket holds the group."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            _set_rcvbuf(sock, rcvbuf)
            sock.send(config_message(group, 1, cmd=NFULNL_CFG_CMD_BIND))
            _await_ack(sock, 1)
            sock.send(config_message(group, 2, copy_range=copy_range, timeout_cs=timeout_cs, qthresh=qthresh))
            _await_ack(sock, 2)
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, make)


def open_conntrack_events(netns: str | None, *, rcvbuf: int = RCVBUF) -> socket.socket:
    """A socket in ``netns`` subscribed to conntrack DESTROY events."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            _set_rcvbuf(sock, rcvbuf)
            sock.bind((0, 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, make)


def enable_conntrack_accounting(netns: str | None) -> bool:
    """``net.netfilter.nf_conntrack_acct=1`` in ``netns`` (per namespace; byte/packet counters for
    entries created from now on). False when the sysctl is missing (conntrack not loaded)."""

    def run() -> bool:
        path = "/proc/sys/net/netfilter/nf_conntrack_acct"
        try:
            with open(path, "w") as f:
                f.write("1")
        except FileNotFoundError:
            return False
        return True

    return run_in_netns(netns, run)


def recv_all(sock: socket.socket, bufsize: int = 1 << 20) -> tuple[bytes | None, bool]:
    """One datagram (non-blocking; None when none is waiting) and whether messages were lost
    (ENOBUFS: the receive buffer overflowed, the kernel dropped what did not fit)."""
    try:
        return sock.recv(bufsize, socket.MSG_DONTWAIT), False
    except BlockingIOError:
        return None, False
    except OSError as exc:
        if exc.errno == errno_mod.ENOBUFS:
            return None, True
        raise
