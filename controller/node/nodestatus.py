"""The agent's CalicoNodeStatus reporter: fills ``status`` of the CalicoNodeStatus resources naming this node.

Calico's calico-node watches CalicoNodeStatus objects whose ``spec.node`` is its own node and, every
``updatePeriodSeconds`` (0 = never), writes the requested ``classes`` into ``status``. Tabby's agent
does the same from what it already knows (the BGP status `tabbyctl node status` shows):

- ``Agent``: ``agent.birdV4`` (and ``birdV6`` when the node has an IPv6 BGP address) =
  ``{state: Ready|NotReady, version, routerID, lastBootTime}``. Tabby's BGP speaker is ExaBGP,
  driven by the agent; ``version`` says so (``tabby-exabgp``); ``state`` is Ready once the agent
  is ready and its speaker runs; ``lastReconfigurationTime`` is when the agent last wrote ExaBGP's
  configuration (start, restart or reload; an adopted speaker's is its predecessor's write).
- ``BGP``: ``numberEstablishedV4/V6``, ``numberNotEstablishedV4/V6`` and ``peersV4/V6`` =
  ``{peerIP, type: NodeMesh|GlobalPeer|NodePeer, state (BGP FSM state), since}``.
- ``Routes``: ``routesV4/V6`` = the routes the agent learned over BGP and programs:
  ``{type: FIB, destination, gateway, interface, learnedFrom: {sourceType, peerIP}}``.
  Routes Tabby's own IPAM blocks produce locally are not listed (BIRD lists them as ``kernel``).

``lastUpdated`` is the write time (RFC 3339). The write compares the object's mod_revision, so a
user's edit in between wins and is reported on at the next period. A node without BGP (the
``vxlan``/``none`` backends) reports ``Agent`` as NotReady speaker-wise and no peers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from datastore import DatastoreError, Put, mod_is

if TYPE_CHECKING:
    from controller.node.agent import Agent

log = structlog.get_logger("tabby.nodestatus")

POLL_INTERVAL = 1.0
PEER_TYPES = {"node-to-node mesh": "NodeMesh", "global": "GlobalPeer", "node specific": "NodePeer"}
SPEAKER_VERSION = "tabby-exabgp"


def _family(ip: str) -> int:
    try:
        return ipaddress.ip_network(ip, strict=False).version
    except ValueError:
        return 4


def render_status(bgp: dict[str, Any], classes: list[str], *, ready: bool, boot_time: str, now: str) -> dict[str, Any]:
    """CalicoNodeStatus ``status`` for ``classes`` from the agent's BGP status (pure: unit-testable)."""
    out: dict[str, Any] = {"lastUpdated": now}
    sessions = list(bgp.get("sessions") or [])
    if "Agent" in classes:
        daemon = {
            "state": "Ready" if ready and bgp.get("enabled") and bgp.get("exabgp_pid") else "NotReady",
            "version": SPEAKER_VERSION,
            "routerID": bgp.get("router_id") or "",
            "lastBootTime": boot_time,
        }
        if bgp.get("last_reconfigured"):
            daemon["lastReconfigurationTime"] = datetime.fromtimestamp(
                float(bgp["last_reconfigured"]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out["agent"] = {"birdV4": daemon}
        if any(_family(s["peer_address"]) == 6 for s in sessions):
            out["agent"]["birdV6"] = dict(daemon)
    if "BGP" in classes:
        section: dict[str, Any] = {}
        for version in (4, 6):
            mine = [s for s in sessions if _family(s["peer_address"]) == version]
            up = sum(1 for s in mine if s.get("bgp_state") == "Established")
            section[f"numberEstablishedV{version}"] = up
            section[f"numberNotEstablishedV{version}"] = len(mine) - up
            if mine:
                section[f"peersV{version}"] = [
                    {"peerIP": s["peer_address"], "type": PEER_TYPES.get(s.get("peer_type") or "", "NodePeer"),
                     "state": s.get("bgp_state") or "Idle", "since": s.get("since_text") or ""}
                    for s in mine
                ]
        out["bgp"] = section
    if "Routes" in classes:
        types = {s["peer_address"]: PEER_TYPES.get(s.get("peer_type") or "", "NodePeer") for s in sessions}
        interface = str(bgp.get("interface") or "")
        routes: dict[str, list[dict[str, Any]]] = {}
        for r in bgp.get("learned") or []:
            hop = str(r.get("next_hop") or "")
            item = {"type": "FIB", "destination": r["prefix"], "gateway": hop, "interface": interface,
                    "learnedFrom": {"sourceType": types.get(hop, "NodeMesh"), "peerIP": hop}}
            routes.setdefault(f"routesV{_family(r['prefix'])}", []).append(item)
        out["routes"] = routes
    return out


class NodeStatusReporter:
    """Looks at this node's CalicoNodeStatus objects each second and writes the due ones."""

    def __init__(self, agent: Agent, poll: float = POLL_INTERVAL) -> None:
        self.agent = agent
        self.poll = poll
        self.boot_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._last: dict[str, float] = {}  # name -> monotonic time of our last write
        self.writes = 0

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except DatastoreError as exc:  # etcd away: try again next period
                log.debug("nodestatus.skipped", error=str(exc))
            except Exception:  # never take the agent down over a status report
                log.exception("nodestatus.failed")
            await asyncio.sleep(self.poll)

    async def once(self) -> int:
        """Write every due CalicoNodeStatus of this node; returns how many were written.

        The objects come from the agent's validated model (the watch), not from an etcd read, so a
        cluster of agents adds no per-second load; only the due writes reach etcd."""
        node = self.agent.config.nodename
        written = 0
        now_mono = time.monotonic()
        for key in sorted(self.agent.model.of_kind("CalicoNodeStatus")):
            doc, revision = self.agent.model.document(key)
            if doc is None or not revision:
                continue
            spec = doc.get("spec") or {}
            name = str((doc.get("metadata") or {}).get("name") or key.rsplit("/", 1)[-1])
            period = spec.get("updatePeriodSeconds")
            if spec.get("node") != node or not isinstance(period, int) or period <= 0:
                continue
            last = self._last.get(name)
            if last is not None and now_mono - last < period:
                continue
            status = self.agent.bgp_status()
            status.setdefault("interface", getattr(self.agent, "interface", "") or "")
            doc["status"] = render_status(
                status, list(spec.get("classes") or []), ready=bool(status.get("ready")),
                boot_time=self.boot_time, now=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            result = await self.agent.ds.txn([mod_is(key, revision)], [Put(key, doc)])
            self._last[name] = now_mono
            if result.succeeded:
                written += 1
                self.writes += 1
                log.debug("nodestatus.written", name=name, classes=spec.get("classes"))
        return written
