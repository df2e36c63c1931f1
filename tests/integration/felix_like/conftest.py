"""A throw-away node namespace for route-programmer tests: NIC, workload veth, VXLAN device.

Everything lives in a fresh ``tabbytest-<random>`` namespace; deleting the namespace removes
every link and route in it, so cleanup is one call, done also when the test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class NodeNS:
    name: str

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "-n", self.name, *args], check=check, capture_output=True, text=True, timeout=10)

    def routes(self, *selector: str, family: str = "-4") -> list[dict]:
        """``ip -j route show`` output (a list of route objects)."""
        out = self.ip("-j", family, "route", "show", *selector).stdout
        return json.loads(out or "[]")


def make_node_namespace() -> NodeNS:
    """A namespace with eth0 192.0.2.11/24 (+ 2001:db8:1::11/64), workload veth tabwl0 and vxlan.tabby, all up."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"tabbytest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    ns = NodeNS(name)
    try:
        for cmd in (
            "link set lo up",
            "link add eth0 type veth peer name eth0peer",
            "link add tabwl0 type veth peer name tabwl0peer",
            "addr add 192.0.2.11/24 dev eth0",
            "addr add 2001:db8:1::11/64 dev eth0 nodad",
            "link add vxlan.tabby type vxlan id 4096 dstport 4789 local 192.0.2.11 dev eth0",
            "link add vxlan-v6.tabby type vxlan id 4096 dstport 4789 local 2001:db8:1::11 dev eth0",
        ):
            ns.ip(*cmd.split())
        for dev in ("eth0", "eth0peer", "tabwl0", "tabwl0peer", "vxlan.tabby", "vxlan-v6.tabby"):
            ns.ip("link", "set", dev, "up")
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
        raise
    return ns


@pytest.fixture
def node_ns() -> Iterator[NodeNS]:
    ns = make_node_namespace()
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False, timeout=10)
