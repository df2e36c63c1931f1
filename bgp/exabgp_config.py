"""Render ExaBGP 5.0 configuration text and environment from plain peer data (pure: no I/O).

The node agent owns routing decisions; ExaBGP only speaks the protocol. So the config holds sessions
and nothing else: no static routes (every announcement goes through the API process, which makes the
agent the single source of truth and lets a reload never touch routes), `manual-eor` on every session
(the agent sends End-of-RIB only after it has re-announced everything, which is what graceful restart
needs), `receive { open; }` (a peer's graceful-restart capability and BGP Identifier are only in its
OPEN), and one `process tabby` that relays the API to the agent's unix socket.

Output is deterministic (peers sorted by address, fixed key order) so that "did the config change?"
is a string comparison and golden files stay stable. `session_key` tells which peers changed, so the
speaker can decide between a reload (only some sessions touched) and a restart (global identity
changed).

ExaBGP 5.0 facts used here (checked against the 5.0.15 source):
- the listening socket is configured by environment only: `exabgp.tcp.bind` (space separated IPs,
  empty = do not listen) and `exabgp.tcp.port`; environment names may use `_` instead of `.`;
- `connect N` is the peer's port, `listen N` a per-neighbor listen port (not used: one port per node);
- `md5-base64 true` lets any password through the tokenizer unquoted (we always base64 it);
- GTSM (ttlSecurity N hops): `outgoing-ttl 255; incoming-ttl 256-N`;
- keepalive is always hold-time / 3 in ExaBGP (PeerSpec.keepalive cannot be rendered);
- on SIGUSR1 (or API `reload`) ExaBGP compares each neighbor (router-id, ASNs, addresses, ports,
  hold-time, md5, ttl, capabilities, families) and re-establishes only those that differ; added ones
  start, removed ones stop, identical ones keep their session and their API-injected routes.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bgp.types import PeerSpec, SpeakerSpec

__all__ = [
    "API_PROCESS",
    "GTSM_TTL",
    "ExabgpConfig",
    "api_command",
    "build",
    "families_for",
    "render",
    "render_env",
    "render_neighbor",
    "session_key",
]

API_PROCESS = "tabby"
"""Name of the API process stanza; neighbors reference it in `api { processes [tabby]; }`."""

GTSM_TTL = 255


@dataclass(frozen=True, slots=True)
class ExabgpConfig:
    """Everything the speaker needs to (re)start or reload ExaBGP: config text, environment, listen identity.

    `restart_key` holds the values that ExaBGP reads only at start-up (the listen socket, the API
    process command line): when it differs between two configs a reload is not enough.
    """

    text: str
    env: Mapping[str, str]
    restart_key: tuple[str, ...]
    peers: Mapping[str, tuple[object, ...]]


def families_for(peer: PeerSpec, *, dual_stack: bool = False) -> tuple[str, ...]:
    """The AFI/SAFIs for a session: the peer address's family, both when `dual_stack` (MP-BGP over one session)."""
    v6 = ipaddress.ip_address(peer.address).version == 6
    if dual_stack:
        return ("ipv4 unicast", "ipv6 unicast")
    return ("ipv6 unicast",) if v6 else ("ipv4 unicast",)


def api_command(python: str, helper: str, socket_path: str) -> str:
    """The `run` line for the API helper: the venv's interpreter with -I -S (fast start, no site packages).

    ExaBGP splits `run` on whitespace (no shell), so paths with spaces are refused here rather than
    failing later inside ExaBGP.
    """
    parts = (python, "-I", "-S", helper, socket_path)
    for part in parts:
        if not part or any(ch.isspace() or ch in ";{}\"'" for ch in part):
            raise ValueError(f"API helper path {part!r} must be non-empty with no spaces, quotes, ';' or braces")
    return " ".join(parts)


def _local_address(peer: PeerSpec, speaker: SpeakerSpec) -> str:
    return peer.local_address or "auto"


