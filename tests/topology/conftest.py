"""Topology tests: deploy real labs (namespaces, FRR, BIRD, GoBGP, etcd) and prove they work.

Every lab is deployed from a copy of ``examples/`` (or ``labs/``) whose lab name gets a
random suffix, so the tests never collide with a lab a developer has running. Each fixture
destroys its lab with ``--cleanup`` in ``finally`` and then asserts nothing is left:
no namespace, no process, no FRR pathspace, no lab directory; and the root namespace's
interfaces and addresses are exactly what they were before the test.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, deploy, destroy, load_topology
from lab.state import ProcessRecord, lab_dir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LABS = Path(__file__).parent / "labs"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="topology tests need root (network namespaces, veth pairs, daemons)")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(skip)


# ----------------------------------------------------------------------------- helpers


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.25) -> Any:
    """Poll until ``predicate()`` is truthy (bounded); fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not true after {timeout}s (last: {last!r})")


@functools.cache
def lab_command() -> tuple[str, ...]:
    """``tabbyctl lab`` once the CLI mounts the group, ``python -m lab`` until then."""
    tabbyctl = Path(sys.executable).parent / "tabbyctl"
    if tabbyctl.exists():
        probe = subprocess.run([str(tabbyctl), "lab", "--help"], capture_output=True, text=True, timeout=30,
                               check=False)
        if probe.returncode == 0 and "deploy" in probe.stdout:
            return (str(tabbyctl), "lab")
    return (sys.executable, "-m", "lab")


def lab_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*lab_command(), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})}, check=False)


def copy_lab(tmp_path: Path, source: Path) -> Path:
    """Copy the directory of ``source`` and give the lab a unique name; returns the copied file."""
    suffix = uuid.uuid4().hex[:5]
    target_dir = tmp_path / f"{source.parent.name}-{suffix}"
    shutil.copytree(source.parent, target_dir)
    target = target_dir / source.name
    text = target.read_text()
    text, count = re.subn(r"^name: (\S+)$", lambda m: f"name: {m.group(1)}-{suffix}", text, count=1, flags=re.M)
    assert count == 1, f"{source} has no top-level name line"
    target.write_text(text)
    return target


def root_namespace_snapshot() -> tuple[list[str], list[str]]:
    """Interface names and addresses of the root namespace (what a lab must never change)."""
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    addrs = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
    names = sorted(link["ifname"] for link in links)
    ips = sorted(f"{a['ifname']}:{i['local']}/{i['prefixlen']}" for a in addrs for i in a.get("addr_info", []))
    return names, ips


def netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def leftovers(topo_path: Path, processes: list[ProcessRecord] | None = None) -> list[str]:
    """Everything of the lab still there after destroy (an empty list is the goal)."""
    topo = load_topology(topo_path)
    found = [f"namespace {ns}" for ns in netns_list() if ns in topo.netns_names()]
    found += [f"process {p.pid} {p.node}/{p.name}" for p in processes or [] if p.alive()]
    markers = [*topo.netns_names(), str(lab_dir(topo.name)) + "/"]
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(m in cmdline for m in markers):
            found.append(f"process {proc_dir.name}: {cmdline.strip()[:100]}")
    for node in topo.nodes.values():
        for path in (Path("/etc/frr") / node.netns, Path("/var/run/frr") / node.netns):
            if path.exists():
                found.append(f"path {path}")
    if lab_dir(topo.name).exists():
        found.append(f"path {lab_dir(topo.name)}")
    return found


class LabRun:
    """A lab under test: its file, its handle, and a check that the root namespace is untouched."""

    def __init__(self, path: Path, lab: Lab | None, before: tuple[list[str], list[str]]) -> None:
        self.path = path
        self.lab = lab
        self.before = before

    def assert_root_untouched(self) -> None:
        assert root_namespace_snapshot() == self.before, "a lab changed the root namespace"


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., LabRun]]:
    """``make_lab(source, deploy_it=True)``: a renamed copy, deployed through the Python API.

    Teardown (also when the test failed): ``destroy --cleanup``, then nothing may be left.
    """
    runs: list[LabRun] = []
    before = root_namespace_snapshot()

    def make(source: Path, deploy_it: bool = True) -> LabRun:
        path = copy_lab(tmp_path, source)
        run = LabRun(path, None, before)
        runs.append(run)
        if deploy_it:
            run.lab = deploy(path)
        return run

    try:
        yield make
    finally:
        problems: list[str] = []
        for run in runs:
            processes = run.lab.state.processes if run.lab else []
            destroy(run.path, cleanup=True)
            problems += leftovers(run.path, processes)
        assert not problems, f"left behind: {problems}"
        assert root_namespace_snapshot() == before, "the root namespace changed"


# ----------------------------------------------------------------------------- BGP views


def frr_peers(lab: Lab, node: str) -> dict[str, str]:
    proc = lab.exec(node, ["vtysh", "-c", "show bgp summary json"], check=True)
    data = json.loads(proc.stdout or "{}")
    return {peer: info["state"] for peer, info in data.get("ipv4Unicast", {}).get("peers", {}).items()}


def bird_bgp(lab: Lab, node: str) -> dict[str, str]:
    proc = lab.exec(node, ["birdc", "show", "protocols"], check=True)
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "BGP":
            out[parts[0]] = parts[-1] if parts[3] == "up" else parts[3]
    return out


def gobgp_neighbors(lab: Lab, node: str) -> dict[str, str]:
    proc = lab.exec(node, ["gobgp", "-j", "neighbor"], check=True)
    states = {6: "Established"}
    return {n["conf"]["neighbor_address"]: states.get(n["state"].get("session_state"), str(n["state"]))
            for n in json.loads(proc.stdout or "[]")}


def routes(lab: Lab, node: str, prefix: str) -> list[dict[str, Any]]:
    proc = lab.exec(node, ["ip", "-j", "route", "show", prefix], check=True)
    return json.loads(proc.stdout or "[]")


def ping(lab: Lab, node: str, target: str, source: str | None = None) -> bool:
    argv = ["ping", "-c", "1", "-W", "1", *(["-I", source] if source else []), target]
    return lab.exec(node, argv, timeout=10).returncode == 0
