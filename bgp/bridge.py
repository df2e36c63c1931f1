"""The agent's end of the ExaBGP API: a unix socket server that the `exabgp_api.py` relay connects to.

Incoming lines become typed events (PeerState, Update, EndOfRib, Notification, Hello, ...); acks
(`done`/`error`, plain or JSON) are drained and matched to the oldest command awaiting one; anything
that does not parse is logged and counted, never raised. Outgoing commands are formatted from
`bgp.types.Announcement` with every token validated, so no field can smuggle a second command (a `;`,
a newline) into ExaBGP.

Why the agent is the server: ExaBGP (and so the relay) may outlive the agent. A restarted agent binds
the same path again and the relay, which retries forever, reconnects and sends a hello listing the
routes ExaBGP still announces plus the last state line of every peer (marked `replayed` here).

Flow control: the reader never waits on the consumer for long (events go into a bounded queue; if the
consumer stalls until the queue is full the reader waits, the relay's buffer grows, and at its cap
the relay drops the connection and the agent resyncs through the next hello — ExaBGP itself is never
blocked because the relay always drains its pipe). Writes await `drain()`, so a slow ExaBGP slows the
agent's writer instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from bgp.types import Announcement, Path, normalize_prefix

__all__ = [
    "BadLine",
    "BgpBridge",
    "BridgeStats",
    "Disconnected",
    "EndOfRib",
    "Event",
    "Hello",
    "Notification",
    "PeerState",
    "Shutdown",
    "Update",
    "format_announce",
    "format_eor",
    "format_refresh",
    "format_withdraw",
    "parse_line",
]

#: Seconds a command write may wait for the relay to read before the link is dropped.
DRAIN_TIMEOUT_S = 10.0
log = structlog.get_logger("tabby.bgp.bridge")

MAX_LINE = 1024 * 1024
"""Longest line accepted from the relay; longer ones are discarded up to their newline and counted bad."""


# ---------------------------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hello:
    """The relay (re)connected. `routes`: announce commands ExaBGP still holds (to diff against the desired set);
    `dropped`: lines the relay could not deliver while no agent was connected."""

    helper_pid: int
    exabgp_pid: int
    dropped: int
    routes: tuple[str, ...]
    replay: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The relay's connection closed (ExaBGP stopped, relay respawned, or the relay dropped us for being slow)."""

    reason: str


@dataclass(frozen=True, slots=True)
class PeerState:
    """A session state change: `state` is ExaBGP's `connected`, `up` or `down`; `replayed` marks a state the relay
    re-sent on reconnection (the change happened while no agent was listening, or earlier)."""

    peer: str
    state: str
    reason: str = ""
    local_address: str = ""
    local_as: int = 0
    peer_as: int = 0
    time: float = 0.0
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Update:
    """One UPDATE received from `peer`: announced paths (with attributes) and withdrawn prefixes."""

    peer: str
    announces: tuple[Path, ...] = ()
    withdraws: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndOfRib:
    """The peer finished sending its table for `family` (graceful restart: sweep its stale paths now)."""

    peer: str
    family: str = "ipv4 unicast"


@dataclass(frozen=True, slots=True)
class Notification:
    """A NOTIFICATION sent or received on a session (the reason a session died, for `node status`)."""

    peer: str
    direction: str
    code: int
    subcode: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """ExaBGP said it is exiting (all its sessions are about to drop)."""


Event = Hello | Disconnected | PeerState | Update | EndOfRib | Notification | Shutdown


class BadLine(ValueError):
    """A line from the relay that is not a message we understand (logged, counted, skipped)."""


@dataclass
class BridgeStats:
    """Counters for `tabbyctl node status` and tests: how much came through and how much was refused."""

    lines: int = 0
    events: int = 0
    bad_lines: int = 0
    ignored: int = 0
    acks_done: int = 0
    acks_error: int = 0
    acks_unmatched: int = 0
    commands: int = 0
    commands_dropped: int = 0
    connections: int = 0
    last_bad: str = ""
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# parsing (pure)
# ---------------------------------------------------------------------------------------------
_IGNORED_TYPES = frozenset({"open", "keepalive", "refresh", "negotiated", "fsm", "signal", "operational", "packets"})
_FREE_TEXT = frozenset({"reload in progress", "restart in progress", "shutdown in progress", "shutdown"})
_ACK_DONE = "done"
_ACK_ERROR = "error"


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadLine(f"{what} is not a string")
    return value