def session_key(peer: PeerSpec, speaker: SpeakerSpec, *, dual_stack: bool = False) -> tuple[object, ...]:
    """What ExaBGP compares on reload for one neighbor: equal keys mean the session is left alone."""
    return (
        speaker.router_id,
        peer.local_as,
        peer.peer_as,
        _local_address(peer, speaker),
        peer.port,
        peer.passive,
        peer.hold_time,
        peer.password,
        peer.ttl_security,
        peer.graceful_restart,
        families_for(peer, dual_stack=dual_stack),
    )


def _check_peer(peer: PeerSpec) -> None:
    ipaddress.ip_address(peer.address)
    if peer.local_address:
        ipaddress.ip_address(peer.local_address)
    for asn in (peer.peer_as, peer.local_as):
        if not 0 < asn < 2**32:
            raise ValueError(f"peer {peer.address}: AS number {asn} out of range")
    if not 0 < peer.port < 65536:
        raise ValueError(f"peer {peer.address}: port {peer.port} out of range")
    if peer.hold_time != 0 and not 3 <= peer.hold_time <= 65535:
        raise ValueError(f"peer {peer.address}: hold time {peer.hold_time} must be 0 or 3..65535")
    if peer.ttl_security is not None and not 1 <= peer.ttl_security <= GTSM_TTL:
        raise ValueError(f"peer {peer.address}: ttlSecurity {peer.ttl_security} must be 1..255 hops")
    if peer.graceful_restart is not None and not 0 <= peer.graceful_restart <= 4095:
        raise ValueError(f"peer {peer.address}: graceful restart time {peer.graceful_restart} must be 0..4095")


