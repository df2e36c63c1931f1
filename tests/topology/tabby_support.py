"""Helpers for the Tabby topology tests: deploy an example through the CLI, add pods, read routes.

Why a fixture of their own (not ``make_lab``): a Tabby lab has more to clean and to check than
namespaces and daemons: pod namespaces (``lab pod add``), the agents' run directories, the
by-netns socket links. Each lab's agents get a run root under the test's temp directory
(``TABBY_RUN_ROOT`` in ``topology.defaults.env`` of the copy) so a test never touches the
``/run/tabby/<node>`` of a lab a developer has deployed from the same example.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import load_topology
from lab.deploy import POD_NETNS_INFIX
from lab.state import LabState
from lab.topology import Topology
from tests.topology.conftest import copy_lab, lab_cli, leftovers, netns_list, root_namespace_snapshot

BLOCK_PREFIX = 26
VXLAN_DEV = "vxlan.tabby"


@dataclass
class TabbyLab:
    """A deployed copy of an example: its file, topology, pods (name -> ``pod add`` JSON)."""

    path: Path
    topo: Topology
    run_root: Path
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return lab_cli(*args[:1], "-t", str(self.path), *args[1:], timeout=timeout)

    def netns(self, node: str) -> str:
        return self.topo.nodes[node].netns

    def add_pod(self, node: str, name: str, *extra: str) -> dict[str, Any]:
        proc = lab_cli("pod", "add", "-t", str(self.path), node, name, *extra)
        assert proc.returncode == 0, f"pod add {node} {name}: {proc.stderr}"
        assert "Traceback" not in proc.stderr
        pod = json.loads(proc.stdout)
        assert pod["node"] == node and pod["name"] == name and pod["netns"].startswith(self.netns(node))
        assert len(pod["ips"]) == 1 and pod["ips"][0].endswith("/32"), pod
        self.pods[name] = pod
        return pod

    def pod_ip(self, name: str) -> str:
        return str(self.pods[name]["ips"][0]).split("/")[0]

    def block_of(self, name: str) -> str:
        return str(ipaddress.ip_network(f"{self.pod_ip(name)}/{BLOCK_PREFIX}", strict=False))

    def exec(self, node: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return lab_cli("exec", "-t", str(self.path), node, "--", *argv, timeout=timeout)

    def tabbyctl_json(self, node: str, *args: str) -> Any:
        proc = self.exec(node, "tabbyctl", *args, "-o", "json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def routes(self, node: str) -> dict[str, tuple[str, str, str, bool]]:
        """Tabby's routes (proto 81) in ``node``: dst -> (type, gateway, dev, onlink)."""
        out = subprocess.run(["ip", "-n", self.netns(node), "-j", "route", "show", "proto", "81"],
                             capture_output=True, text=True, check=True, timeout=10).stdout
        table: dict[str, tuple[str, str, str, bool]] = {}
        for r in json.loads(out or "[]"):
            dst = r["dst"] if "/" in r["dst"] else f"{r['dst']}/32"
            table[dst] = (r.get("type", "unicast"), r.get("gateway", ""), r.get("dev", ""),
                          "onlink" in r.get("flags", []))
        return table

    def wait_routes(self, node: str, expected: dict[str, tuple[str, str, str | None, bool]],
                    timeout: float = 20) -> None:
        """Until ``node``'s proto-81 routes are exactly ``expected`` (dev None = any ``tab*`` veth)."""
        deadline = time.monotonic() + timeout
        got: dict[str, tuple[str, str, str, bool]] = {}
        while time.monotonic() < deadline:
            got = self.routes(node)
            if set(got) == set(expected) and all(_route_matches(got[d], want) for d, want in expected.items()):
                return
            time.sleep(0.25)
        pytest.fail(f"node {node}: routes (proto 81) are\n  {got}\nexpected\n  {expected}")


def _route_matches(got: tuple[str, str, str, bool], want: tuple[str, str, str | None, bool]) -> bool:
    kind, gateway, dev, onlink = want
    if dev is None:
        return got[0] == kind and got[1] == gateway and got[2].startswith("tab") and got[3] == onlink
    return got == (kind, gateway, dev, onlink)


def items(listing: Any) -> list[dict[str, Any]]:
    """``tabbyctl get -o json`` gives a list, or a ``{"items": [...]}`` object: the resources either way."""
    return list(listing.get("items", [listing]) if isinstance(listing, dict) else listing)


