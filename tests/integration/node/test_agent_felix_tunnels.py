"""Real agents follow FelixConfiguration's tunnel fields live: vxlanMTU/ipipMTU, vxlanEnabled/ipipEnabled.

Two nodes on one L2 segment (a veth, MTU 1500), a VXLAN pool (vxlanMode Always), the real CNI
plugin, real etcd; every check reads the kernel (``ip -j``) or sends real pings:

* auto: ``vxlan.tabby`` has 1450 (1500 - 50), so have new pods, remote blocks route through it;
* ``default`` vxlanMTU 1400: the device goes to 1400 on both nodes, a new pod gets 1400;
* ``default`` vxlanEnabled false: the device is gone on both nodes although the pool asks for it,
  the remote block routes natively over eth0, pods still reach each other (same segment), a new
  pod gets the NIC's 1500, ``node status`` says why; the VTEP address stays (it follows the pools);
* vxlanEnabled removed again: the device is back at 1400 and routes go through it;
* mtuIfacePattern matching a 1400 interface on node a only: a's device and new pods get 1350.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from .conftest import PYTHON, NodeLab, Pod, apply_pool, in_ns

FELIX = """\
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec: {spec}
"""


def _felix(env: dict[str, str], **spec: Any) -> None:
    proc = subprocess.run([PYTHON, "-m", "controller.cli.main", "apply", "-f", "-"], env=env, capture_output=True,
                          text=True, input=FELIX.format(spec=json.dumps(spec)), timeout=30)
    assert proc.returncode == 0, proc.stderr


def _status(env: dict[str, str], node: str) -> dict[str, Any]:
    proc = subprocess.run([PYTHON, "-m", "controller.cli.main", "node", "status", "--nodename", node, "-o", "json"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _mtu(ns: str, dev: str) -> int | None:
    proc = in_ns(ns, "ip", "-j", "link", "show", "dev", dev, check=False)
    return json.loads(proc.stdout)[0]["mtu"] if proc.returncode == 0 else None


def _route_dev(ns: str, ip: str) -> str:
    proc = in_ns(ns, "ip", "-j", "route", "get", ip, check=False)  # fails with no route at all
    return json.loads(proc.stdout)[0].get("dev", "") if proc.returncode == 0 else ""


def test_agents_follow_vxlan_mtu_and_vxlan_enabled_live(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    apply_pool(etcd_env, vxlanMode="Always")
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    for n in (a, b):
        node_lab.set_address(n)
        node_lab.start_agent(n)
    ns_a, ns_b = node_lab.nodes[a], node_lab.nodes[b]
    env = {**etcd_env, "TABBY_RUN_ROOT": str(node_lab.run_root)}

    def pod(node: str, name: str) -> Pod:
        p = node_lab.add_pod(node, name)
        in_ns(p.netns, "ip", "link", "set", "lo", "up")
        return p

    pa, pb = pod(a, "pa"), pod(b, "pb")
    _until(lambda: _mtu(ns_a, "vxlan.tabby") == 1450 and _mtu(ns_b, "vxlan.tabby") == 1450, 15, "vxlan.tabby 1450")
    assert _mtu(pa.netns, "eth0") == 1450
    _until(lambda: _route_dev(ns_a, pb.ip) == "vxlan.tabby", 10, "b's block routed through vxlan.tabby")
    assert node_lab.ping(pa.netns, pb.ip, count=2), "no VXLAN path between the pods"

    _felix(env, vxlanMTU=1400)
    _until(lambda: _mtu(ns_a, "vxlan.tabby") == 1400 and _mtu(ns_b, "vxlan.tabby") == 1400, 10,
           "vxlan.tabby at vxlanMTU 1400 on both nodes")
    assert _mtu(pod(a, "pa2").netns, "eth0") == 1400, "a new pod must fit the tunnel"
    assert _status(env, a)["felix_configuration"]["vxlanMTU"] == 1400

    _felix(env, vxlanMTU=1400, vxlanEnabled=False)
    _until(lambda: _mtu(ns_a, "vxlan.tabby") is None and _mtu(ns_b, "vxlan.tabby") is None, 10,
           "vxlan.tabby removed with vxlanEnabled false")
    _until(lambda: _route_dev(ns_a, pb.ip) == "eth0", 10, "b's block routed natively")
    assert node_lab.ping(pa.netns, pb.ip, count=2), "no native path between the pods on one segment"
    assert _mtu(pod(a, "pa3").netns, "eth0") == 1500, "no tunnel programmed: the NIC's MTU"
    felix = _status(env, a)["felix_configuration"]
    assert felix["vxlanEnabled"] is False and "vxlanEnabled is false" in felix["tunnels_off"]["vxlan"]
    nodes = json.loads(subprocess.run([PYTHON, "-m", "controller.cli.main", "get", "nodes", "-o", "json"], env=env,
                                      capture_output=True, text=True, timeout=30, check=True).stdout)["items"]
    assert all(n["spec"].get("ipv4VXLANTunnelAddr") for n in nodes), "the VTEP addresses follow the pools"

    _felix(env, vxlanMTU=1400)
    _until(lambda: _mtu(ns_a, "vxlan.tabby") == 1400 and _mtu(ns_b, "vxlan.tabby") == 1400, 10, "vxlan.tabby back")
    _until(lambda: _route_dev(ns_a, pb.ip) == "vxlan.tabby", 10, "b's block through vxlan.tabby again")
    assert node_lab.ping(pa.netns, pb.ip, count=2)
    assert _status(env, a)["felix_configuration"]["tunnels_off"] == {}

    # mtuIfacePattern: node a's smallest matching interface (a 1400 veth) sets its auto tunnel MTU
    # (1350) and its new pods'; node b has no such interface and keeps its NIC's (1450).
    in_ns(ns_a, "ip", "link", "add", "data0", "mtu", "1400", "type", "veth", "peer", "name", "data0p")
    in_ns(ns_a, "ip", "link", "set", "data0", "up")
    _felix(env, mtuIfacePattern="^(eth|data)")
    _until(lambda: _mtu(ns_a, "vxlan.tabby") == 1350, 10, "a's vxlan.tabby from data0's MTU")
    assert _mtu(pod(a, "pa4").netns, "eth0") == 1350
    assert _status(env, a)["felix_configuration"]["host_mtu"] == 1400
    assert _mtu(ns_b, "vxlan.tabby") == 1450 and _status(env, b)["felix_configuration"]["host_mtu"] == 1500
    assert node_lab.ping(pa.netns, pb.ip, count=2)



def test_agents_follow_ipip_mtu_and_ipip_enabled_live(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    """IPIP on this host kernel, which has no ipip module (tests/integration/felix_like/test_ipip_device.py):
    the agent cannot create tunl0, so the route to the other node's block through it is never
    programmed and the pods cannot reach each other. ipipMTU 1420 still sets new pods' MTU (tunl0's
    own MTU is checked in the guest kernel: tests/guest/test_agent_ipip.py); ipipEnabled false routes
    the block natively over eth0, the pods reach each other, ``node status`` says why; removing it
    goes back to IPIP."""
    apply_pool(etcd_env, ipipMode="Always")
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    for n in (a, b):
        node_lab.set_address(n)
        node_lab.start_agent(n)
    ns_a = node_lab.nodes[a]
    env = {**etcd_env, "TABBY_RUN_ROOT": str(node_lab.run_root)}
    pa, pb = node_lab.add_pod(a, "pa"), node_lab.add_pod(b, "pb")
    assert _mtu(pa.netns, "eth0") == 1480, "IPIP pool: NIC minus 20"
    assert _mtu(ns_a, "tunl0") is None and _route_dev(ns_a, pb.ip) != "eth0"
    assert not node_lab.ping(pa.netns, pb.ip, wait=1)

    _felix(env, ipipMTU=1420)
    _until(lambda: _status(env, a)["felix_configuration"]["ipipMTU"] == 1420, 10, "ipipMTU in force")
    assert _mtu(node_lab.add_pod(a, "pa2").netns, "eth0") == 1420

    _felix(env, ipipMTU=1420, ipipEnabled=False)
    _until(lambda: _route_dev(ns_a, pb.ip) == "eth0", 10, "b's block routed natively with ipipEnabled false")
    _until(lambda: node_lab.ping(pa.netns, pb.ip, wait=1), 10, "the pods reach each other natively")
    assert _mtu(node_lab.add_pod(a, "pa3").netns, "eth0") == 1500
    assert "ipipEnabled is false" in _status(env, a)["felix_configuration"]["tunnels_off"]["ipip"]

    # Back to IPIP. (Here the route through tunl0 cannot be programmed, so the kernel keeps the
    # native one the route programmer failed to replace; the VXLAN test checks the way back.)
    _felix(env, ipipMTU=1420)
    _until(lambda: _status(env, a)["felix_configuration"]["tunnels_off"] == {}, 10, "IPIP programmed again")
    assert _mtu(node_lab.add_pod(a, "pa4").netns, "eth0") == 1420