def render_neighbor(peer: PeerSpec, speaker: SpeakerSpec, *, dual_stack: bool = False) -> str:
    """One `neighbor` block. Every option is always written (explicit beats ExaBGP's defaults, which moved
    between releases), except md5/ttl/graceful-restart which are absent when not wanted."""
    _check_peer(peer)
    lines = [
        f"neighbor {peer.address} {{",
        f'    description "{peer.type}: {_safe(peer.name)}";',
        f"    router-id {speaker.router_id};",
        f"    local-address {_local_address(peer, speaker)};",
        f"    local-as {peer.local_as};",
        f"    peer-as {peer.peer_as};",
        f"    hold-time {peer.hold_time};",
        f"    passive {'true' if peer.passive else 'false'};",
        f"    connect {peer.port};",
    ]
    if peer.password:
        encoded = base64.b64encode(peer.password.encode()).decode()
        lines += [f"    md5-password {encoded};", "    md5-base64 true;"]
    if peer.ttl_security is not None:
        lines += [f"    outgoing-ttl {GTSM_TTL};", f"    incoming-ttl {GTSM_TTL + 1 - peer.ttl_security};"]
    lines += [
        "    group-updates true;",
        # No adj-rib-in: Tabby's RIB holds what peers sent (bgp/rib.py). ExaBGP's copy was a seventh of
        # its time in a 10,000-prefix burst and nothing reads it.
        "    adj-rib-in false;",
        "    adj-rib-out true;",
        "    manual-eor true;",
        "    capability {",
        "        route-refresh;",
        # No RFC 8654 extended messages: a peer would pack 10,000 prefixes into one 64 KiB UPDATE, which
        # ExaBGP parses whole (about 0.4 s) before the agent sees any of it. 4 KiB UPDATEs of ~1,000
        # prefixes stream: ExaBGP parses the next while the agent programs the last.
        "        extended-message disable;",
    ]
    if peer.graceful_restart is not None:
        lines.append(f"        graceful-restart {peer.graceful_restart};")
    lines += ["    }", "    family {"]
    lines += [f"        {family};" for family in families_for(peer, dual_stack=dual_stack)]
    lines += [
        "    }",
        "    api {",
        f"        processes [ {API_PROCESS} ];",
        "        neighbor-changes;",
        "        receive {",
        "            parsed;",
        "            open;",
        "            update;",
        "            notification;",
        "            refresh;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _safe(text: str) -> str:
    """Description text without characters that would end the quoted token."""
    return "".join(ch if ch.isprintable() and ch not in '"\\;{}' else "_" for ch in text)


def render(
    speaker: SpeakerSpec,
    peers: Iterable[PeerSpec],
    *,
    run: str,
    dual_stack: bool = False,
) -> str:
    """The whole configuration file: the API process stanza then one neighbor block per peer, sorted.

    Two peers with the same address are refused: ExaBGP keys neighbors by address and would silently
    keep one of them.
    """
    if any(ch in run for ch in ";{}\n"):
        raise ValueError(f"API command {run!r} must not contain ';', braces or newlines")
    ordered = sorted(peers, key=lambda p: (ipaddress.ip_address(p.address).version, ipaddress.ip_address(p.address)))
    seen: set[str] = set()
    for peer in ordered:
        if peer.address in seen:
            raise ValueError(f"two peers with address {peer.address}")
        seen.add(peer.address)
    out = [
        f"# Rendered by tabby for node {_safe(speaker.node)}; do not edit (rewritten on every change).",
        "",
        f"process {API_PROCESS} {{",
        f"    run {run};",
        "    encoder json;",
        "}",
        "",
    ]
    text = "\n".join(out) + "\n"
    return text + "\n".join(render_neighbor(p, speaker, dual_stack=dual_stack) for p in ordered)


def render_env(
    speaker: SpeakerSpec,
    *,
    log_path: str,
    pid_path: str | None = None,
    bind: Sequence[str] | None = None,
    log_level: str = "INFO",
) -> dict[str, str]:
    """Environment variables for `exabgp server` (underscore spelling, valid in any shell).

    - daemon.user=root: otherwise ExaBGP drops to nobody and the API helper cannot reach the agent's socket;
    - api.cli=false: no named pipes in /run to clash between nodes sharing a filesystem;
    - api.ack=true: we want `done`/`error` back (the bridge drains them), respawn=true (a dead helper comes back);
    - tcp.bind: addresses to listen on (the node IP); empty disables listening (all peers active);
    - log.destination: a file in the run dir, never syslog.
    """
    addresses = list(bind) if bind is not None else [a for a in (speaker.address, speaker.address6) if a]
    for addr in addresses:
        ipaddress.ip_address(addr)
    if not 0 < speaker.listen_port < 65536:
        raise ValueError(f"listen port {speaker.listen_port} out of range")
    env = {
        "exabgp_daemon_user": "root",
        "exabgp_daemon_drop": "false",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_cli": "false",
        "exabgp_api_ack": "true",
        "exabgp_api_respawn": "true",
        "exabgp_api_terminate": "false",
        "exabgp_api_encoder": "json",
        "exabgp_log_enable": "true",
        "exabgp_log_destination": log_path,
        "exabgp_log_level": log_level,
        "exabgp_log_short": "false",
        "exabgp_tcp_bind": " ".join(addresses),
        "exabgp_tcp_port": str(speaker.listen_port),
        "exabgp_tcp_attempts": "0",
    }
    if pid_path:
        env["exabgp_daemon_pid"] = pid_path
    return dict(sorted(env.items()))


def build(
    speaker: SpeakerSpec,
    peers: Iterable[PeerSpec],
    *,
    run: str,
    log_path: str,
    pid_path: str | None = None,
    dual_stack: bool = False,
) -> ExabgpConfig:
    """Config text + environment + the keys the speaker compares to pick reload or restart."""
    peer_list = list(peers)
    text = render(speaker, peer_list, run=run, dual_stack=dual_stack)
    env = render_env(speaker, log_path=log_path, pid_path=pid_path)
    restart_key = (speaker.router_id, env["exabgp_tcp_bind"], env["exabgp_tcp_port"], run, str(dual_stack))
    keys = {p.address: session_key(p, speaker, dual_stack=dual_stack) for p in peer_list}
    return ExabgpConfig(text=text, env=env, restart_key=restart_key, peers=dict(sorted(keys.items())))
