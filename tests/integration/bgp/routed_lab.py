"""A routed rack: every node on its own /24 link to one top-of-rack namespace (FRR), no shared segment.

Pod traffic between nodes has to go through the ToR's kernel (the ToR forwards on the routes its zebra
installed from what bgpd learned), so a test can tell "the ToR kept forwarding" from "the route stayed in
the node's kernel". Built on BgpLab (agents, pods, cleanup); the ToR namespace is the test's.
"""

from __future__ import annotations

from tests.integration.bgp.agent_lab import BgpLab
from tests.integration.node.conftest import in_ns, sh

RACK_PREFIX = "10.213"
RACK_FIRST = 81


class RoutedLab(BgpLab):
    """Node i on RACK_PREFIX.(RACK_FIRST+i).1/24, the ToR on .254 of the same link (eth0 on the node)."""

    def add_nodes(self, count: int = 2, tor_ns: str = "") -> None:  # type: ignore[override]
        if not tor_ns:
            raise ValueError("RoutedLab.add_nodes needs the ToR's namespace")
        self.tor_ns = tor_ns
        for i in range(count):
            name = f"tr{self.tag}{chr(ord('a') + i)}"
            ns = f"tbn-{name}"
            sh("ip", "netns", "add", ns)
            self.nodes[name] = ns
            in_ns(ns, "ip", "link", "set", "lo", "up")
            tor_if = f"r{i}{self.tag}"[:15]
            sh("ip", "link", "add", tor_if, "netns", tor_ns, "type", "veth", "peer", "name", f"x{tor_if}"[:15],
               "netns", ns)
            in_ns(ns, "ip", "link", "set", f"x{tor_if}"[:15], "name", "eth0")
            in_ns(ns, "ip", "link", "set", "eth0", "up")
            in_ns(tor_ns, "ip", "addr", "add", f"{self.tor_ip(name)}/24", "dev", tor_if)
            in_ns(tor_ns, "ip", "link", "set", tor_if, "up")

    def link_subnet(self, name: str) -> str:
        return f"{RACK_PREFIX}.{RACK_FIRST + list(self.nodes).index(name)}"

    def node_ip(self, name: str) -> str:
        return f"{self.link_subnet(name)}.1"

    def tor_ip(self, name: str) -> str:
        """The ToR's address on this node's link (the node's BGP peer and next hop)."""
        return f"{self.link_subnet(name)}.254"
