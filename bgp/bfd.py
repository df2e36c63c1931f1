"""BFD (RFC 5880 asynchronous mode, RFC 5881 single hop, IPv4 and IPv6) for BGP sessions to directly
connected peers.

Why Tabby runs its own: ExaBGP has no BFD, and without it a dead top-of-rack router is noticed only at
the BGP hold time (90 s by default). With BFD at 300 ms x 3 the session's paths leave the RIB and the
kernel within about a second.

Layout: `Session` is the pure state machine (RFC 5880 6.2, 6.8.6, 6.8.7; time is passed in, so it is
tested without sockets or sleeps); `BfdRunner` is a thread of its own (the agent's asyncio loop can
never delay a packet or a detection) that owns the sockets, sends each session's packets with the RFC's
jitter (75-100 % of the interval, 75-90 % with detect multiplier 1) and reports state changes through a
callback, called in the runner's thread (the agent hops to its loop with `call_soon_threadsafe`).

RFC 5881 specifics: control packets to UDP 3784, from a source port in 49152-65535, sent with TTL 255;
received packets whose TTL is not 255 are dropped (IP_RECVTTL), which proves the peer is one hop away.
While a session is not Up it transmits at no less than one second (RFC 5880 6.8.3); once Up it switches
to the configured interval with a Poll sequence, and answers the peer's Poll with Final at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

__all__ = [
    "ADMIN_DOWN",
    "DOWN",
    "INIT",
    "STATE_NAMES",
    "UP",
    "BfdRunner",
    "Packet",
    "Session",
    "decode",
    "encode",
    "open_sockets",
]

log = structlog.get_logger("tabby.bgp.bfd")

ADMIN_DOWN, DOWN, INIT, UP = 0, 1, 2, 3
STATE_NAMES = {ADMIN_DOWN: "AdminDown", DOWN: "Down", INIT: "Init", UP: "Up"}
DIAG_NONE, DIAG_DETECT_EXPIRED, DIAG_NEIGHBOR_DOWN = 0, 1, 3

PORT = 3784
TTL = 255
IP_RECVTTL = 12  # Linux; not exported by Python's socket module
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 51, 52  # RFC 3542 (Linux values): the received Hop Limit as ancillary data
SLOW_US = 1_000_000
"""RFC 5880 6.8.3: while not Up, the desired transmit interval is at least one second."""

_FMT = "!BBBBIIIII"
LENGTH = 24


@dataclass(frozen=True, slots=True)
class Packet:
    """A BFD control packet without authentication (RFC 5880 4.1); intervals in microseconds."""

    state: int
    diag: int = 0
    detect_mult: int = 3
    my_disc: int = 0
    your_disc: int = 0
    desired_min_tx: int = SLOW_US
    required_min_rx: int = SLOW_US
    poll: bool = False
    final: bool = False


def encode(p: Packet) -> bytes:
    flags = (p.state << 6) | (0x20 if p.poll else 0) | (0x10 if p.final else 0)
    return struct.pack(
        _FMT, (1 << 5) | (p.diag & 0x1F), flags, p.detect_mult, LENGTH, p.my_disc, p.your_disc,
        p.desired_min_tx, p.required_min_rx, 0,
    )


def decode(data: bytes) -> Packet:
    """Parse and check a control packet (RFC 5880 6.8.6 first steps); ValueError says why it is dropped."""
    if len(data) < LENGTH:
        raise ValueError("shorter than 24 bytes")
    vd, flags, mult, length, my, your, tx, rx, _echo = struct.unpack(_FMT, data[:LENGTH])
    if vd >> 5 != 1:
        raise ValueError(f"version {vd >> 5}")
    if length < LENGTH or length > len(data):
        raise ValueError(f"length field {length}")
    if flags & 0x04:
        raise ValueError("authentication is not supported")
    if flags & 0x01:
        raise ValueError("multipoint bit set")
    if mult == 0:
        raise ValueError("detect multiplier 0")
    if my == 0:
        raise ValueError("my discriminator 0")
    state = flags >> 6
    if your == 0 and state not in (DOWN, ADMIN_DOWN):
        raise ValueError("your discriminator 0 in state " + STATE_NAMES[state])
    return Packet(state, vd & 0x1F, mult, my, your, tx, rx, bool(flags & 0x20), bool(flags & 0x10))


@dataclass
class Session:
    """One BFD session's state (RFC 5880 6.8.1) and its timers; every method takes `now` (monotonic s)."""

    peer: str
    local_disc: int
    tx_ms: int = 300
    rx_ms: int = 300
    detect_mult: int = 3
    state: int = DOWN
    diag: int = DIAG_NONE
    remote_disc: int = 0
    remote_state: int = DOWN
    remote_min_rx: int = 1
    remote_desired_tx: int = 0
    remote_mult: int = 0
    detect_deadline: float | None = None
    next_tx: float = 0.0
    polling: bool = False
    send_final: bool = False
    active_tx_us: int = SLOW_US
    changes: list[tuple[int, int]] = field(default_factory=list)
    last_rx: float | None = None
    #: The last detection-time expiry, measured (timer accuracy under load): ms from the last packet
    #: received to the moment Down was declared, the detection time in force then (multiplier x interval),
    #: and how late the expiry was handled after its deadline.
    last_detection: dict[str, float] | None = None

    # ---- timers
    def _desired_tx_us(self) -> int:
        return self.tx_ms * 1000 if self.state == UP else max(self.tx_ms * 1000, SLOW_US)

    def tx_interval(self) -> float:
        """Seconds between packets before jitter: the larger of our desired TX and the peer's required RX."""
        return max(self.active_tx_us, self.remote_min_rx) / 1e6

    def detection_time(self) -> float:
        """RFC 5880 6.8.4: remote detect multiplier x max(our required RX, its desired TX)."""
        return self.remote_mult * max(self.rx_ms * 1000, self.remote_desired_tx) / 1e6

    def jittered(self, rng: random.Random) -> float:
        low, high = (0.75, 0.90) if self.detect_mult == 1 else (0.75, 1.0)
        return self.tx_interval() * rng.uniform(low, high)

    # ---- state machine
    def _set(self, state: int, diag: int) -> None:
        if state != self.state:
            self.state = state
            self.diag = diag
            self.changes.append((state, diag))
            desired = self._desired_tx_us()
            if state == UP and desired < self.active_tx_us:
                # Faster timers: announced with a Poll sequence, and used at once (6.8.3 holds back only an
                # increase). The peer sets its detection time from the DesiredMinTx in our packets (6.8.4):
                # sending at the old 1 s pace while advertising 300 ms had it declare the session down.
                self.polling = True
                self.active_tx_us = desired
            elif state != UP:
                self.active_tx_us = desired
                self.polling = False

    def on_packet(self, pkt: Packet, now: float) -> None:
        """RFC 5880 6.8.6 from 'set bfd.RemoteDiscr' on (the packet passed `decode` and was matched)."""
        if pkt.your_disc and pkt.your_disc != self.local_disc:
            return
        interval = self.tx_interval()
        self._apply_packet(pkt, now)
        faster = self.tx_interval()
        if faster < interval and self.next_tx > now + faster:
            self.next_tx = now + faster  # a shorter interval applies to the packet already scheduled too

    def _apply_packet(self, pkt: Packet, now: float) -> None:
        self.remote_disc = pkt.my_disc
        self.remote_state = pkt.state
        self.remote_min_rx = pkt.required_min_rx
        self.remote_desired_tx = pkt.desired_min_tx
        self.remote_mult = pkt.detect_mult
        self.last_rx = now
        if pkt.final and self.polling:
            self.polling = False
            self.active_tx_us = self._desired_tx_us()
        if pkt.poll:
            self.send_final = True
        if pkt.state == ADMIN_DOWN:
            if self.state != DOWN:
                self._set(DOWN, DIAG_NEIGHBOR_DOWN)
        elif self.state == DOWN:
            if pkt.state == DOWN:
                self._set(INIT, DIAG_NONE)
            elif pkt.state == INIT:
                self._set(UP, DIAG_NONE)
        elif self.state == INIT:
            if pkt.state in (INIT, UP):
                self._set(UP, DIAG_NONE)
        elif self.state == UP and pkt.state == DOWN:
            self._set(DOWN, DIAG_NEIGHBOR_DOWN)
        self.detect_deadline = now + self.detection_time() if self.state in (INIT, UP) else None

    def check_timeout(self, now: float) -> None:
        if self.detect_deadline is not None and now >= self.detect_deadline and self.state in (INIT, UP):
            self.last_detection = {
                "measured_ms": round((now - self.last_rx) * 1000, 1) if self.last_rx is not None else -1.0,
                "configured_ms": round(self.detection_time() * 1000, 1),
                "late_ms": round((now - self.detect_deadline) * 1000, 1),
            }
            self._set(DOWN, DIAG_DETECT_EXPIRED)
            self.detect_deadline = None
            self.remote_disc = 0

    def packet(self) -> Packet:
        """The next control packet to send (clears a pending Final)."""
        final, self.send_final = self.send_final, False
        return Packet(
            state=self.state,
            diag=self.diag,
            detect_mult=self.detect_mult,
            my_disc=self.local_disc,
            your_disc=self.remote_disc,
            desired_min_tx=self._desired_tx_us(),
            required_min_rx=self.rx_ms * 1000,
            poll=self.polling and not final,
            final=final,
        )


