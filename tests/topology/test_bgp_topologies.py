"""The BGP examples deployed end to end: three-node-tor (+ a ToR flap), two-racks, route-reflectors, cross-subnet-ipip.

For each lab, as a user would check it: every BGP session Established on both ends (FRR's
`show bgp summary json`, `birdc show protocols`, the agents' `tabbyctl node status -o json`), the
exact proto-81 routes in every Tabby node's kernel (next hop and device), and all-pairs pod
reachability through `lab pod add` + `lab check`. Labs are renamed copies deployed with the CLI by
the `tabby_lab` fixture, which destroys them also after a failure and checks nothing is left.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from lab import load_topology
from lab.state import LabState
from tests.topology.conftest import EXAMPLES, wait_for
from tests.topology.tabby_support import (  # noqa: F401 - tabby_lab_fixture provides the tabby_lab fixture
    TabbyLab,
    blackhole,
    local_pod_route,
    tabby_lab_fixture,
)

SESSION_TIMEOUT = 60.0
Route = tuple[str, str, str | None, bool]


# ----------------------------------------------------------------------------- views


def node_status(lab: TabbyLab, node: str) -> dict[str, Any]:
    """The agent's BGP_STATUS (`tabbyctl node status -o json` inside the node); {} while it does not answer."""
    proc = lab.exec(node, "tabbyctl", "node", "status", "-o", "json")
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except ValueError:
        return {}


def node_sessions(lab: TabbyLab, node: str) -> dict[str, str]:
    return {s["peer_address"]: s["bgp_state"] for s in node_status(lab, node).get("sessions", [])}


def frr_sessions(lab: TabbyLab, node: str) -> dict[str, str]:
    proc = lab.exec(node, "vtysh", "-c", "show bgp summary json")
    try:
        data = json.loads(proc.stdout or "{}")
    except ValueError:
        return {}
    return {peer: info["state"] for peer, info in data.get("ipv4Unicast", {}).get("peers", {}).items()}


