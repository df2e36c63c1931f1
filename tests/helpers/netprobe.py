"""Real TCP, UDP and ICMP probes and listeners inside network namespaces, from the test process.

Why in-process: a truth table of a few hundred cells per scenario cannot afford a process start
(``ip netns exec python ...``) per cell on a loaded machine. ``setns(CLONE_NEWNET)`` applies to the
calling thread only and a socket stays bound to the namespace it was created in, so a worker thread
enters the client's namespace, makes its socket there and probes; the listeners' sockets are made
the same way and then served by one selector thread. Every socket, thread and loop is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def enter_netns(netns: str) -> None:
    """This thread only: move into /run/netns/<netns> (or a path)."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread that entered ``netns``; its sockets stay in that namespace."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            enter_netns(netns)
            box["v"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["e"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    if "e" in box:
        raise box["e"]  # type: ignore[misc]
    return box["v"]  # type: ignore[return-value]


class Listeners:
    """TCP echo servers and UDP echo servers in namespaces, served by one selector thread.

    A TCP connection is accepted and echoed until the peer closes (so a long-lived connection can be
    held open for the conntrack tests); a UDP datagram is sent back to its sender."""

    def __init__(self, deadline_s: float = 900.0) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._end = time.monotonic() + deadline_s
        self._thread = threading.Thread(target=self._loop, daemon=True, name="netprobe-listeners")
        self._thread.start()

    def add(self, netns: str, tcp: Iterable[int] = (), udp: Iterable[int] = ()) -> None:
        def make() -> list[tuple[socket.socket, str]]:
            out = []
            for port in tcp:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                s.listen(256)
                s.setblocking(False)
                out.append((s, "listen"))
            for port in udp:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind(("0.0.0.0", port))
                u.setblocking(False)
                out.append((u, "udp"))
            return out

        for sock, kind in in_netns(netns, make):
            with self._lock:
                self._sel.register(sock, selectors.EVENT_READ, kind)

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._end:
            with self._lock:
                ready = self._sel.select(timeout=0) if self._sel.get_map() else []
            if not ready:
                time.sleep(0.002)
                continue
            for key, _ in ready:
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if key.data == "listen":
                        conn, _peer = sock.accept()
                        conn.setblocking(False)
                        with self._lock:
                            self._sel.register(conn, selectors.EVENT_READ, "conn")
                    elif key.data == "udp":
                        data, peer = sock.recvfrom(2048)
                        sock.sendto(data, peer)
                    else:
                        data = sock.recv(65536)
                        if data:
                            sock.send(data)
                        else:
                            raise ConnectionResetError
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    if key.data == "conn":
                        with self._lock:
                            self._sel.unregister(sock)
                        sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for key in list(self._sel.get_map().values()):
                with contextlib.suppress(OSError):
                    key.fileobj.close()  # type: ignore[union-attr]
            self._sel.close()


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _tcp(ip: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((ip, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _udp(ip: str, port: int, timeout: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        token = os.urandom(8)
        try:
            s.connect((ip, port))
            s.send(token)
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                s.settimeout(max(0.01, end - time.monotonic()))
                if s.recv(64) == token:
                    return True
        except OSError:
            return False
    return False


def _icmp(ip: str, timeout: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        ident, seq = random.randrange(1, 0xFFFF), random.randrange(1, 0xFFFF)
        payload = os.urandom(16)
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        packet = struct.pack("!BBHHH", 8, 0, _icmp_checksum(header + payload), ident, seq) + payload
        s.sendto(packet, (ip, 0))
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(2048)
            except OSError:
                return False
            ihl = (data[0] & 0x0F) * 4
            typ, _code, _ck, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if peer[0] == ip and typ == 0 and rid == ident and rseq == seq:
                return True


@dataclass(frozen=True)
class Probe:
    netns: str  # where the client runs
    ip: str  # the server's address
    proto: str  # "TCP", "UDP" or "ICMP"
    port: int = 0


def probe_one(p: Probe, timeout: float) -> bool:
    """One real connection attempt from ``p.netns``: TCP connect, UDP echo or ICMP echo."""
    enter_netns(p.netns)  # a pool thread: every task sets its own namespace first
    if p.proto == "TCP":
        return _tcp(p.ip, p.port, timeout)
    if p.proto == "UDP":
        return _udp(p.ip, p.port, timeout)
    if p.proto == "ICMP":
        return _icmp(p.ip, timeout)
    raise ValueError(f"unknown protocol {p.proto}")


class Prober:
    """A pool of worker threads that probe cells in parallel (each task enters its own namespace)."""

    def __init__(self, workers: int = 96) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="netprobe")

    def run(self, probes: Iterable[Probe], timeout: float) -> dict[Probe, bool]:
        items = list(dict.fromkeys(probes))
        results = self._pool.map(lambda p: probe_one(p, timeout), items)
        return dict(zip(items, results, strict=True))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
