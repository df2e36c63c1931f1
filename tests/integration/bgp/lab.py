"""Throw-away namespaces, veths and FRR/GoBGP daemons for the speaker's integration tests.

Safety: every address, link and route lives inside namespaces created here (named `tabbybgp-<random>`),
joined by veths created inside the first namespace and moved into the second one; nothing is added in
the root namespace. Every helper has a `close()` that kills what it started and deletes what it created,
and the fixtures call it also when a test fails. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # a probe that fails now may succeed later (daemon starting)
            last = exc
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last probe: {last!r})")


def run(*cmd: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


class Netns:
    """A named network namespace with lo up; `close()` deletes it (and with it every link inside)."""

    def __init__(self, tag: str) -> None:
        self.name = f"tabbybgp-{tag}-{uuid.uuid4().hex[:6]}"
        run("ip", "netns", "add", self.name)
        run("ip", "-n", self.name, "link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "-n", self.name, *args, check=check)

    def close(self) -> None:
        run("ip", "netns", "del", self.name, check=False)


def link(a: Netns, a_addr: str, b: Netns, b_addr: str, name: str = "eth") -> tuple[str, str]:
    """A veth between two namespaces, created inside `a` (never in the root namespace); addresses are CIDR."""
    suffix = uuid.uuid4().hex[:4]
    dev_a, dev_b = f"{name}{suffix}a", f"{name}{suffix}b"
    a.ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
    a.ip("link", "set", dev_b, "netns", b.name)
    a.ip("addr", "add", a_addr, "dev", dev_a)
    b.ip("addr", "add", b_addr, "dev", dev_b)
    a.ip("link", "set", dev_a, "up")
    b.ip("link", "set", dev_b, "up")
    return dev_a, dev_b


class Frr:
    """FRR 8.4 (zebra, bgpd, staticd) in a namespace, as design.md section 5 says (pathspace -N <ns>)."""

    DAEMONS: tuple[str, ...] = ("zebra", "bgpd", "staticd")

    def __init__(self, ns: Netns, *, bfd: bool = False) -> None:
        if bfd:
            self.DAEMONS = (*type(self).DAEMONS, "bfdd")
        self.ns = ns
        self.etc = Path("/etc/frr") / ns.name
        self.run_dir = Path("/var/run/frr") / ns.name
        for d in (self.etc, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "frr", "frr")
        (self.etc / "vtysh.conf").write_text("service integrated-vtysh-config\n")
        shutil.chown(self.etc / "vtysh.conf", "frr", "frr")
        try:
            for daemon in self.DAEMONS:
                run("ip", "netns", "exec", ns.name, f"/usr/lib/frr/{daemon}", "-d", "-N", ns.name)
            wait_for("FRR vtysh", lambda: self.vtysh("show version", check=False).returncode == 0, timeout=15)
        except BaseException:
            self.close()
            raise

    def vtysh(self, *commands: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["vtysh", "-N", self.ns.name]
        for c in commands:
            args += ["-c", c]
        return run(*args, check=check)

    def configure(self, text: str) -> None:
        path = self.etc / f"apply-{uuid.uuid4().hex[:6]}.conf"
        path.write_text(text)
        try:
            out = run("vtysh", "-N", self.ns.name, "-f", str(path), check=False)
            if out.returncode != 0:
                raise AssertionError(f"vtysh -f failed: {out.stdout}{out.stderr}")
        finally:
            path.unlink(missing_ok=True)

    def json(self, command: str) -> Any:
        return json.loads(self.vtysh(command).stdout or "{}")

    def neighbor(self, address: str) -> dict[str, Any]:
        """`show bgp neighbors <ip> json`'s entry for one peer ({} when unknown)."""
        data = self.json(f"show bgp neighbors {address} json")
        return data.get(address, {})

    def established(self, address: str) -> bool:
        return self.neighbor(address).get("bgpState") == "Established"

    def route(self, prefix: str) -> dict[str, Any]:
        """`show bgp ipv4 unicast <prefix> json` ({} or without paths when absent)."""
        return self.json(f"show bgp ipv4 unicast {prefix} json")

    def kill(self, daemon: str = "bgpd") -> None:
        """SIGKILL one daemon (a ToR whose BGP dies: its TCP sessions are closed by the kernel, no NOTIFICATION)."""
        pid = int((self.run_dir / f"{daemon}.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)

    def start(self, daemon: str = "bgpd") -> None:
        """Start one daemon again (it comes up with an empty configuration: `configure` it)."""
        run("ip", "netns", "exec", self.ns.name, f"/usr/lib/frr/{daemon}", "-d", "-N", self.ns.name)
        wait_for(f"FRR {daemon} answering", lambda: self.vtysh("show bgp summary json", check=False).returncode == 0,
                 timeout=15)

    def close(self) -> None:
        for daemon in reversed(self.DAEMONS):
            pidfile = self.run_dir / f"{daemon}.pid"
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.etc, ignore_errors=True)


class GoBgp:
    """gobgpd in a namespace, its gRPC API on a namespace-local loopback port."""

    def __init__(self, ns: Netns, workdir: Path, config: str, api_port: int = 50051) -> None:
        self.ns = ns
        self.api = f"127.0.0.1:{api_port}"
        self.conf = workdir / f"gobgpd-{ns.name}.toml"
        self.conf.write_text(config)
        self.log = open(workdir / f"gobgpd-{ns.name}.log", "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns.name,
                "gobgpd",
                "-f",
                str(self.conf),
                "--api-hosts",
                self.api,
                "--pprof-disable",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for("gobgpd API", lambda: self.cli("global", check=False).returncode == 0, timeout=15)
        except BaseException:
            self.close()
            raise

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        host, port = self.api.split(":")
        return run("ip", "netns", "exec", self.ns.name, "gobgp", "-u", host, "-p", port, *args, check=check)

    def neighbors(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("neighbor", "-j").stdout or "[]")

    def established(self, address: str) -> bool:
        for n in self.neighbors():
            if n.get("conf", {}).get("neighbor_address") == address:
                return n.get("state", {}).get("session_state") in (6, "established", "ESTABLISHED")
        return False

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.log.close()


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