def bird_sessions(lab: TabbyLab, node: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lab.exec(node, "birdc", "show", "protocols").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "BGP":
            out[parts[0]] = parts[-1] if parts[3] == "up" else parts[3]
    return out


def all_established(peers: list[str]) -> Callable[[dict[str, str]], bool]:
    return lambda seen: seen == {p: "Established" for p in peers}


def wait_sessions(lab: TabbyLab, want: dict[str, tuple[Callable[[TabbyLab, str], dict[str, str]], list[str]]]) -> None:
    """Until every node's view lists exactly its expected peers, all Established (bounded)."""
    for node, (view, peers) in want.items():
        wait_for(f"{node}: sessions with {peers} Established", lambda n=node, v=view, p=peers: (
            all_established(p)(v(lab, n))), timeout=SESSION_TIMEOUT, interval=0.5)


def add_pods(lab: TabbyLab, nodes: list[str]) -> dict[str, str]:
    """One pod per node, named after it; returns node -> its block."""
    for node in nodes:
        lab.add_pod(node, f"web-{node}")
    return {node: lab.block_of(f"web-{node}") for node in nodes}


def expected_routes(lab: TabbyLab, node: str, blocks: dict[str, str], remote: dict[str, Route]) -> dict[str, Route]:
    """`node`'s whole proto-81 table: own block blackholed, own pods on their veth, plus `remote`."""
    table: dict[str, Route] = {blocks[node]: blackhole(), **remote}
    for name, pod in lab.pods.items():
        if pod["node"] == node:
            table[f"{lab.pod_ip(name)}/32"] = local_pod_route()
    return table


def check_all_pairs(lab: TabbyLab) -> dict[str, Any]:
    proc = lab.cli("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    n = len(lab.pods)
    assert (report["pods"], report["pairs"], report["ok"], report["failed"]) == (n, n * (n - 1), n * (n - 1), [])
    return report


def frr_route(lab: TabbyLab, node: str, prefix: str) -> dict[str, Any]:
    proc = lab.exec(node, "vtysh", "-c", f"show bgp ipv4 unicast {prefix} json")
    try:
        return json.loads(proc.stdout or "{}")
    except ValueError:
        return {}


def frr_next_hops(lab: TabbyLab, node: str, prefix: str) -> set[str]:
    return {hop["ip"] for path in frr_route(lab, node, prefix).get("paths", []) for hop in path.get("nexthops", [])}


def kernel_route(lab: TabbyLab, node: str, prefix: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", lab.netns(node), "-j", "route", "show", prefix], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    return json.loads(out or "[]")


# ----------------------------------------------------------------------------- three-node-tor


TOR = "10.10.1.1"
TOR_NET = "10.99.0.0/24"
HOLD_TIME = 9.0


def test_three_node_tor_and_tor_flap(tabby_lab: Callable[..., TabbyLab]) -> None:
    """Mesh + ToR sessions, exact routes, all pairs; the ToR dies: its route leaves every kernel after the
    hold time (pods keep talking over the mesh); it comes back: the route returns."""
    lab = tabby_lab(EXAMPLES / "three-node-tor.clab.yml")
    ips = {"node1": "10.10.1.11", "node2": "10.10.1.12", "node3": "10.10.1.13"}
    nodes = list(ips)
    wait_sessions(lab, {"tor": (frr_sessions, list(ips.values())), **{
        n: (node_sessions, [TOR, *(ip for m, ip in ips.items() if m != n)]) for n in nodes}})
    types = {s["peer_address"]: s["peer_type"] for s in node_status(lab, "node1")["sessions"]}
    assert types == {TOR: "global", ips["node2"]: "node-to-node mesh", ips["node3"]: "node-to-node mesh"}

    blocks = add_pods(lab, nodes)
    via_tor: Route = ("unicast", TOR, "eth1", False)
    for node in nodes:
        remote: dict[str, Route] = {blocks[m]: ("unicast", ips[m], "eth1", False) for m in nodes if m != node}
        lab.wait_routes(node, expected_routes(lab, node, blocks, {**remote, TOR_NET: via_tor}))
        wait_for(f"ToR learns {blocks[node]} from {node}", lambda n=node: frr_next_hops(lab, "tor", blocks[n]) == {
            ips[n]}, timeout=20)
    check_all_pairs(lab)
    # the ToR sends each node's block on to the others with 65001 64512: dropped as a loop
    assert node_status(lab, "node1")["counters"]["rejected"].get("as_path_loop", 0) >= 2

    # the ToR disappears from the rack (its address goes; the bridge keeps switching): no NOTIFICATION,
    # only the hold timer can tell
    assert lab.exec("tor", "ip", "addr", "del", f"{TOR}/24", "dev", "br0").returncode == 0
    started = time.monotonic()
    for node in nodes:
        wait_for(f"{node}: {TOR_NET} withdrawn", lambda n=node: TOR_NET not in lab.routes(n),
                 timeout=HOLD_TIME + 8, interval=0.2)
    gone_after = time.monotonic() - started
    assert 3.0 <= gone_after <= HOLD_TIME + 5, f"routes via the ToR left after {gone_after:.1f}s (hold {HOLD_TIME}s)"
    assert node_sessions(lab, "node2")[TOR] != "Established"
    for node in nodes:  # the mesh is untouched
        remote = {blocks[m]: ("unicast", ips[m], "eth1", False) for m in nodes if m != node}
        assert {d: r for d, r in lab.routes(node).items() if d in remote} == {
            d: (k, g, str(dev), o) for d, (k, g, dev, o) in remote.items()}
    check_all_pairs(lab)

    assert lab.exec("tor", "ip", "addr", "add", f"{TOR}/24", "dev", "br0").returncode == 0
    started = time.monotonic()
    for node in nodes:
        wait_for(f"{node}: {TOR_NET} back via the ToR", lambda n=node: lab.routes(n).get(TOR_NET) == (
            "unicast", TOR, "eth1", False), timeout=30, interval=0.2)
    print(f"ToR flap: withdrawn after {gone_after:.1f}s, back after {time.monotonic() - started:.1f}s")
    wait_sessions(lab, {"tor": (frr_sessions, list(ips.values()))})


# ----------------------------------------------------------------------------- two-racks


def test_two_racks(tabby_lab: Callable[..., TabbyLab]) -> None:
    """AS per rack: nodes iBGP with their ToR only (reflected to the rack mate), ToRs eBGP to the BIRD spine."""
    lab = tabby_lab(EXAMPLES / "two-racks.clab.yml")
    ips = {"a1": "10.10.1.11", "a2": "10.10.1.12", "b1": "10.10.2.11", "b2": "10.10.2.12"}
    tors = {"a": "10.10.1.1", "b": "10.10.2.1"}
    wait_sessions(lab, {
        "spine": (bird_sessions, ["tor_a", "tor_b"]),
        "tor-a": (frr_sessions, ["10.0.1.1", ips["a1"], ips["a2"]]),
        "tor-b": (frr_sessions, ["10.0.2.1", ips["b1"], ips["b2"]]),
        **{n: (node_sessions, [tors[n[0]]]) for n in ips},
    })
    for node in ips:
        st = node_status(lab, node)
        assert st["local_as"] == (65001 if node[0] == "a" else 65002)
        assert [s["peer_type"] for s in st["sessions"]] == ["node specific"]

    nodes = list(ips)
    blocks = add_pods(lab, nodes)
    for node in nodes:
        remote: dict[str, Route] = {}
        for other in nodes:
            if other == node:
                continue
            same_rack = other[0] == node[0]
            # the rack mate's block is reflected with its own next hop; the other rack's via our ToR
            remote[blocks[other]] = ("unicast", ips[other] if same_rack else tors[node[0]], "eth1", False)
        lab.wait_routes(node, expected_routes(lab, node, blocks, remote))
    # the spine's kernel (BIRD's kernel protocol) has every block via the rack's ToR
    for node in nodes:
        want = "10.0.1.2" if node[0] == "a" else "10.0.2.2"
        wait_for(f"spine: {blocks[node]} via {want}", lambda n=node, w=want: [
            (r.get("gateway"), r.get("protocol")) for r in kernel_route(lab, "spine", blocks[n])] == [(w, "bird")],
            timeout=20)
    check_all_pairs(lab)


# ----------------------------------------------------------------------------- route-reflectors


def test_route_reflectors(tabby_lab: Callable[..., TabbyLab]) -> None:
    """Two Tabby reflectors (one cluster id), five clients, FRR: clients learn every block through them."""
    lab = tabby_lab(EXAMPLES / "route-reflectors.clab.yml")
    rrs = {"rr1": "10.10.1.2", "rr2": "10.10.1.3"}
    clients = {f"c{i}": f"10.10.1.{10 + i}" for i in range(1, 6)}
    ips = {**rrs, **clients}
    frr, cluster_id = "10.10.1.1", "224.0.0.1"
    wait_sessions(lab, {
        "frr": (frr_sessions, list(rrs.values())),
        **{rr: (node_sessions, [frr, *(ip for n, ip in ips.items() if n != rr)]) for rr in rrs},
        **{c: (node_sessions, list(rrs.values())) for c in clients},
    })
    for rr in rrs:
        assert node_status(lab, rr)["cluster_id"] == cluster_id
    assert node_status(lab, "c1")["cluster_id"] is None

    nodes = ["rr1", *clients]
    blocks = add_pods(lab, nodes)
    for node in clients:
        remote: dict[str, Route] = {blocks[o]: ("unicast", ips[o], "eth1", False) for o in nodes if o != node}
        remote["10.98.0.0/24"] = ("unicast", frr, "eth1", False)
        lab.wait_routes(node, expected_routes(lab, node, blocks, remote))
    # c1 learned c2's block from both reflectors: ORIGINATOR_ID c2, CLUSTER_LIST [cluster id], next hop c2
    paths = [p for p in node_status(lab, "c1")["paths"] if p["prefix"] == blocks["c2"]]
    assert {p["peer"] for p in paths} == set(rrs.values())
    for p in paths:
        assert (p["originator_id"], p["cluster_list"], p["next_hop"]) == (clients["c2"], [cluster_id], clients["c2"])
    # FRR (an iBGP peer of both reflectors) has every client block, reflected, with the client as next hop
    for client, ip in clients.items():
        wait_for(f"FRR: {blocks[client]} via {ip}", lambda c=client, i=ip: frr_next_hops(lab, "frr", blocks[c]) == {i},
                 timeout=20)
        reflected = frr_route(lab, "frr", blocks[client])["paths"]
        assert {p["peer"]["peerId"] for p in reflected} == set(rrs.values())
        assert all(p.get("originatorId") == ip and p.get("clusterList", {}).get("list") == [cluster_id]
                   for p in reflected), reflected
    check_all_pairs(lab)


# ----------------------------------------------------------------------------- cross-subnet-ipip


def tunl0_exists(lab: TabbyLab, node: str) -> bool:
    return subprocess.run(["ip", "-n", lab.netns(node), "link", "show", "tunl0"], capture_output=True,
                          timeout=10, check=False).returncode == 0


def agent_log(lab: TabbyLab, node: str) -> list[dict[str, Any]]:
    state = LabState.load(lab.topo.name)
    assert state is not None
    lines = (state.node_dir(node) / "tabby-node.log").read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_cross_subnet_ipip_control_plane(tabby_lab: Callable[..., TabbyLab]) -> None:
    """The mesh across a router with ipipMode CrossSubnet.

    Verified on any kernel: sessions, each node's tunnel address, BGP next hops, the same-subnet block
    routed natively (`via <node> dev eth1`). Where the kernel has ipip (tunl0 exists): the other
    subnet's blocks are `via <node> dev tunl0 onlink` and every pair answers. Without it (this machine):
    the agent reports the missing module, tries exactly `<block> via <node> dev tunl0 onlink` and the
    kernel refuses it (no tunl0), so cross-subnet pairs do not answer while same-subnet pairs do. The
    IPIP data plane itself is proven in a guest kernel under QEMU (tests/guest).
    """
    lab = tabby_lab(EXAMPLES / "cross-subnet-ipip.clab.yml")
    ips = {"a1": "10.10.1.11", "a2": "10.10.1.12", "b1": "10.10.2.11"}
    nodes = list(ips)
    wait_sessions(lab, {n: (node_sessions, [ip for m, ip in ips.items() if m != n]) for n in nodes})
    node_objs = lab.tabbyctl_json("a1", "get", "nodes")
    node_objs = node_objs.get("items", node_objs) if isinstance(node_objs, dict) else node_objs
    by_name = {n["metadata"]["name"]: n["spec"]["bgp"] for n in node_objs}
    for node, ip in ips.items():
        assert by_name[node]["ipv4Address"] == f"{ip}/24"
        assert by_name[node].get("ipv4IPIPTunnelAddr"), f"{node} has no IPIP tunnel address: {by_name[node]}"

    blocks = add_pods(lab, nodes)
    subnet = {n: ip.rsplit(".", 1)[0] for n, ip in ips.items()}
    has_ipip = tunl0_exists(lab, "a1")
    for node in nodes:
        learned = wait_for(f"{node}: learns every other block over BGP", lambda n=node: (
            lrn if len(lrn := {x["prefix"]: x["next_hop"] for x in node_status(lab, n).get("learned", [])}) == 2
            else None), timeout=30)
        remote: dict[str, Route] = {}
        for other in nodes:
            if other == node:
                continue
            assert learned[blocks[other]] == ips[other]
            if subnet[other] == subnet[node]:
                remote[blocks[other]] = ("unicast", ips[other], "eth1", False)
            elif has_ipip:
                remote[blocks[other]] = ("unicast", ips[other], "tunl0", True)
        lab.wait_routes(node, expected_routes(lab, node, blocks, remote))
        if not has_ipip:
            events = agent_log(lab, node)
            assert any(e.get("event") == "tunnels.ipip_failed" and "ipip kernel module not available" in e["error"]
                       for e in events)
            tried = {e["route"] for e in events if e.get("event") == "routes.failed"}
            for other in nodes:
                if subnet[other] != subnet[node]:
                    assert f"{blocks[other]} via {ips[other]} dev tunl0 onlink metric 0" in tried, tried

    if has_ipip:
        check_all_pairs(lab)
        return
    proc = lab.cli("check", "--count", "1", "--wait", "1")
    report = json.loads(proc.stdout)
    pod_node = {name: pod["node"] for name, pod in lab.pods.items()}
    for src, row in report["matrix"].items():
        for dst, ok in row.items():
            assert ok == (subnet[pod_node[src]] == subnet[pod_node[dst]]), (src, dst, report["matrix"])
    assert proc.returncode == 1


def test_examples_have_their_own_run_root() -> None:
    """Node names recur across examples (a1 in two-racks and cross-subnet-ipip): each lab keeps its agents'
    run directories apart by default (derived from the lab name), or a second lab's agent adopts the
    first lab's ExaBGP. No example hard-codes one, so a copy with another name is safe."""
    from lab.state import lab_dir

    for name in ("three-node-tor", "two-racks", "route-reflectors", "cross-subnet-ipip"):
        topo = load_topology(EXAMPLES / f"{name}.clab.yml")
        assert "TABBY_RUN_ROOT" not in (EXAMPLES / f"{name}.clab.yml").read_text()
        roots = {n.env.get("TABBY_RUN_ROOT") for n in topo.nodes.values() if n.image.startswith("tabby/node")}
        assert roots == {str(lab_dir(topo.name) / "run")}