def open_sockets(local_address: str) -> tuple[socket.socket, socket.socket]:
    """(receive socket on UDP 3784 with IP_RECVTTL, send socket from a port in 49152-65535, TTL 255), both
    bound to `local_address`, in the calling thread's network namespace (run it inside the node's)."""
    family = socket.AF_INET6 if ipaddress.ip_address(local_address).version == 6 else socket.AF_INET
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # RFC 5881 5: Hop Limit 255 for IPv6, checked on receipt the same way
            rx.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
        else:
            rx.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
        rx.bind((local_address, PORT))
        for port in random.sample(range(49152, 65536), 64):
            try:
                tx.bind((local_address, port))
                break
            except OSError:
                continue
        else:
            raise OSError("no free BFD source port in 49152-65535")
    except BaseException:
        rx.close()
        tx.close()
        raise
    return rx, tx


def _key(peer: str) -> str:
    try:
        return str(ipaddress.ip_address(peer))
    except ValueError:
        return peer


StateCallback = Callable[[str, int, int], None]
"""`(peer, new state, diagnostic)`, called in the runner's thread."""


class BfdRunner(threading.Thread):
    """Sessions for one local address, on their own thread. `add(peer)` / `remove(peer)` from any thread."""

    def __init__(self, sockets: tuple[socket.socket, socket.socket], on_state: StateCallback, *,
                 tx_ms: int = 300, rx_ms: int = 300, detect_mult: int = 3) -> None:
        super().__init__(name="bfd", daemon=True)
        self.rx, self.tx = sockets
        self.on_state = on_state
        self.tx_ms, self.rx_ms, self.detect_mult = tx_ms, rx_ms, detect_mult
        self.sessions: dict[str, Session] = {}
        self._by_disc: dict[int, Session] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._halt = threading.Event()
        self._rng = random.Random()
        self.dropped_ttl = 0
        self.dropped_bad = 0
        self.late_ms_max = 0.0  # worst lateness of a scheduled transmission (timer accuracy under load)

    def add(self, peer: str) -> None:
        peer = str(ipaddress.ip_address(peer))  # the form recvmsg reports (IPv6 compressed)
        with self._lock:
            if peer in self.sessions:
                return
            disc = self._rng.randrange(1, 2**32)
            while disc in self._by_disc:
                disc = self._rng.randrange(1, 2**32)
            sess = Session(peer, disc, self.tx_ms, self.rx_ms, self.detect_mult, next_tx=time.monotonic())
            self.sessions[peer] = sess
            self._by_disc[disc] = sess
        self._wake()

    def remove(self, peer: str) -> None:
        peer = str(ipaddress.ip_address(peer))
        with self._lock:
            sess = self.sessions.pop(peer, None)
            if sess is not None:
                self._by_disc.pop(sess.local_disc, None)
        if sess is not None:
            # tell the peer (AdminDown) so it does not count it as a failure
            with contextlib.suppress(OSError):
                self.tx.sendto(encode(Packet(ADMIN_DOWN, 7, self.detect_mult, sess.local_disc, sess.remote_disc)),
                               (peer, PORT))
        self._wake()

    def state(self, peer: str) -> int | None:
        with self._lock:
            sess = self.sessions.get(_key(peer))
            return None if sess is None else sess.state

    def detection_time_ms(self, peer: str) -> float | None:
        """The detection time in force now (ms; the peer's multiplier x the agreed interval), None if unknown:
        3 x 1 s until the Poll sequence to the configured timers has completed on both sides."""
        with self._lock:
            sess = self.sessions.get(_key(peer))
            return None if sess is None or not sess.remote_mult else round(sess.detection_time() * 1000, 1)

    def detection(self, peer: str) -> dict[str, float] | None:
        """The session's last detection-time expiry as measured (see Session.last_detection), None if none."""
        with self._lock:
            sess = self.sessions.get(_key(peer))
            return None if sess is None or sess.last_detection is None else dict(sess.last_detection)

    def stop(self) -> None:
        self._halt.set()
        self._wake()
        self.join(5)
        for s in (self.rx, self.tx):
            s.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.monotonic()
            with self._lock:
                sessions = list(self.sessions.values())
            deadline = now + 1.0
            for sess in sessions:
                if sess.next_tx <= now or sess.send_final:
                    self.late_ms_max = max(self.late_ms_max, (now - sess.next_tx) * 1000) if sess.next_tx else 0.0
                    self._send(sess)
                    sess.next_tx = now + sess.jittered(self._rng)
                sess.check_timeout(now)
                self._report(sess)
                deadline = min(deadline, sess.next_tx)
                if sess.detect_deadline is not None:
                    deadline = min(deadline, sess.detect_deadline)
            timeout = max(0.0, deadline - time.monotonic())
            try:
                ready, _, _ = select.select([self.rx, self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            if self.rx in ready:
                self._receive()

    def _send(self, sess: Session) -> None:
        try:
            self.tx.sendto(encode(sess.packet()), (sess.peer, PORT))
        except OSError as exc:
            log.debug("bfd.send_failed", peer=sess.peer, error=str(exc))

    def _receive(self) -> None:
        try:
            data, ancillary, _flags, addr = self.rx.recvmsg(512, socket.CMSG_SPACE(4))
        except OSError:
            return
        ttl = None
        for level, kind, value in ancillary:
            if len(value) >= 4 and ((level == socket.IPPROTO_IP and kind == socket.IP_TTL)
                                    or (level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT)):
                ttl = struct.unpack("i", value[:4])[0]
        if ttl != TTL:
            self.dropped_ttl += 1  # RFC 5881 5: not from a directly connected peer
            return
        try:
            pkt = decode(data)
        except ValueError:
            self.dropped_bad += 1
            return
        now = time.monotonic()
        with self._lock:
            sess = self._by_disc.get(pkt.your_disc) if pkt.your_disc else self.sessions.get(addr[0])
        if sess is None or sess.peer != addr[0]:
            self.dropped_bad += 1
            return
        sess.on_packet(pkt, now)
        self._report(sess)
        if sess.send_final:
            self._send(sess)

    def _report(self, sess: Session) -> None:
        while sess.changes:
            state, diag = sess.changes.pop(0)
            log.info("bfd.state", peer=sess.peer, state=STATE_NAMES[state], diag=diag)
            try:
                self.on_state(sess.peer, state, diag)
            except Exception:
                log.exception("bfd.callback_failed", peer=sess.peer)
