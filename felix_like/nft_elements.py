"""Set-member changes straight over nf_tables netlink, without libnftables.

Why: libnftables 1.0.6 (Debian 12) fills its cache with every set of the table before it evaluates
an ``add element`` command: with 2,000 sets and 2,000 chains loaded, a one-member change cost ~35
ms per command here, nearly all of it that cache, none of it the kernel. A pod appearing or a label
change is exactly such a delta, so the policy manager hands a delta made only of element adds and
deletes on plain sets (``ipv4_addr``, and the named-port concatenation ``ipv4_addr . inet_proto .
inet_service``) to :func:`apply_elements`: one nfnetlink batch (BEGIN, NEWSETELEM/DELSETELEM per
command, END), atomic as an nft transaction, every message acked. Anything else (a chain, a map, an
interval, an unknown type) returns False and goes through libnftables as before.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
from collections.abc import Mapping, Sequence

from felix_like.netns import run_in_netns

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NLMSG_ERROR = 2
NFPROTO_INET = 1
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1
NLA_F_NESTED = 0x8000
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}

_CMD = re.compile(r"^(add|delete) element (\S+) (\S+) (\S+) \{ (.*) \}$")


def _attr(typ: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), typ) + payload
    return data + b"\0" * (-len(data) % 4)


def _key(typ: str, element: str) -> bytes | None:
    """The kernel's key bytes of one element (each concatenated field padded to 4 bytes)."""
    parts = [p.strip() for p in element.split(" . ")]
    if typ == "ipv4_addr" and len(parts) == 1 and "/" not in parts[0]:
        return ipaddress.IPv4Address(parts[0]).packed
    if typ == "ipv4_addr . inet_proto . inet_service" and len(parts) == 3:
        proto = PROTOS.get(parts[1]) if not parts[1].isdigit() else int(parts[1])
        if proto is None or not parts[2].isdigit():
            return None
        return ipaddress.IPv4Address(parts[0]).packed + struct.pack("=B3x", proto) + struct.pack("!H2x", int(parts[2]))
    return None


def encode(cmds: Sequence[str], set_types: Mapping[str, str], table: str) -> list[bytes] | None:
    """The batch's inner messages for ``cmds``, or None when one of them is not a plain element op."""
    out = []
    for seq, cmd in enumerate(cmds, start=2):
        m = _CMD.match(cmd)
        if m is None or m.group(2) != "inet" or m.group(3) != table:
            return None
        op, name, members = m.group(1), m.group(4), m.group(5)
        typ = set_types.get(name)
        if typ is None:
            return None
        elems = b""
        for element in members.split(", "):
            key = _key(typ, element)
            if key is None:
                return None
            elems += _attr(NFTA_LIST_ELEM | NLA_F_NESTED,
                           _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, key)))
        body = (_attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
                + _attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, elems))
        msg_type = NFT_MSG_NEWSETELEM if op == "add" else NFT_MSG_DELSETELEM
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if op == "add" else 0)
        out.append(_msg((NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, seq, NFPROTO_INET, 0, body))
    return out


def _msg(typ: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    nfgen = struct.pack("=BBH", family, 0, socket.htons(res_id))
    return struct.pack("=IHHII", 16 + len(nfgen) + len(body), typ, flags, seq, 0) + nfgen + body


class ElementWriter:
    """One NETLINK_NETFILTER socket in the node's namespace, kept for the manager's life."""

    def __init__(self, netns: str | None) -> None:
        self._sock = run_in_netns(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                               NETLINK_NETFILTER))
        self._sock.bind((0, 0))
        self._sock.settimeout(5.0)
        self.batches = 0

    def apply(self, cmds: Sequence[str], set_types: Mapping[str, str], table: str) -> bool:
        """True: applied as one batch. False: not plain element ops (nothing sent). Raises OSError
        when the kernel refused the batch (then nothing of it was applied)."""
        inner = encode(cmds, set_types, table)
        if inner is None:
            return False
        if not inner:
            return True
        batch = (_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")
                 + b"".join(inner)
                 + _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, len(inner) + 2, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES,
                        b""))
        self._drain()
        self._sock.send(batch)
        acks, error = 0, 0
        while acks < len(inner):
            data = self._sock.recv(65536)
            i = 0
            while i + 16 <= len(data):
                length, typ, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, i)
                if typ == NLMSG_ERROR:
                    acks += 1
                    err = struct.unpack_from("=i", data, i + 16)[0]
                    error = error or err
                i += (length + 3) & ~3
                if length < 16:
                    break
            if error:
                break
        self.batches += 1
        if error:
            raise OSError(-error, f"nf_tables refused the element batch: {os.strerror(-error)}")
        return True

    def _drain(self) -> None:
        """Drop what a refused batch may have left unread (its remaining acks)."""
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self._sock.settimeout(5.0)

    def close(self) -> None:
        self._sock.close()
