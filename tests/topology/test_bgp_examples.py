"""examples/frr-pair and examples/triangle: real FRR, BIRD 2 and GoBGP sessions in lab namespaces."""

from __future__ import annotations

from collections.abc import Callable

from lab.deploy import all_processes_alive
from tests.topology.conftest import (
    EXAMPLES,
    LabRun,
    bird_bgp,
    frr_peers,
    gobgp_neighbors,
    ping,
    routes,
    wait_for,
)

ESTABLISHED = "Established"


def test_frr_pair_ebgp(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(EXAMPLES / "frr-pair.clab.yml")
    lab = run.lab
    assert lab is not None
    assert list(all_processes_alive(lab)) == []
    wait_for("r1 Established with r2", lambda: frr_peers(lab, "r1") == {"10.0.12.2": ESTABLISHED})
    wait_for("r2 Established with r1", lambda: frr_peers(lab, "r2") == {"10.0.12.1": ESTABLISHED})

    # zebra applied the interface addresses from frr.conf; BGP put the peer's loopback in the kernel
    assert "10.255.0.1/32" in lab.exec("r1", ["ip", "-br", "addr", "show", "lo"]).stdout
    for node, prefix, gateway in (("r1", "10.255.0.2", "10.0.12.2"), ("r2", "10.255.0.1", "10.0.12.1")):
        wait_for(f"{node} BGP route to {prefix} via {gateway}", lambda n=node, p=prefix, g=gateway: [
            (r["gateway"], r["dev"], r["protocol"]) for r in routes(lab, n, p)] == [(g, "eth1", "bgp")])
    wait_for("ping r1 -> r2 loopback", lambda: ping(lab, "r1", "10.255.0.2", source="10.255.0.1"), timeout=10)
    wait_for("ping r2 -> r1 loopback", lambda: ping(lab, "r2", "10.255.0.1", source="10.255.0.2"), timeout=10)

    # each node has its own /var/run/frr (its own root): no shared socket or pid file
    pids = {lab.node_path(n, "/var/run/frr/bgpd.pid").read_text().strip() for n in ("r1", "r2")}
    assert len(pids) == 2
    run.assert_root_untouched()


def test_triangle_frr_bird_gobgp(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(EXAMPLES / "triangle.clab.yml")
    lab = run.lab
    assert lab is not None
    assert lab.exec_failures == []

    wait_for("FRR sessions", lambda: frr_peers(lab, "frr") == {"10.0.12.2": ESTABLISHED, "10.0.13.3": ESTABLISHED})
    wait_for("BIRD sessions", lambda: bird_bgp(lab, "bird") == {"frr": ESTABLISHED, "gobgp": ESTABLISHED})
    wait_for("GoBGP sessions",
             lambda: gobgp_neighbors(lab, "gobgp") == {"10.0.13.1": ESTABLISHED, "10.0.23.2": ESTABLISHED})

    # every prefix reached the routers that program the kernel, over the direct link (a path
    # through the third router may show up first and is replaced once the direct session is up)
    expected = {
        ("frr", "10.255.0.2"): ("10.0.12.2", "eth1"),
        ("frr", "10.255.0.3"): ("10.0.13.3", "eth2"),
        ("bird", "10.255.0.1"): ("10.0.12.1", "eth1"),
        ("bird", "10.255.0.3"): ("10.0.23.3", "eth2"),
    }
    for (node, prefix), (gateway, dev) in expected.items():
        wait_for(f"{node} route to {prefix} via {gateway} dev {dev}", lambda n=node, p=prefix, g=gateway, d=dev: [
            (r["gateway"], r["dev"]) for r in routes(lab, n, p)] == [(g, d)])
    rib = lab.exec("gobgp", ["gobgp", "-j", "global", "rib"], check=True).stdout
    assert "10.255.0.1/32" in rib and "10.255.0.2/32" in rib

    for node, target, source in (("frr", "10.255.0.2", "10.255.0.1"), ("bird", "10.255.0.1", "10.255.0.2"),
                                 ("frr", "10.255.0.3", "10.255.0.1")):
        wait_for(f"ping {node} {source} -> {target}", lambda n=node, t=target, s=source: ping(lab, n, t, source=s),
                 timeout=10)
    run.assert_root_untouched()
