"""The ExaBGP API codec (pure, no I/O): JSON lines from ExaBGP -> typed events, routes -> command lines.

Incoming lines become typed events (PeerState, Update, EndOfRib, Notification, Hello, ...) or ack strings
(`done`/`error`); anything that does not parse raises BadLine (the link logs and counts it, never crashes).
Outgoing commands are formatted from `bgp.types.Announcement` with every token validated, so no field can
smuggle a second command (a `;`, a newline) into ExaBGP.

Kept apart from the socket server (`bgp.relay_link`) so the part that reads untrusted input can be audited
and fuzzed on its own.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from bgp.types import (
    AS_CONFED_SEQUENCE,
    AS_CONFED_SET,
    AS_SEQUENCE,
    AS_SET,
    Announcement,
    GracefulRestart,
    Path,
    normalize_prefix,
)

__all__ = [
    "ACK_DONE",
    "ACK_ERROR",
    "BadLine",
    "Disconnected",
    "EndOfRib",
    "Event",
    "Hello",
    "Notification",
    "Open",
    "PeerState",
    "Shutdown",
    "Update",
    "format_announce",
    "format_eor",
    "format_refresh",
    "format_withdraw",
    "parse_line",
]


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
class Open:
    """The OPEN received from `peer` (`api { receive { open; } }`): its BGP Identifier, and its Graceful
    Restart capability (None: it sent none), which decides what happens to its paths when the session drops."""

    peer: str
    router_id: str
    asn: int
    hold_time: int
    graceful_restart: GracefulRestart | None = None


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


Event = Hello | Disconnected | PeerState | Open | Update | EndOfRib | Notification | Shutdown


class BadLine(ValueError):
    """A line from the relay that is not a message we understand (logged, counted, skipped)."""


# ---------------------------------------------------------------------------------------------
# parsing (pure)
# ---------------------------------------------------------------------------------------------
_IGNORED_TYPES = frozenset({"keepalive", "refresh", "negotiated", "fsm", "signal", "operational", "packets"})
_FREE_TEXT = frozenset({"reload in progress", "restart in progress", "shutdown in progress", "shutdown"})
ACK_DONE = "done"
ACK_ERROR = "error"


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


_SEGMENT_KINDS = frozenset({AS_SEQUENCE, AS_SET, AS_CONFED_SEQUENCE, AS_CONFED_SET})


def _as_path(value: Any) -> tuple[tuple[int, ...], tuple[tuple[str, tuple[int, ...]], ...]]:
    """ExaBGP 5 gives `{"0": {"element": "as-sequence", "value": [..]}, ...}` (older: a plain list).

    Returns every AS in order (loop detection needs them all) and the segments, the latter only when some
    segment is not an AS_SEQUENCE (AS_SET and confederation segments change the path length, and a
    reflected path must keep its AS_SETs)."""
    if isinstance(value, list):
        return tuple(_int(a, "as-path element") for a in value), ()
    segments = _dict(value, "as-path")
    flat: list[int] = []
    structure: list[tuple[str, tuple[int, ...]]] = []
    for key in sorted(segments, key=lambda k: int(k) if k.isascii() and k.isdigit() else -1):
        seg = _dict(segments[key], "as-path segment")
        kind = seg.get("element", AS_SEQUENCE)
        if kind not in _SEGMENT_KINDS:
            raise BadLine(f"as-path segment kind {str(kind)[:30]!r} unknown")
        ases = tuple(_int(a, "as-path element") for a in _list(seg.get("value"), "as-path segment value"))
        flat.extend(ases)
        structure.append((kind, ases))
    if all(kind == AS_SEQUENCE for kind, _ in structure):
        return tuple(flat), ()
    return tuple(flat), tuple(structure)


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
        out["as_path"], segments = _as_path(attr["as-path"])
        if segments:
            out["as_path_segments"] = segments
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


def _link_local(address: str) -> bool:
    return ":" in address and ipaddress.ip_address(address).is_link_local


def _update(peer: str, local_as: int, peer_as: int, update: dict[str, Any]) -> Update:
    attrs = _attributes(_dict(update.get("attribute", {}), "attribute"))
    # prefix -> next hop. An IPv6 MP_REACH_NLRI may carry a global and a link-local next hop (RFC 2545, FRR
    # sends both on a shared link); ExaBGP then lists every NLRI under each of them. One path per prefix and
    # peer: the global next hop wins (it is what the node's subnet check and the kernel route use).
    chosen: dict[str, str] = {}
    for family, by_nexthop in _dict(update.get("announce", {}), "announce").items():
        if family not in ("ipv4 unicast", "ipv6 unicast"):
            continue
        for nexthop, nlris in _dict(by_nexthop, "announce family").items():
            nh = _addr(nexthop, "next-hop")
            for item in _list(nlris, "nlri list"):
                prefix = _nlri(item)
                if prefix not in chosen or _link_local(chosen[prefix]):
                    chosen[prefix] = nh
    announces = [
        Path(prefix=prefix, next_hop=nh, peer_address=peer, peer_as=peer_as,
             ibgp=bool(peer_as) and peer_as == local_as, **attrs)
        for prefix, nh in chosen.items()
    ]
    withdraws: list[str] = []
    for family, nlris in _dict(update.get("withdraw", {}), "withdraw").items():
        if family not in ("ipv4 unicast", "ipv6 unicast"):
            continue
        withdraws.extend(_nlri(item) for item in _list(nlris, "withdraw list"))
    return Update(peer=peer, announces=tuple(announces), withdraws=tuple(withdraws))


_GR_FAMILIES = {"ipv4/unicast": "ipv4 unicast", "ipv6/unicast": "ipv6 unicast"}


def _graceful_restart(value: Any) -> GracefulRestart:
    """ExaBGP 5.0.15's rendering of the capability (`Graceful.json`), whose labels are swapped against
    RFC 4724: a family's list holds "restart" when its F (forwarding state) bit is set, and
    `restart-flags` holds "forwarding" when the R (restart state) bit is set. Families other than IPv4/IPv6
    unicast are not ours and are left out."""
    cap = _dict(value, "graceful-restart")
    families = []
    for name, flags in _dict(cap.get("address-family-flags", {}), "address-family-flags").items():
        flag_list = _list(flags, "address-family flags")
        if name in _GR_FAMILIES:
            families.append((_GR_FAMILIES[name], "restart" in flag_list))
    return GracefulRestart(
        restart_time=_int(cap.get("time"), "graceful-restart time", 0, 4095),
        families=tuple(sorted(families)),
        restarting="forwarding" in _list(cap.get("restart-flags", []), "restart-flags"),
    )


def _open(peer: str, neighbor: dict[str, Any]) -> Open | None:
    if neighbor.get("direction", "receive") != "receive":
        return None  # our own OPEN (only if someone subscribes `send { open; }`): nothing to learn
    message = _dict(neighbor.get("open"), "open")
    caps = _dict(message.get("capabilities", {}), "capabilities")
    # a received OPEN's capabilities are keyed by their code as a number ("64": ExaBGP stores the raw byte);
    # the name is what ExaBGP would print for a capability it built itself
    gr = caps.get("64", caps.get("graceful-restart"))
    return Open(
        peer=peer,
        router_id=_addr(message.get("router_id"), "router_id"),
        asn=_int(message.get("asn"), "open asn"),
        hold_time=_int(message.get("hold_time"), "hold_time", 0, 65535),
        graceful_restart=None if gr is None else _graceful_restart(gr),
    )


def parse_line(line: str) -> Event | str | None:
    """One line from the relay -> an Event, an ack string ("done"/"error"), or None (known but not interesting).

    Raises BadLine for anything else. Pure, so it can be fuzzed without sockets.
    """
    text = line.strip()
    if not text:
        return None
    if text in (ACK_DONE, ACK_ERROR):
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
        if answer in (ACK_DONE, ACK_ERROR):
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
    if kind == "open":
        return _open(peer, neighbor)
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
    if ann.as_path_segments:
        rendered = _render_segments(ann.as_path_segments)
        if rendered:
            parts.append("as-path " + rendered)
    elif ann.as_path:
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


def _render_segments(segments: tuple[tuple[str, tuple[int, ...]], ...]) -> str:
    """ExaBGP's as-path syntax: `[ a b ]` an AS_SEQUENCE, `( c d )` an AS_SET, one after the other.
    Confederation segments are left out: Tabby is in no confederation, and RFC 5065 5 says they must not
    leave one."""
    out = []
    for kind, ases in segments:
        text = " ".join(str(_check_u32(a, "AS")) for a in ases)
        if kind == AS_SEQUENCE and ases:
            out.append(f"[ {text} ]")
        elif kind == AS_SET and ases:
            out.append(f"( {text} )")
        elif kind not in (AS_CONFED_SEQUENCE, AS_CONFED_SET, AS_SEQUENCE, AS_SET):
            raise ValueError(f"as-path segment kind {kind!r}")
    return " ".join(out)


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
