"""What `tabbyctl node status` warns about for BGP (pure: plain data in, lines out).

Issue 11 asks that a Calico field Tabby accepts but does not honour is warned at apply *and* shown in
`node status`, so the warning is still in front of the operator after the apply scrolled away; and that
the graceful-restart and BFD facts that decide how fast a dead peer leaves the forwarding path are
visible per session. This module turns the agent's state into those lines:

- support policy: the warned (and, for documents written past `tabbyctl apply`, the refused) fields of the
  BGPConfigurations, BGPPeers and BGPFilters that apply to this node (`controller.support_policy`);
- BFD: a peer with failureDetectionMode BFDIfDirectlyConnected that is not on the node's subnet gets no
  BFD (failures are found at the hold time); a session Established for a while whose BFD is not Up means
  the peer does not answer BFD;
- capabilities the peer refused: a NOTIFICATION "OPEN Message Error" (code 2) on the session, named
  with its subcode (7 = Unsupported Capability, 2 = Bad Peer AS, ...);
- graceful restart in progress: a peer that is down while its paths are kept stale (they still forward),
  with the time left.

`graceful_restart_text` is the per-session GR column: what the peer's last OPEN offered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bgp.types import MESH, GracefulRestart, PeerSpec

BFD_GRACE_S = 5.0
"""How long a session may be Established before a BFD that is not Up is reported (BFD comes up in ~1 s)."""

OPEN_ERRORS = {1: "Unsupported Version Number", 2: "Bad Peer AS", 3: "Bad BGP Identifier",
               4: "Unsupported Optional Parameter", 6: "Unacceptable Hold Time", 7: "Unsupported Capability",
               11: "Role Mismatch"}


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """One session as the warnings need it (from the speaker's row, the RIB and the BFD runner)."""

    address: str
    bgp_state: str
    established_for: float | None
    last_error: str
    bfd: str | None
    stale: int
    stale_left: float | None


def graceful_restart_text(gr: GracefulRestart | None, seen_open: bool) -> str:
    """What the peer's last OPEN said about graceful restart, in one cell."""
    if not seen_open:
        return "-"
    if gr is None:
        return "none (paths go with the session)"
    if not gr.families:
        return f"helper only, {gr.restart_time}s (paths go with the session)"
    fams = ", ".join(f"{f} F={1 if kept else 0}" for f, kept in gr.families)
    return f"{gr.restart_time}s: {fams}"


def applicable_resources(local_node: str, peers: Iterable[PeerSpec], configs: Sequence[Any],
                         bgp_peers: Sequence[Any], bgp_filters: Sequence[Any]) -> list[Any]:
    """The BGP resources that shape this node's sessions: `default` and `node.<name>` BGPConfiguration,
    the BGPPeers behind its sessions, the BGPFilters those name."""
    names = {p.name for p in peers if p.type != MESH}
    chosen_peers = [p for p in bgp_peers if p.name in names]
    filters = {f for p in chosen_peers for f in (p.spec.filters or [])}
    return ([c for c in configs if c.name in ("default", f"node.{local_node}")] + chosen_peers
            + [f for f in bgp_filters if f.name in filters])


def policy_lines(resources: Sequence[Any]) -> list[str]:
    """Support-policy warnings of these resources; refused fields (possible when a document reached the
    datastore without `tabbyctl apply`) are named as not honoured."""
    from controller import support_policy

    report = support_policy.check(resources)
    return list(report.warnings) + [f"not honoured (refused at apply): {line}" for line in report.refused]


def session_lines(peers: Mapping[str, PeerSpec], facts: Iterable[SessionFacts], local_ip: str | None,
                  hold_times: Mapping[str, int] | None = None) -> list[str]:
    """The per-session warnings (see the module docstring)."""
    subnet = ipaddress.ip_interface(local_ip).network if local_ip else None
    out: list[str] = []
    for f in facts:
        spec = peers.get(f.address)
        if spec is not None and spec.bfd:
            connected = subnet is not None and ipaddress.ip_address(f.address) in subnet
            if not connected:
                hold = (hold_times or {}).get(f.address, spec.hold_time)
                out.append(f"peer {f.address}: BFD requested (BFDIfDirectlyConnected) but the peer is not directly "
                           f"connected: no BFD, a dead peer is found at the hold time ({hold}s)")
            elif (f.bgp_state == "Established" and (f.established_for or 0) >= BFD_GRACE_S
                  and f.bfd != "Up"):
                out.append(f"peer {f.address}: BFD is {f.bfd or 'not running'} while the BGP session is Established: "
                           "the peer does not answer BFD (bfdd running? BFD configured for this neighbor?)")
        if f.last_error.startswith("NOTIFICATION") and " 2/" in f.last_error:
            sub = f.last_error.split(" 2/", 1)[1].split()[0]
            why = OPEN_ERRORS.get(int(sub), "OPEN Message Error") if sub.isdigit() else "OPEN Message Error"
            out.append(f"peer {f.address}: the OPEN was refused ({why}): {f.last_error}")
        if f.bgp_state != "Established" and f.stale:
            left = "" if f.stale_left is None else f" for {max(f.stale_left, 0):.0f}s more"
            out.append(f"peer {f.address}: session down, {f.stale} paths kept stale (graceful restart){left}; "
                       "they still forward")
    return out
