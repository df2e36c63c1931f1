"""Who else commits to nf_tables in a node's namespace, from the kernel's own commit notifications.

Why: the policy table of a node with thousands of policies is tens of thousands of nft lines. Felix's
answer to drift (a hand edit, another program) is a periodic refresh; rebuilding that table every
90 s held the dataplane thread for up to a second, and every label change, pod start and route that
arrived meanwhile waited behind it. The kernel already says when anything changes: every nf_tables
commit multicasts one ``NFT_MSG_NEWGEN`` on ``NFNLGRP_NFTABLES`` carrying the committing thread's
name (``NFTA_GEN_PROC_NAME``, the task's comm). Tabby commits only from its dataplane thread,
named :data:`OWN_COMM`, so a generation with any other name is a foreign commit.

:class:`CommitMonitor` subscribes in the node's namespace with a classic BPF filter that lets only
the NEWGEN messages through (the per-object notifications of a 60,000-line rebuild never reach user
space), and :meth:`CommitMonitor.table_handle` asks the kernel for a table's handle: a table deleted
or re-created by someone else (``nft flush ruleset``) is seen at once, not a refresh interval later.
A lost notification (``ENOBUFS``) counts as a foreign commit: unknown state is drift.

While the group has a listener, the kernel builds a notification for every object a transaction
touches, even ones the BPF filter then drops: a full policy table load (56,000 commands at the
bench's size) took about 40% longer with the monitor subscribed. :meth:`CommitMonitor.quiet`
therefore leaves the group around one of our own big transactions and tells a foreign commit in
that window from the namespace's generation counter (``NFT_MSG_GETGEN`` before and after: more
generations than our own commits means someone else committed).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from felix_like.netlink import SO_ATTACH_FILTER, bpf_ins, parse_attrs, sock_fprog
from felix_like.netns import run_in_netns

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_DROP_MEMBERSHIP = 1, 2
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE, NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 0, 1, 15, 16
NFTA_GEN_ID, NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 1, 2, 3
NFTA_TABLE_NAME, NFTA_TABLE_HANDLE = 1, 4
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFPROTO_INET = 1
PR_SET_NAME = 15

#: The dataplane thread's name (at most 15 bytes: the kernel's comm); commits under any other name
#: are foreign.
OWN_COMM = "tabby-dataplane"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def name_this_thread(name: str = OWN_COMM) -> None:
    """Set the calling OS thread's comm (what NEWGEN reports for the commits it makes)."""
    if _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def _bpf_newgen_only() -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """A socket filter passing only skbs whose (first) message is NFT_MSG_NEWGEN. The kernel sends
    each NEWGEN in its own skb; classic BPF loads are big-endian, nlmsg_type is host order."""
    want = struct.unpack(">H", struct.pack("=H", (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN))[0]
    return sock_fprog(bpf_ins(0x28, 0, 0, 4)               # ldh [4]: nlmsg_type
                      + bpf_ins(0x15, 0, 1, want)          # jeq NEWGEN
                      + bpf_ins(0x06, 0, 0, 0xFFFFFFFF)    # ret all
                      + bpf_ins(0x06, 0, 0, 0))            # ret 0 (drop)


@dataclass(frozen=True)
class ForeignCommit:
    """One nf_tables generation someone else committed (``comm`` empty: notifications were lost)."""

    gen: int
    pid: int
    comm: str


class CommitMonitor:
    """NEWGEN notifications of one namespace, and table handle lookups there. Not thread-safe: used
    from the dataplane thread only."""

    def __init__(self, netns: str | None, own_comm: str = OWN_COMM) -> None:
        self.own_comm = own_comm
        self._filter, self._filter_buf = _bpf_newgen_only()

        def open_sockets() -> tuple[socket.socket, socket.socket]:
            mon = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER)
            req = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            try:
                mon.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._filter)
                mon.bind((0, 0))
                mon.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
                req.bind((0, 0))
                req.settimeout(2.0)
            except OSError:
                mon.close()
                req.close()
                raise
            return mon, req

        self._mon, self._req = run_in_netns(netns, open_sockets)
        self._seq = 0
        self.foreign_seen = 0
        self.lost = 0
        #: foreign commits seen by the generation counter while :meth:`quiet` (reported by :meth:`read`)
        self._unseen: list[ForeignCommit] = []

    def fileno(self) -> int:
        return self._mon.fileno()

    def read(self) -> list[ForeignCommit]:
        """Drain the pending notifications; the foreign commits among them (one with ``comm`` ""
        when the socket overflowed: some commits are unknown)."""
        out, self._unseen = self._unseen, []
        while True:
            try:
                data = self._mon.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    out.append(ForeignCommit(0, 0, ""))
                    continue
                raise
            off = 0
            while off + 20 <= len(data):
                ln, typ = struct.unpack_from("=IH", data, off)
                if ln < 16:
                    break
                if typ == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
                    attrs = parse_attrs(data, off + 20, off + ln)
                    comm = attrs.get(NFTA_GEN_PROC_NAME, b"").split(b"\0", 1)[0].decode(errors="replace")
                    if comm != self.own_comm:
                        gen = struct.unpack(">I", attrs[NFTA_GEN_ID])[0] if NFTA_GEN_ID in attrs else 0
                        pid = struct.unpack(">I", attrs[NFTA_GEN_PROC_PID])[0] if NFTA_GEN_PROC_PID in attrs else 0
                        out.append(ForeignCommit(gen, pid, comm or "?"))
                off += (ln + 3) & ~3
        self.foreign_seen += len(out)
        return out

    @property
    def pending(self) -> bool:
        """Foreign commits found by :meth:`quiet` that :meth:`read` has not returned yet."""
        return bool(self._unseen)

    @contextlib.contextmanager
    def quiet(self, own_commits: int = 1) -> Iterator[None]:
        """Around one of our own large transactions (``own_commits`` nf_tables commits at most): off
        the group, so the kernel builds no notifications for it; a foreign commit in the window is
        found by the generation counter instead and reported by the next :meth:`read`."""
        try:
            before = self.generation()
            self._mon.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, NFNLGRP_NFTABLES)
        except OSError:  # the counter cannot be read: stay subscribed (slower, never blind)
            yield
            return
        try:
            yield
        finally:
            try:
                self._mon.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
                after = self.generation()
                if after - before > own_commits:
                    self._unseen.append(ForeignCommit(after, 0, "?"))
            except OSError:
                self._unseen.append(ForeignCommit(0, 0, ""))  # unknown: counts as foreign (drift)

    def generation(self) -> int:
        """The namespace's current nf_tables generation id."""
        gen: int | None = None
        for typ, attrs in self._request(NFT_MSG_GETGEN, struct.pack("=BBH", socket.AF_UNSPEC, 0, 0), "GETGEN"):
            if typ == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN and NFTA_GEN_ID in attrs:
                gen = struct.unpack(">I", attrs[NFTA_GEN_ID])[0]
        if gen is None:
            raise OSError(errno.EPROTO, "GETGEN: no generation in the answer")
        return gen

    def _request(self, msg_type: int, body: bytes, what: str) -> list[tuple[int, dict[int, bytes]]]:
        """One nf_tables request on the request socket: its answers (type, attributes) until the ack."""
        self._seq += 1
        msg = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
                          NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body
        self._req.send(msg)
        out: list[tuple[int, dict[int, bytes]]] = []
        while True:
            data = self._req.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, typ, _flags, seq = struct.unpack_from("=IHHI", data, off)
                if ln < 16:
                    return out
                if seq == self._seq:
                    if typ == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, off + 16)[0]
                        if code == 0:
                            return out
                        raise OSError(code, what)
                    out.append((typ, parse_attrs(data, off + 20, off + ln)))
                off += (ln + 3) & ~3

    def table_handle(self, family: int, table: str) -> int | None:
        """The kernel's handle of ``table`` (None: there is no such table)."""
        body = struct.pack("=BBH", family, 0, 0)
        name = table.encode() + b"\0"
        attr = struct.pack("=HH", 4 + len(name), NFTA_TABLE_NAME) + name
        body += attr + b"\0" * (-len(attr) % 4)
        try:
            answers = self._request(NFT_MSG_GETTABLE, body, f"GETTABLE {table}")
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        handle: int | None = None
        for typ, attrs in answers:
            if typ == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE and NFTA_TABLE_HANDLE in attrs:
                handle = struct.unpack(">Q", attrs[NFTA_TABLE_HANDLE])[0]
        return handle

    def close(self) -> None:
        self._mon.close()
        self._req.close()