def local_pod_route() -> tuple[str, str, None, bool]:
    return ("unicast", "", None, False)


def blackhole() -> tuple[str, str, str, bool]:
    return ("blackhole", "", "", False)


def pod_netns_left(topo: Topology) -> list[str]:
    prefixes = tuple(f"{n.netns}{POD_NETNS_INFIX}" for n in topo.nodes.values())
    return [ns for ns in netns_list() if ns.startswith(prefixes)]


def tabby_leftovers(lab: TabbyLab) -> list[str]:
    """Everything of the lab still there: namespaces (nodes and pods), processes, run directories."""
    found = leftovers(lab.path)
    found += [f"pod namespace {ns}" for ns in pod_netns_left(lab.topo)]
    if lab.run_root.exists():
        for path in sorted(lab.run_root.rglob("*")):
            found.append(f"path {path}")  # by-netns/ too: destroy --cleanup removes it
    return found


def prepare_copy(tmp_path: Path, source: Path, env: dict[str, str] | None = None) -> TabbyLab:
    """A renamed copy of ``source`` whose agents keep their run directories under ``tmp_path``.

    ``env`` is merged into ``topology.defaults.env`` (e.g. another CALICO_NETWORKING_BACKEND).
    """
    path = copy_lab(tmp_path, source)
    data = yaml.safe_load(path.read_text())
    run_root = tmp_path / "run"
    defaults_env = data["topology"].setdefault("defaults", {}).setdefault("env", {})
    defaults_env.update(env or {})
    defaults_env["TABBY_RUN_ROOT"] = str(run_root)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return TabbyLab(path=path, topo=load_topology(path), run_root=run_root)


@pytest.fixture(name="tabby_lab")
def tabby_lab_fixture(tmp_path: Path) -> Iterator[Callable[[Path], TabbyLab]]:
    """``tabby_lab(example, env=None)`` deploys a copy through ``tabbyctl lab deploy``.

    Teardown, also after a failure: ``destroy --cleanup``; then no namespace (node or pod), no
    process, no agent run directory may be left, and the root namespace is as it was.
    """
    labs: list[TabbyLab] = []
    before = root_namespace_snapshot()

    def make(source: Path, env: dict[str, str] | None = None) -> TabbyLab:
        lab = prepare_copy(tmp_path, source, env)
        labs.append(lab)
        started = time.monotonic()
        proc = lab_cli("deploy", "-t", str(lab.path), timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr, proc.stderr  # every exec (addresses, routes, pool) worked
        print(f"deployed {lab.topo.name} in {time.monotonic() - started:.1f}s", file=sys.stderr)
        return lab

    try:
        yield make
    finally:
        problems: list[str] = []
        for lab in labs:
            state = LabState.load(lab.topo.name)
            processes = state.processes if state else []
            proc = lab_cli("destroy", "-t", str(lab.path), "--cleanup", "--purge", timeout=120)
            if proc.returncode != 0:
                problems.append(f"destroy failed: {proc.stderr.strip()}")
            problems += tabby_leftovers(lab)
            problems += [f"process {p.pid} {p.node}/{p.name}" for p in processes if p.alive()]
        assert not problems, f"left behind: {problems}"
        assert root_namespace_snapshot() == before, "the root namespace changed"


ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(20)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(10)
data = c.recv(1024); c.sendall(b"echo:" + data); c.close()
"""

ECHO_CLIENT = """
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
c.settimeout(5); c.sendall(b"hello from " + sys.argv[3].encode())
print(c.recv(1024).decode())
"""


def tcp_echo(server_netns: str, server_ip: str, client_netns: str, port: int = 8080) -> str:
    """A bounded TCP round trip between two pod namespaces; returns what the client got back."""
    server = subprocess.Popen(["ip", "netns", "exec", server_netns, sys.executable, "-I", "-c", ECHO_SERVER,
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        client = subprocess.run(["ip", "netns", "exec", client_netns, sys.executable, "-I", "-c", ECHO_CLIENT,
                                 server_ip, str(port), client_netns], capture_output=True, text=True, timeout=30,
                                check=False)
        assert client.returncode == 0, client.stderr
        server.wait(timeout=10)
        return client.stdout.strip()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
