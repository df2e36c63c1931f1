"""What a deployed lab shows for its picture: addresses, AS numbers, BGP sessions, pods.

Read from the running nodes the way a user would (``ip -j addr``, ``vtysh ... json``,
``birdc show protocols all``, ``gobgp -j``), each bounded in time; a node that does not answer
simply shows less. Kept apart from ``lab.graph``, which stays pure (pictures from data).
"""

from __future__ import annotations

import json
import re

from lab.deploy import Lab
from lab.errors import LabError
from lab.graph import Live, NodeLive
from lab.kinds import handler_for

TIMEOUT = 5.0


def _out(lab: Lab, node: str, argv: list[str]) -> str:
    try:
        proc = lab.exec(node, argv, timeout=TIMEOUT)
    except LabError:
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def _addresses(lab: Lab, node: str) -> list[str]:
    try:
        links = json.loads(_out(lab, node, ["ip", "-j", "-4", "addr"]) or "[]")
    except ValueError:
        return []
    out = []
    for link in links:
        for info in link.get("addr_info", []):
            ip = info.get("local", "")
            if link.get("ifname") == "eth0" or ip.startswith("127."):
                continue
            out.append(f"{link.get('ifname')} {ip}/{info.get('prefixlen')}")
    return out


def _frr(lab: Lab, node: str, live: NodeLive) -> None:
    try:
        data = json.loads(_out(lab, node, ["vtysh", "-c", "show bgp summary json"]) or "{}")
    except ValueError:
        return
    uni = data.get("ipv4Unicast", {})
    if uni.get("as"):
        live.asn = str(uni["as"])
    live.sessions = {peer: info.get("state", "?") for peer, info in uni.get("peers", {}).items()}


def _bird(lab: Lab, node: str, live: NodeLive) -> None:
    state = ""
    for line in _out(lab, node, ["birdc", "show", "protocols", "all"]).splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "BGP":
            state = parts[-1] if parts[3] == "up" else parts[3]
        elif (m := re.match(r"\s+Neighbor address:\s+(\S+)", line)) and state:
            live.sessions[m.group(1)] = state
        elif m := re.match(r"\s+Local AS:\s+(\d+)", line):
            live.asn = m.group(1)


def _gobgp(lab: Lab, node: str, live: NodeLive) -> None:
    try:
        glob = json.loads(_out(lab, node, ["gobgp", "-j", "global"]) or "{}")
        neighbors = json.loads(_out(lab, node, ["gobgp", "-j", "neighbor"]) or "[]")
    except ValueError:
        return
    asn = glob.get("as") or glob.get("global", {}).get("as")
    live.asn = str(asn) if asn else None
    for n in neighbors:
        state = n.get("state", {}).get("session_state")
        live.sessions[n.get("conf", {}).get("neighbor_address", "?")] = \
            "Established" if state in (6, "established", "ESTABLISHED") else str(state)


def _pod_label(pod: dict[str, object]) -> str:
    """``web-1 10.244.0.5`` (``ns/name`` outside ``default``), as ``lab pod list`` names pods."""
    name = str(pod.get("name"))
    if pod.get("namespace") not in (None, "default"):
        name = f"{pod.get('namespace')}/{name}"
    ips = " ".join(str(ip).split("/")[0] for ip in pod.get("ips") or [])  # type: ignore[union-attr]
    return f"{name} {ips}".strip()


def collect(lab: Lab) -> Live:
    """The picture's live data for every node of a deployed lab."""
    live: Live = {}
    for name, node in lab.nodes.items():
        info = NodeLive(addresses=_addresses(lab, name))
        kind = handler_for(node.image).name
        if kind == "frr":
            _frr(lab, name, info)
        elif kind == "bird":
            _bird(lab, name, info)
        elif kind == "gobgp":
            _gobgp(lab, name, info)
        elif node.env.get("AS"):
            info.asn = node.env["AS"]
        info.pods = sorted(_pod_label(p) for p in lab.state.pods if p.get("node") == name)
        live[name] = info
    return live