def _int(value: Any, what: str, low: int = 0, high: int = 2**32 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadLine(f"{what} is not an integer in {low}..{high}")
    return value


def _addr(value: Any, what: str) -> str:
    text = _str(value, what)
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        raise BadLine(f"{what} {text[:60]!r} is not an IP address") from None


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadLine(f"{what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadLine(f"{what} is not a list")
    return value


def _as_path(value: Any) -> tuple[int, ...]:
    """ExaBGP 5 gives `{"0": {"element": "as-sequence", "value": [..]}, ...}` (older: a plain list). AS_SET and
    confederation segments are flattened in order: loop detection needs every AS, length is not decided here."""
    if isinstance(value, list):
        return tuple(_int(a, "as-path element") for a in value)
    segments = _dict(value, "as-path")
    out: list[int] = []
    for key in sorted(segments, key=lambda k: int(k) if k.isascii() and k.isdigit() else -1):
        seg = _dict(segments[key], "as-path segment")
        out.extend(_int(a, "as-path element") for a in _list(seg.get("value"), "as-path segment value"))
    return tuple(out)


def _communities(value: Any, parts: int, what: str) -> tuple[str, ...]:
    out = []
    for item in _list(value, what):
        if isinstance(item, list) and len(item) == parts:
            out.append(":".join(str(_int(x, what)) for x in item))
        elif isinstance(item, str) and re.fullmatch(rf"\d{{1,10}}(:\d{{1,10}}){{{parts - 1}}}", item, re.ASCII):
            out.append(":".join(str(_int(int(x), what)) for x in item.split(":")))
        else:
            raise BadLine(f"{what} element {item!r:.40} is not {parts} numbers")
    return tuple(out)


def _attributes(attr: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "origin" in attr:
        origin = _str(attr["origin"], "origin")
        if origin not in ("igp", "egp", "incomplete"):
            raise BadLine(f"origin {origin[:20]!r} unknown")
        out["origin"] = origin
    if "as-path" in attr:
        out["as_path"] = _as_path(attr["as-path"])
    if "med" in attr:
        out["med"] = _int(attr["med"], "med")
    if "local-preference" in attr:
        out["local_pref"] = _int(attr["local-preference"], "local-preference")
    if "community" in attr:
        out["communities"] = _communities(attr["community"], 2, "community")
    if "large-community" in attr:
        out["large_communities"] = _communities(attr["large-community"], 3, "large-community")
    if "originator-id" in attr:
        out["originator_id"] = _addr(attr["originator-id"], "originator-id")
    if "cluster-list" in attr:
        out["cluster_list"] = tuple(_addr(c, "cluster-list") for c in _list(attr["cluster-list"], "cluster-list"))
    return out


def _nlri(item: Any) -> str:
    text = item if isinstance(item, str) else _str(_dict(item, "nlri entry").get("nlri"), "nlri")
    try:
        return normalize_prefix(text)
    except ValueError:
        raise BadLine(f"nlri {text[:60]!r} is not a prefix") from None


def _update(peer: str, local_as: int, peer_as: int, update: dict[str, Any]) -> Update:
    attrs = _attributes(_dict(update.get("attribute", {}), "attribute"))
    announces: list[Path] = []
    for family, by_nexthop in _dict(update.get("announce", {}), "announce").items():
        if family not in ("ipv4 unicast", "ipv6 unicast"):
            continue
        for nexthop, nlris in _dict(by_nexthop, "announce family").items():
            nh = _addr(nexthop, "next-hop")
            for item in _list(nlris, "nlri list"):
                announces.append(
                    Path(
                        prefix=_nlri(item),
                        next_hop=nh,
                        peer_address=peer,
                        peer_as=peer_as,
                        ibgp=bool(peer_as) and peer_as == local_as,
                        **attrs,
                    )
                )
    withdraws: list[str] = []
    for family, nlris in _dict(update.get("withdraw", {}), "withdraw").items():
        if family not in ("ipv4 unicast", "ipv6 unicast"):
            continue
        withdraws.extend(_nlri(item) for item in _list(nlris, "withdraw list"))
    return Update(peer=peer, announces=tuple(announces), withdraws=tuple(withdraws))


def parse_line(line: str) -> Event | str | None:
    """One line from the relay -> an Event, an ack string ("done"/"error"), or None (known but not interesting).

    Raises BadLine for anything else. Pure, so it can be fuzzed without sockets.
    """
    text = line.strip()
    if not text:
        return None
    if text in (_ACK_DONE, _ACK_ERROR):
        return text
    if not text.startswith("{"):
        # ExaBGP answers a few commands with free text before the ack; only those are expected
        if text in _FREE_TEXT:
            return None
        raise BadLine("not JSON and not an ack")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        raise BadLine("invalid JSON") from None
    msg = _dict(msg, "message")
    if "answer" in msg:
        answer = msg["answer"]
        if answer in (_ACK_DONE, _ACK_ERROR):
            return answer
        raise BadLine("unknown answer")
    kind = msg.get("type")
    if kind == "tabby-hello":
        return Hello(
            helper_pid=_int(msg.get("pid"), "pid"),
            exabgp_pid=_int(msg.get("exabgp_pid"), "exabgp_pid"),
            dropped=_int(msg.get("dropped", 0), "dropped"),
            routes=tuple(_str(r, "route") for r in _list(msg.get("routes", []), "routes")),
            replay=_int(msg.get("replay", 0), "replay"),
        )
    if not isinstance(kind, str):
        raise BadLine("no message type")
    if kind in _IGNORED_TYPES:
        return None
    if kind == "notification" and msg.get("notification") == "shutdown":
        return Shutdown()
    neighbor = _dict(msg.get("neighbor"), "neighbor")
    address = _dict(neighbor.get("address"), "neighbor.address")
    peer = _addr(address.get("peer"), "neighbor.address.peer")
    asn = _dict(neighbor.get("asn", {}), "neighbor.asn")
    local_as = _int(asn.get("local", 0), "asn.local")
    peer_as = _int(asn.get("peer", 0), "asn.peer")
    if kind == "state":
        state = _str(neighbor.get("state"), "state")
        if state not in ("connected", "up", "down"):
            raise BadLine(f"state {state[:20]!r} unknown")
        stamp = msg.get("time", 0.0)
        return PeerState(
            peer=peer,
            state=state,
            reason=_str(neighbor.get("reason", ""), "reason")[:500],
            local_address=_str(address.get("local", ""), "neighbor.address.local"),
            local_as=local_as,
            peer_as=peer_as,
            time=float(stamp) if isinstance(stamp, int | float) and not isinstance(stamp, bool) else 0.0,
        )
    if kind == "update":
        message = _dict(neighbor.get("message"), "neighbor.message")
        if "eor" in message:
            eor = _dict(message["eor"], "eor")
            return EndOfRib(peer=peer, family=f"{_str(eor.get('afi'), 'afi')} {_str(eor.get('safi'), 'safi')}")
        return _update(peer, local_as, peer_as, _dict(message.get("update"), "update"))
    if kind == "notification":
        note = _dict(neighbor.get("notification"), "notification")
        return Notification(
            peer=peer,
            direction=_str(neighbor.get("direction", ""), "direction"),
            code=_int(note.get("code"), "code", 0, 255),
            subcode=_int(note.get("subcode"), "subcode", 0, 255),
            message=_str(note.get("message", ""), "message")[:500],
        )
    raise BadLine(f"unknown message type {kind[:30]!r}")


# ---------------------------------------------------------------------------------------------
# commands (pure)
# ---------------------------------------------------------------------------------------------
_COMMUNITY = re.compile(r"^\d{1,10}:\d{1,10}$")
_LARGE = re.compile(r"^\d{1,10}:\d{1,10}:\d{1,10}$")
_FAMILIES = ("ipv4 unicast", "ipv6 unicast")


def _peer_prefix(peer: str | None) -> str:
    return "" if peer is None else f"neighbor {ipaddress.ip_address(peer)} "


def _check_u32(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"{what} {value!r} is not a 32-bit unsigned integer")
    return value


def format_announce(ann: Announcement, peer: str | None = None) -> str:
    """`[neighbor IP ]announce route P next-hop NH origin O [as-path [..]] [med] [local-preference] [community [..]]
    [large-community [..]] [originator-id] [cluster-list [..]]`, every token validated."""
    prefix = normalize_prefix(ann.prefix)
    nh = "self" if ann.next_hop == "self" else str(ipaddress.ip_address(ann.next_hop))
    if ann.origin not in ("igp", "egp", "incomplete"):
        raise ValueError(f"origin {ann.origin!r}")
    parts = [f"{_peer_prefix(peer)}announce route {prefix} next-hop {nh} origin {ann.origin}"]
    if ann.as_path:
        parts.append("as-path [ " + " ".join(str(_check_u32(a, "AS")) for a in ann.as_path) + " ]")
    if ann.med is not None:
        parts.append(f"med {_check_u32(ann.med, 'med')}")
    if ann.local_pref is not None:
        parts.append(f"local-preference {_check_u32(ann.local_pref, 'local-preference')}")
    if ann.communities:
        for c in ann.communities:
            if not _COMMUNITY.match(c) or any(int(x) > 65535 for x in c.split(":")):
                raise ValueError(f"community {c!r} is not aa:nn")
        parts.append("community [ " + " ".join(ann.communities) + " ]")
    if ann.large_communities:
        for c in ann.large_communities:
            if not _LARGE.match(c) or any(int(x) >= 2**32 for x in c.split(":")):
                raise ValueError(f"large community {c!r} is not aa:nn:mm")
        parts.append("large-community [ " + " ".join(ann.large_communities) + " ]")
    if ann.originator_id:
        parts.append(f"originator-id {ipaddress.IPv4Address(ann.originator_id)}")
    if ann.cluster_list:
        parts.append("cluster-list [ " + " ".join(str(ipaddress.IPv4Address(c)) for c in ann.cluster_list) + " ]")
    return " ".join(parts)


def format_withdraw(prefix: str, peer: str | None = None) -> str:
    """`[neighbor IP ]withdraw route P next-hop self` (ExaBGP keys routes by prefix; next-hop pleases the parser)."""
    return f"{_peer_prefix(peer)}withdraw route {normalize_prefix(prefix)} next-hop self"


def _family(family: str) -> str:
    if family not in _FAMILIES:
        raise ValueError(f"family {family!r} not one of {_FAMILIES}")
    return family


def format_eor(peer: str | None = None, family: str = "ipv4 unicast") -> str:
    """End-of-RIB (we run `manual-eor`: ExaBGP never sends it by itself)."""
    return f"{_peer_prefix(peer)}announce eor {_family(family)}"


def format_refresh(peer: str | None = None, family: str = "ipv4 unicast") -> str:
    """ROUTE-REFRESH: ask the peer to resend its table (a restarted agent lost what it had received)."""
    return f"{_peer_prefix(peer)}announce route-refresh {_family(family)}"


# ---------------------------------------------------------------------------------------------
# the socket server
# ---------------------------------------------------------------------------------------------
class BgpBridge:
    """Unix socket server for the relay; one live connection at a time (a new one replaces the old).

    Use: `await bridge.start()`, then consume `await bridge.next_event()` (or iterate `bridge.events()`),
    and send with `await bridge.send(cmd)` / `announce()` / `withdraw()` / `eor()`. `send` returns False (and
    counts the command as dropped) when no relay is connected: the owner of the desired state re-sends
    everything on the next Hello, so queueing here would only duplicate work.
    """

    def __init__(self, socket_path: str, *, max_line: int = MAX_LINE, queue_size: int = 100_000) -> None:
        self.socket_path = socket_path
        self.max_line = max_line
        self.stats = BridgeStats()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_size)
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[str] = deque()
        self._replay_left = 0
        self._connected = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self.hello: Hello | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the socket (replacing a stale one left by a previous agent) and accept the relay."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        self._server = await asyncio.start_unix_server(self._accept, path=self.socket_path, limit=self.max_line)
        os.chmod(self.socket_path, 0o600)
        log.info("bridge listening", socket=self.socket_path)

    async def close(self) -> None:
        """Stop listening and drop the relay's connection (ExaBGP keeps running; the relay will retry)."""
        if self._server is not None:
            self._server.close()
        await self._drop("bridge closed")
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait (bounded) until a relay is connected."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- events ------------------------------------------------------------------------------
    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event; raises TimeoutError after `timeout` seconds."""
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def events(self):  # type: ignore[no-untyped-def]
        """Async iterator over events, forever."""
        while True:
            yield await self._queue.get()

    # ---- commands ----------------------------------------------------------------------------
    async def send(self, command: str) -> bool:
        """Write one command line; waits for the socket to drain (backpressure). False when not connected."""
        if "\n" in command or "\r" in command or not command.strip():
            raise ValueError("a command is one non-empty line")
        async with self._write_lock:
            writer = self._writer
            if writer is None or writer.is_closing():
                self.stats.commands_dropped += 1
                log.debug("command dropped: no relay connected", command=command[:200])
                return False
            try:
                writer.write(command.encode("ascii") + b"\n")
                await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)
            except (ConnectionError, OSError) as exc:
                self.stats.commands_dropped += 1
                log.warning("command write failed", command=command[:200], error=str(exc))
                return False
            except TimeoutError:
                # A relay (or ExaBGP) that stopped reading would otherwise hold every caller forever.
                # Dropping the link is safe: the relay's next hello makes the speaker re-send everything.
                self.stats.commands_dropped += 1
                log.warning("relay stalled: dropping the API link", command=command[:200])
                writer.close()
                return False
            self._pending.append(command)
            self.stats.commands += 1
            return True

    async def announce(self, ann: Announcement, peer: str | None = None) -> bool:
        return await self.send(format_withdraw(ann.prefix, peer) if ann.withdraw else format_announce(ann, peer))

    async def withdraw(self, prefix: str, peer: str | None = None) -> bool:
        return await self.send(format_withdraw(prefix, peer))

    async def eor(self, peer: str | None = None, family: str = "ipv4 unicast") -> bool:
        return await self.send(format_eor(peer, family))

    async def refresh(self, peer: str | None = None, family: str = "ipv4 unicast") -> bool:
        return await self.send(format_refresh(peer, family))

    async def reload(self) -> bool:
        """API reload (same as SIGUSR1): re-read the config; unchanged sessions stay up."""
        return await self.send("reload")

    # ---- connection handling -----------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            await self._drop("replaced by a new relay connection")
        self._writer = writer
        self._pending.clear()
        self._replay_left = 0
        self.stats.connections += 1
        self._connected.set()
        task = asyncio.current_task()
        self._reader_task = task
        try:
            await self._read_loop(reader)
        except (ConnectionError, OSError) as exc:
            log.info("relay connection error", error=str(exc))
        except asyncio.CancelledError:
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self._connected.clear()
                self._pending.clear()
                await self._emit(Disconnected("relay connection closed"))
            writer.close()

    async def _drop(self, reason: str) -> None:
        writer, task = self._writer, self._reader_task
        self._writer = None
        self._connected.clear()
        if writer is not None:
            writer.close()
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)
        if writer is not None:
            await self._emit(Disconnected(reason))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        discarding = False
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buf += chunk
            while True:
                cut = buf.find(b"\n")
                if cut < 0:
                    if len(buf) > self.max_line:
                        if not discarding:
                            self._bad(bytes(buf[:120]), f"line longer than {self.max_line} bytes")
                        discarding = True
                        buf.clear()
                    break
                raw = bytes(buf[:cut])
                del buf[: cut + 1]
                if discarding:
                    discarding = False
                    continue
                if len(raw) > self.max_line:
                    self._bad(raw[:120], f"line longer than {self.max_line} bytes")
                    continue
                await self.handle_line(raw)

    def _bad(self, raw: bytes, why: str) -> None:
        self.stats.bad_lines += 1
        self.stats.last_bad = why
        log.warning("bad line from ExaBGP skipped", reason=why, line=raw[:120].decode("utf-8", "replace"))

    async def handle_line(self, raw: bytes) -> None:
        """Parse one line and act on it; never raises for bad input (public so tests can inject lines)."""
        self.stats.lines += 1
        try:
            text = raw.decode("utf-8")
            result = parse_line(text)
        except UnicodeDecodeError:
            self._bad(raw, "not UTF-8")
            return
        except BadLine as exc:
            self._bad(raw, str(exc))
            return
        except Exception as exc:  # a parser bug must not kill the bridge: log loudly, keep going
            self._bad(raw, f"parser error {type(exc).__name__}: {exc}")
            return
        if result is None:
            self.stats.ignored += 1
            return
        if isinstance(result, str):
            self._ack(result)
            return
        if isinstance(result, Hello):
            self.hello = result
            self._replay_left = result.replay
            log.info(
                "relay connected",
                helper_pid=result.helper_pid,
                exabgp_pid=result.exabgp_pid,
                dropped=result.dropped,
                routes=len(result.routes),
            )
        elif isinstance(result, PeerState) and self._replay_left > 0:
            self._replay_left -= 1
            result = PeerState(**{**_fields(result), "replayed": True})
        await self._emit(result)

    def _ack(self, answer: str) -> None:
        command = self._pending.popleft() if self._pending else None
        if command is None:
            self.stats.acks_unmatched += 1
        if answer == _ACK_DONE:
            self.stats.acks_done += 1
            return
        self.stats.acks_error += 1
        self.stats.errors = [*self.stats.errors[-19:], command or "?"]
        log.warning("ExaBGP refused a command", command=(command or "?")[:200])

    async def _emit(self, event: Event) -> None:
        self.stats.events += 1
        await self._queue.put(event)


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def stamp() -> float:
    """Wall-clock time for `since` columns (kept here so tests can patch one place)."""
    return time.time()
