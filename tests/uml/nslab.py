"""A tiny namespace lab for the tunnel and NAT dataplane tests, on the host and inside the guest kernel.

Why here (tests/uml, where it began): the IPIP tests run inside a guest kernel (tests/guest) with only the
repository and the standard library plus the venv to work with; the VXLAN and NAT integration
tests build the same shapes (node namespaces, workload namespaces behind a /32 veth with
proxy_arp) on the host. One helper keeps both honest.

Safety: every namespace is ``tabbytest-<random>-<role>``, every link and address is created
inside one of them, and :class:`Lab` deletes all namespaces and kills every process it started,
also when the test fails. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

TIMEOUT_S = 15


@dataclass(frozen=True)
class Netns:
    """One namespace; every command runs inside it."""

    name: str

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "-n", self.name, *args], check=check, capture_output=True, text=True, timeout=TIMEOUT_S
        )

    @property
    def enter(self) -> list[str]:
        """Command prefix running a program in this namespace.

        nsenter rather than ``ip netns exec``: the latter remounts /sys, which fails in a UML
        guest (hostfs root) and is not needed here (/proc/sys/net follows the network namespace).
        """
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def exec(self, *cmd: str, check: bool = True, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.enter, *cmd], check=check, capture_output=True, text=True, timeout=timeout)

    def sysctl(self, key: str, value: str) -> None:
        self.exec("sysctl", "-q", "-w", f"{key}={value}")

    def link_stats(self, dev: str) -> dict[str, int]:
        """``ip -s link`` counters of ``dev``: {"tx_packets", "rx_packets", ...}."""
        data = json.loads(self.ip("-j", "-s", "link", "show", "dev", dev).stdout)[0]
        stats = data["stats64"]
        return {f"{d}_{k}": v for d in ("tx", "rx") for k, v in stats[d].items()}

    def ping(self, dst: str, count: int = 3) -> bool:
        """True when at least one of ``count`` pings (0.2 s apart, 2 s deadline each) got an answer."""
        proc = self.exec(
            "ping", "-c", str(count), "-i", "0.2", "-W", "2", "-w", str(2 + count), dst, check=False, timeout=10 + count
        )
        return proc.returncode == 0


_TCP_SERVER = r"""
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
srv.settimeout(float(sys.argv[3]))
print("listening", flush=True)
conn, peer = srv.accept()
conn.settimeout(5)
data = conn.recv(100)
conn.sendall(b"echo:" + data)
print(peer[0], flush=True)
conn.close()
"""

_TCP_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
c.sendall(b"hello")
print(c.recv(100).decode(), flush=True)
"""


@dataclass
class Lab:
    """Creates namespaces and processes and always removes them (use as a context manager)."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[Netns] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True, timeout=TIMEOUT_S)
        self.namespaces.clear()

    def netns(self, role: str) -> Netns:
        """A fresh namespace ``tabbytest-<tag>-<role>`` with lo up and forwarding on."""
        ns = Netns(f"tabbytest-{self.tag}-{role}")
        subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True, timeout=TIMEOUT_S)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        ns.sysctl("net.ipv4.ip_forward", "1")
        return ns

    @staticmethod
    def veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair with one end in each namespace, both up (created inside ``a``)."""
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.ip("link", "set", a_if, "up")
        b.ip("link", "set", b_if, "up")

    def workload(self, node: Netns, role: str, ip: str, host_if: str) -> Netns:
        """A pod-like namespace behind ``node``: eth0 ip/32, 169.254.1.1 gateway, proxy_arp host veth, /32 route."""
        pod = self.netns(role)
        self.veth(node, host_if, pod, "eth0")
        pod.ip("addr", "add", f"{ip}/32", "dev", "eth0")
        pod.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        pod.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        # proxy_arp answers only when the node has a route to 169.254.1.1 (a default route on a real
        # host); test nodes have none, so pin the gateway's MAC to the host veth's as ptp does.
        mac = json.loads(node.ip("-j", "link", "show", "dev", host_if).stdout)[0]["address"]
        pod.ip("neigh", "add", "169.254.1.1", "lladdr", mac, "dev", "eth0", "nud", "permanent")
        node.sysctl(f"net.ipv4.conf.{host_if}.proxy_arp", "1")
        node.ip("route", "add", f"{ip}/32", "dev", host_if, "scope", "link")
        return pod

    def tcp_peer(self, server: Netns, client: Netns, listen_ip: str, port: int, timeout: float = 8.0) -> str:
        """Connect from ``client`` to ``listen_ip:port`` in ``server``; return the peer address the server saw."""
        proc = subprocess.Popen(
            [*server.enter, sys.executable, "-c", _TCP_SERVER, listen_ip, str(port), str(timeout)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        if first != "listening":
            proc.kill()
            raise RuntimeError(f"tcp server did not start: {first!r} {proc.stderr.read() if proc.stderr else ''}")
        reply = client.exec(sys.executable, "-c", _TCP_CLIENT, listen_ip, str(port), str(timeout), timeout=timeout + 5)
        assert reply.stdout.strip() == "echo:hello", reply
        out, _err = proc.communicate(timeout=timeout + 5)
        return out.strip()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true or ``timeout`` seconds passed (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
