"""Node agents with BGP on (CALICO_NETWORKING_BACKEND=bird) in throw-away namespaces: N node namespaces
plugged into a bridge that lives in its own "switch" namespace (never the root namespace), real agents,
real ExaBGP, pods through the real CNI plugin. Built on the node tests' NodeLab; cleanup kills every
process in every namespace (ExaBGP outlives its agent by design) and deletes the namespaces.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.integration.node.conftest import PYTHON, NodeLab, in_ns, kill_netns_processes, sh

T = TypeVar("T")
BGP_SUBNET = "10.213.78"
BGP_POOL = "10.247.0.0/16"
TABBYCTL = str(Path(PYTHON).parent / "tabbyctl")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll until probe() is truthy; AssertionError naming `what` and the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class BgpLab(NodeLab):
    """Nodes on BGP_SUBNET.0/24 through a bridge in a switch namespace; agents run BGP."""

    subnet = BGP_SUBNET

    def __init__(self, tmp: Path, etcd_env: dict[str, str]) -> None:
        super().__init__(tmp, etcd_env)
        self.switch = f"tbs-{self.tag}"

    def add_nodes(self, count: int = 3) -> None:  # type: ignore[override]
        sh("ip", "netns", "add", self.switch)
        self.extra_ns.append(self.switch)
        in_ns(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(self.switch, "ip", "link", "set", "br0", "up")
        for i in range(count):
            name = f"tg{self.tag}{chr(ord('a') + i)}"
            ns = f"tbn-{name}"
            sh("ip", "netns", "add", ns)
            self.nodes[name] = ns
            in_ns(ns, "ip", "link", "set", "lo", "up")
            self.plug(ns, f"p{i}", "eth0")

    def plug(self, ns: str, port: str, ifname: str) -> None:
        """A veth from the switch's bridge (port name `port`) to `ifname` in `ns`."""
        in_ns(self.switch, "ip", "link", "add", port, "type", "veth", "peer", "name", f"x{port}", "netns", ns)
        in_ns(ns, "ip", "link", "set", f"x{port}", "name", ifname)
        in_ns(ns, "ip", "link", "set", ifname, "up")
        in_ns(self.switch, "ip", "link", "set", port, "master", "br0")
        in_ns(self.switch, "ip", "link", "set", port, "up")

    def node_ip(self, name: str) -> str:
        return f"{self.subnet}.{list(self.nodes).index(name) + 1}"

    def agent_env(self, name: str, **extra: str) -> dict[str, str]:
        env = super().agent_env(name)
        env["CALICO_NETWORKING_BACKEND"] = "bird"
        env.update(extra)
        return env

    # -- views -----------------------------------------------------------------------------------
    def bgp_status(self, name: str) -> dict[str, Any]:
        """BGP_STATUS straight from the agent's socket ({} while it does not answer)."""
        path = self.run_root / name / "agent.sock"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(path))
                s.sendall(json.dumps({"command": "BGP_STATUS"}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
            return json.loads(data).get("result", {})
        except (OSError, ValueError):
            return {}

    def node_status_cli(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.etcd_env, TABBY_RUN_ROOT=str(self.run_root))
        return subprocess.run([TABBYCTL, "node", "status", "--nodename", name, *args], capture_output=True,
                              text=True, env=env, timeout=30)

    def established(self, name: str, peers: int) -> bool:
        sessions = self.bgp_status(name).get("sessions", [])
        return len(sessions) == peers and all(s["bgp_state"] == "Established" for s in sessions)

    def routes(self, name: str) -> list[dict[str, Any]]:
        out = in_ns(self.nodes[name], "ip", "-j", "route", "show", "proto", "81").stdout
        return json.loads(out or "[]")

    def route_to(self, name: str, dst: str) -> dict[str, Any] | None:
        return next((r for r in self.routes(name) if r.get("dst") == dst), None)

    def block_of(self, pod_ip: str, name: str) -> str:
        """The /26 a node's pod came from (its blackhole route on the owner)."""
        import ipaddress

        for r in self.routes(name):
            if r.get("type") == "blackhole" and ipaddress.ip_address(pod_ip) in ipaddress.ip_network(r["dst"]):
                return str(r["dst"])
        raise AssertionError(f"no blackhole block on {name} for {pod_ip}: {self.routes(name)}")

    def cleanup(self) -> None:
        for agent in self.agents.values():
            agent.stop(9)
        for ns in [*self.nodes.values(), *self.extra_ns]:
            kill_netns_processes(ns)
        super().cleanup()
