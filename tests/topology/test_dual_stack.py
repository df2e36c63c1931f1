"""examples/dual-stack.clab.yml end to end: two Tabby nodes on their own routed links to an FRR ToR, an IPv4
and an IPv6 session per node, one dual-stack pod per node (`lab pod add` on a node with IP6 set), and every
pod pair reaching over IPv4 and IPv6 through the ToR (the only path between the nodes)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable

from tests.topology.conftest import EXAMPLES, lab_cli, wait_for
from tests.topology.tabby_support import TabbyLab, tabby_lab_fixture  # noqa: F401 - provides tabby_lab

TOR = {"node1": ("10.10.1.1", "fd00:10:1::1"), "node2": ("10.10.2.1", "fd00:10:2::1")}
NODES = {"node1": ("10.10.1.11", "fd00:10:1::11"), "node2": ("10.10.2.12", "fd00:10:2::12")}


def sessions(lab: TabbyLab, node: str) -> dict[str, str]:
    proc = lab.exec(node, "tabbyctl", "node", "status", "-o", "json")
    try:
        status = json.loads(proc.stdout) if proc.returncode == 0 else {}
    except ValueError:
        return {}
    return {s["peer_address"]: s["bgp_state"] for s in status.get("sessions", [])}


def frr_established(lab: TabbyLab) -> set[str]:
    out = set()
    for family in ("ipv4", "ipv6"):
        proc = lab.exec("tor", "vtysh", "-c", f"show bgp {family} unicast summary json")
        try:
            peers = json.loads(proc.stdout or "{}").get("peers", {})
        except ValueError:
            continue
        out |= {p for p, info in peers.items() if info.get("state") == "Established"}
    return out


def ping(netns: str, ip: str) -> bool:
    family = "-6" if ":" in ip else "-4"
    return subprocess.run(["ip", "netns", "exec", netns, "ping", family, "-c", "1", "-W", "2", ip],
                          capture_output=True, timeout=15).returncode == 0


def test_dual_stack_pods_reach_over_v4_and_v6_through_the_tor(tabby_lab: Callable[..., TabbyLab]) -> None:
    lab = tabby_lab(EXAMPLES / "dual-stack.clab.yml")
    for node in NODES:
        want = {addr: "Established" for addr in TOR[node]}
        wait_for(f"{node}: IPv4 and IPv6 sessions with the ToR", lambda n=node, w=want: sessions(lab, n) == w,
                 timeout=90, interval=0.5)
    wait_for("the ToR: all four sessions", lambda: frr_established(lab) == {a for v in NODES.values() for a in v},
             timeout=30, interval=0.5)
    pods: dict[str, dict] = {}
    for node in NODES:
        proc = lab_cli("pod", "add", "-t", str(lab.path), node, f"web-{node}")
        assert proc.returncode == 0, proc.stderr
        pod = json.loads(proc.stdout)
        versions = sorted(ipaddress.ip_interface(ip).version for ip in pod["ips"])
        assert versions == [4, 6], pod
        pods[node] = pod
    for here, there in (("node1", "node2"), ("node2", "node1")):
        for ip in pods[there]["ips"]:
            addr = ip.split("/")[0]
            wait_for(f"pod on {here} -> {addr} (pod on {there})", lambda h=here, a=addr: ping(pods[h]["netns"], a),
                     timeout=40, interval=0.5)
    # the IPv6 block of node2 is in node1's kernel via the ToR's IPv6 address on node1's link
    v6 = next(ip for ip in pods["node2"]["ips"] if ":" in ip)
    route = json.loads(subprocess.run(["ip", "-n", lab.netns("node1"), "-6", "-j", "route", "get", v6.split("/")[0]],
                                      capture_output=True, text=True, check=True, timeout=10).stdout)[0]
    assert route.get("gateway") == TOR["node1"][1] and route.get("dev") == "eth1", route
