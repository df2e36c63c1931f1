"""The link monitor reports a link that came *back* up (it may have lost routes), never a new one.

Why it matters: a pod's veth is new, and its carrier comes up right after it is created; reported
as "up", it cost a full route resync (a dump of every route: O(cluster)) on every CNI ADD, which
is how a local ADD grew with the number of nodes (issue 8)."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from felix_like.netlink import LinkMonitor

from .conftest import NodeNS

pytestmark = pytest.mark.root


def settle(mon: LinkMonitor) -> list[int]:
    time.sleep(0.2)
    return mon.read_changes()[0]


def ifindex(ns: NodeNS, dev: str) -> int:
    return int(ns.ip("-j", "link", "show", dev).stdout.split('"ifindex":')[1].split(",")[0])


def test_new_links_are_not_reported_as_back_up(node_ns: NodeNS) -> None:
    pod = f"tabbytest-pod-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", pod], check=True, timeout=10)
    mon = LinkMonitor(node_ns.name)
    try:
        # a pod's veth as CNI makes it: host side up, peer in the pod namespace, then the peer up
        node_ns.ip("link", "add", "tabnew0", "up", "type", "veth", "peer", "name", "eth0", "netns", pod)
        subprocess.run(["ip", "-n", pod, "link", "set", "eth0", "up"], check=True, timeout=10)
        # a link created down, then brought up
        node_ns.ip("link", "add", "tabnew1", "type", "veth", "peer", "name", "tabnew1p")
        node_ns.ip("link", "set", "tabnew1", "up")
        node_ns.ip("link", "set", "tabnew1p", "up")
        assert settle(mon) == []

        # an existing link (up when the monitor started) going down and up: reported
        node_ns.ip("link", "set", "eth0", "down")
        assert settle(mon) == []
        node_ns.ip("link", "set", "eth0", "up")
        assert ifindex(node_ns, "eth0") in settle(mon)
        # and the new veth, once it has been up: its flap is reported too
        node_ns.ip("link", "set", "tabnew0", "down")
        node_ns.ip("link", "set", "tabnew0", "up")
        assert settle(mon) == [ifindex(node_ns, "tabnew0")]  # its peer is in the pod namespace
    finally:
        mon.close()
        subprocess.run(["ip", "netns", "del", pod], check=False, timeout=10)


def test_a_link_down_at_start_is_reported_when_it_comes_up(node_ns: NodeNS) -> None:
    node_ns.ip("link", "set", "tabwl0", "down")
    mon = LinkMonitor(node_ns.name)
    try:
        node_ns.ip("link", "set", "tabwl0", "up")
        assert ifindex(node_ns, "tabwl0") in settle(mon)  # (its peer lost its carrier with it: also back)
    finally:
        mon.close()
