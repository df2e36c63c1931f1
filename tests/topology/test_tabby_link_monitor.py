"""The agent's link/address monitor in a lab: examples/two-node-native deployed by ``tabbyctl lab
deploy``, real agents (supervised as the tabby/node image runs them), pods added by the real CNI
plugin. native1's uplink (eth1) goes down: native1's kernel drops every route through it and sends no
route notification (native2's end only loses its carrier: its routes stay, flagged linkdown);
when it comes back up, native1's agent has its remote route back within 1 s, with the periodic
resync set to 90 s so that it cannot be what restores it. Then pods on both nodes reach each
other again.
(tests/integration/node/test_agent_link.py is the same check on bare namespaces.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from tests.topology.conftest import EXAMPLES
from tests.topology.tabby_support import (  # noqa: F401 - tabby_lab_fixture provides the tabby_lab fixture
    TabbyLab,
    tabby_lab_fixture,
)

NODE_IP = {"native1": "10.10.1.11", "native2": "10.10.1.12"}
OTHER = {"native1": "native2", "native2": "native1"}


def test_uplink_down_up_routes_back_within_a_second(tabby_lab: Callable[..., TabbyLab]) -> None:
    lab = tabby_lab(EXAMPLES / "two-node-native.clab.yml", {"TABBY_RESYNC_INTERVAL": "90"})
    lab.add_pod("native1", "near")
    lab.add_pod("native2", "far")
    blocks = {"native1": lab.block_of("near"), "native2": lab.block_of("far")}

    def remote(node: str) -> tuple[str, str, str, bool] | None:
        return lab.routes(node).get(blocks[OTHER[node]])

    want = {node: ("unicast", NODE_IP[OTHER[node]], "eth1", False) for node in NODE_IP}
    deadline = time.monotonic() + 20
    while any(remote(n) != want[n] for n in NODE_IP) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(remote(n) == want[n] for n in NODE_IP), {n: remote(n) for n in NODE_IP}

    uplink = ["ip", "-n", lab.netns("native1"), "link", "set", "eth1"]
    subprocess.run([*uplink, "down"], check=True, timeout=10)
    gone = time.monotonic() + 2
    while remote("native1") is not None and time.monotonic() < gone:
        time.sleep(0.02)
    assert remote("native1") is None, "the kernel kept a route through a link that is down"
    time.sleep(0.3)
    subprocess.run([*uplink, "up"], check=True, timeout=10)
    start = time.monotonic()
    while remote("native1") != want["native1"] and time.monotonic() - start < 5:
        time.sleep(0.02)
    took = time.monotonic() - start
    assert remote("native1") == want["native1"], f"route not back after {took:.2f}s: {remote('native1')}"
    print(f"native1: route back {took:.3f}s after eth1 up", file=sys.stderr)
    assert took <= 1.0, f"route back after {took:.2f}s (must be within 1 s)"
    assert remote("native2") == want["native2"]

    proc = lab.cli("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
