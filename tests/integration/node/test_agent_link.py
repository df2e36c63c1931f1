"""The link monitor: a link that goes down loses its IPv4 routes in the kernel without any route
notification; when it comes back up the agent restores its routes through it within a second (not
at the 90 s periodic resync)."""

from __future__ import annotations

import time

import pytest

from tests.integration.node.conftest import NodeLab, apply_pool, in_ns

pytestmark = pytest.mark.root


def test_uplink_down_up_routes_back_within_a_second(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    apply_pool(etcd_env)  # encapsulation Never: remote blocks via the uplink (eth0)
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    for n in (a, b):
        node_lab.set_address(n)
    for n in (a, b):
        node_lab.start_agent(n, TABBY_RESYNC_INTERVAL="90")
    pod_b = node_lab.add_pod(b, "far")
    ns_a = node_lab.nodes[a]
    want = f"via {node_lab.node_ip(b)} dev eth0"

    def remote_routes() -> list[str]:
        out = in_ns(ns_a, "ip", "route", "show", "proto", "81").stdout
        return [line for line in out.splitlines() if want in line]

    deadline = time.monotonic() + 10
    while not remote_routes() and time.monotonic() < deadline:
        time.sleep(0.05)
    before = remote_routes()
    assert before, "b's block was never routed on a"
    in_ns(ns_a, "ip", "link", "set", "eth0", "down")
    assert remote_routes() == []  # the kernel dropped them, and sent no route notification for it
    time.sleep(0.3)
    in_ns(ns_a, "ip", "link", "set", "eth0", "up")
    start = time.monotonic()
    while remote_routes() != before and time.monotonic() - start < 5:
        time.sleep(0.02)
    took = time.monotonic() - start
    assert remote_routes() == before, f"routes not back after {took:.2f}s"
    assert took <= 1.0, f"routes back after {took:.2f}s (must be within 1 s)"
    pod_a = node_lab.add_pod(a, "near")
    assert node_lab.ping(pod_a.netns, pod_b.ip, count=2)
