"""Namespaces, veth pairs, the management bridge and processes, through the ``ip`` binary.

Why ``ip`` and not pyroute2: each namespace's commands go in one ``ip -n NS -batch -`` call
(a few milliseconds), the commands read like what a user would type to debug, and no helper
process per namespace is needed. Every veth is created with its peer directly in the other
namespace (``peer name X netns B``), so no lab interface ever appears in the root namespace,
not even for an instant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import structlog

from lab.errors import LabError

log = structlog.get_logger(__name__)

NETNS_DIR = Path("/run/netns")
IP_TIMEOUT = 20.0


def run(argv: Sequence[str], *, input_text: str | None = None, timeout: float = IP_TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command; a failure becomes a ``LabError`` carrying its stderr."""
    try:
        proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)}: timed out after {timeout:.0f}s") from None
    except FileNotFoundError:
        raise LabError(f"{argv[0]}: not installed (run `make setup`)") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().replace("\n", "; ")
        raise LabError(f"{' '.join(argv)}: {detail or f'exit {proc.returncode}'}")
    return proc


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def add(name: str) -> None:
    """Create namespace ``name`` with ``lo`` up (a container always has its loopback up)."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def delete(name: str) -> None:
    """Delete a namespace (its veth ends go with it, and so do their peers). Idempotent."""
    if not exists(name):
        return
    proc = run(["ip", "netns", "del", name], check=False)
    if proc.returncode != 0 and exists(name):
        raise LabError(f"cannot delete namespace {name}: {proc.stderr.strip()}")


def batch(name: str, commands: Iterable[str]) -> None:
    """Run ``ip`` commands inside namespace ``name`` in one process."""
    text = "\n".join(commands)
    if text:
        run(["ip", "-n", name, "-batch", "-"], input_text=text + "\n")


def veth_command(ifname: str, peer: str, peer_netns: str, *, mtu: int | None = None, mac: str | None = None,
                 peer_mac: str | None = None) -> str:
    """An ``ip link add`` line creating ``ifname`` here and ``peer`` directly in ``peer_netns``."""
    here = [ifname]
    there = [peer]
    if mtu:
        here += ["mtu", str(mtu)]
        there += ["mtu", str(mtu)]
    if mac:
        here += ["address", mac]
    if peer_mac:
        there += ["address", peer_mac]
    return f"link add {' '.join(here)} type veth peer name {' '.join(there)} netns {peer_netns}"


def pids(name: str) -> list[int]:
    """Every process whose network namespace is ``name`` (what ``ip netns pids`` reports)."""
    if not exists(name):
        return []
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def netns_argv(name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside namespace ``name`` (``ip netns exec`` also gives it its own /sys)."""
    return ["ip", "netns", "exec", name, *argv]


def kill_all(pid_list: Iterable[int], *, grace: float = 3.0) -> list[int]:
    """TERM, wait up to ``grace`` seconds, then KILL what is left. Returns the pids that had to be killed."""
    targets = {p for p in pid_list if p > 1 and p != os.getpid()}
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while targets and time.monotonic() < deadline:
        targets = {p for p in targets if _running(p)}
        if targets:
            time.sleep(0.05)
    for pid in targets:
        _signal(pid, signal.SIGKILL)
    # bounded wait for KILL to land so the namespace can really go
    deadline = time.monotonic() + 2.0
    left = set(targets)
    while left and time.monotonic() < deadline:
        left = {p for p in left if _running(p)}
        if left:
            time.sleep(0.02)
    return sorted(targets)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (zombies of our own children get reaped here)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"
