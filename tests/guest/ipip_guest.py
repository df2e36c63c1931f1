"""The IPIP scenario with the felix_like managers, run INSIDE the guest kernel (tests/guest/runner.py).

Why a guest: the host kernel has no ipip module. Started by tests/guest/test_ipip.py after veth
is loaded and before ipip is (the manager's "module missing" error is checked first). Writes one
JSON result (tests/guest/report.py); the host test asserts on it. Everything happens in
namespaces of the guest kernel, which itself vanishes at power-off; nothing is written to the
host filesystem but the result.

Shape: two nodes on different /24s behind a router, so IPIP (CrossSubnet or Always) is needed:

    wa 10.65.1.5 -- node-a 192.168.10.2/24 -- router (.10.1 | .20.1) -- 192.168.20.2/24 node-b -- wb 10.65.2.5
"""

from __future__ import annotations

import json
import subprocess
import traceback

from felix_like.ipip import MODULE_MISSING, IPIPConfig, IPIPManager
from felix_like.route_programmer import RouteProgrammer
from felix_like.routes import (
    BlockInfo,
    EncapMode,
    LocalNodeInfo,
    PoolInfo,
    RemoteNodeInfo,
    RouteInputs,
    calculate_routes,
)
from tests.guest.report import step, write_result
from tests.uml.nslab import Lab

NODES = {
    "node-a": ("192.168.10.2/24", "192.168.10.1", "10.65.1.0"),
    "node-b": ("192.168.20.2/24", "192.168.20.1", "10.65.2.0"),
}
BLOCKS = (BlockInfo("10.65.1.0/26", "node-a"), BlockInfo("10.65.2.0/26", "node-b"))


def route_inputs(name: str) -> RouteInputs:
    other = "node-b" if name == "node-a" else "node-a"
    return RouteInputs(
        local_node=LocalNodeInfo(name, NODES[name][0], "eth0"),
        pools=(PoolInfo("10.65.0.0/16", ipip_mode=EncapMode.CROSS_SUBNET),),
        blocks=BLOCKS,
        remote_nodes=(RemoteNodeInfo(other, NODES[other][0]),),
    )


def scenario(checks: dict[str, object]) -> None:
    step("topology")
    with Lab() as lab:
        router = lab.netns("router")
        nodes = {name: lab.netns(name) for name in NODES}
        for i, (name, (cidr, gw, _tunnel)) in enumerate(NODES.items()):
            lab.veth(router, f"eth{i}", nodes[name], "eth0")
            router.ip("addr", "add", f"{gw}/24", "dev", f"eth{i}")
            nodes[name].ip("addr", "add", cidr, "dev", "eth0")
            nodes[name].ip("route", "add", "default", "via", gw)
        pods = {
            "node-a": lab.workload(nodes["node-a"], "wa", "10.65.1.5", "tabwa"),
            "node-b": lab.workload(nodes["node-b"], "wb", "10.65.2.5", "tabwb"),
        }
        # before the module is loaded: a clear error, nothing raised
        missing = IPIPManager(nodes["node-a"].name).apply(IPIPConfig(NODES["node-a"][2], "eth0"))
        checks["missing_module_error"] = missing.error
        checks["missing_module_ok"] = missing.error == MODULE_MISSING
        step("modprobe-ipip")
        subprocess.run(["modprobe", "ipip"], check=True, timeout=60)

        for name, ns in nodes.items():
            result = IPIPManager(ns.name).apply(IPIPConfig(NODES[name][2], "eth0"))
            checks[f"{name}_apply"] = {"ok": result.ok, "error": result.error, "changes": result.changes}
            with RouteProgrammer(ns.name) as prog:
                routes = prog.full_resync(calculate_routes(route_inputs(name)))
            checks[f"{name}_routes_ok"] = routes.ok and routes.added == 2
        a = nodes["node-a"]
        tunl = json.loads(a.ip("-j", "-d", "link", "show", "dev", "tunl0").stdout)[0]
        addrs = json.loads(a.ip("-j", "-4", "addr", "show", "dev", "tunl0").stdout)[0]["addr_info"]
        route = json.loads(a.ip("-j", "route", "show", "10.65.2.0/26").stdout)[0]
        checks["tunl0"] = {
            "mtu": tunl["mtu"],
            "up": "UP" in tunl["flags"],
            "addrs": [f"{x['local']}/{x['prefixlen']}" for x in addrs],
        }
        checks["route"] = {"gateway": route.get("gateway"), "dev": route.get("dev"), "flags": route.get("flags")}
        step("traffic")
        before = {name: ns.link_stats("tunl0") for name, ns in nodes.items()}
        checks["ping"] = pods["node-a"].ping("10.65.2.5", count=3)
        checks["tcp_peer"] = lab.tcp_peer(pods["node-b"], pods["node-a"], "10.65.2.5", 8080)
        after = {name: ns.link_stats("tunl0") for name, ns in nodes.items()}
        checks["tunl0_tx_a"] = after["node-a"]["tx_packets"] - before["node-a"]["tx_packets"]
        checks["tunl0_rx_b"] = after["node-b"]["rx_packets"] - before["node-b"]["rx_packets"]
        step("drift")
        # drift: MTU and address changed by hand are restored; a second pass is a no-op
        a.ip("link", "set", "tunl0", "mtu", "1300")
        a.ip("addr", "add", "10.99.0.1/24", "dev", "tunl0")
        repaired = IPIPManager(a.name).apply(IPIPConfig(NODES["node-a"][2], "eth0"))
        checks["repair_changes"] = repaired.changes
        checks["noop_writes"] = IPIPManager(a.name).apply(IPIPConfig(NODES["node-a"][2], "eth0")).writes


def main() -> None:
    checks: dict[str, object] = {}
    try:
        scenario(checks)
        checks["error"] = None
    except Exception:  # report everything to the host test instead of dying silently
        checks["error"] = traceback.format_exc()
    write_result(checks)


if __name__ == "__main__":
    main()
