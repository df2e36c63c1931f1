"""Deploy and destroy a lab; the ``Lab`` handle tests and later issues use.

Order, as containerlab does it: namespaces, management network, links, then each node's main
process(es), then ``exec`` commands. Unlike containerlab we wait for each node's daemons to
answer before running its ``exec`` (so ``gobgp global rib add`` in exec is reliable) and before
returning, so a deployed lab is a usable lab.

Crash safety: every namespace, process and host directory is recorded in the lab state before
it is made (``state.py``); ``destroy`` works from that record, ``--cleanup`` also from the
names the topology implies.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from lab import kinds, mountns, netns, supervision
from lab.errors import LabError, NotRootError
from lab.state import STATE_FILE, LabState, ProcessRecord, lab_dir, lab_lock, process_start_time, state_root
from lab.topology import STAGES, Healthcheck, Link, Node, Topology, load_topology

log = structlog.get_logger(__name__)

POD_NETNS_INFIX = "-pod-"  # pod namespaces: <node namespace>-pod-<name> (lab.pods)
DEFAULT_RUN_ROOT = "/run/tabby"  # the node agent's default run root: shared with every node
READY_TIMEOUT = 60.0
EXEC_TIMEOUT = 60.0
MAX_WORKERS = 16
T = TypeVar("T")


class Reporter(Protocol):
    """Progress sink: the CLI draws a rich progress display, the Python API logs."""

    def phase(self, name: str, total: int) -> None: ...
    def advance(self, item: str) -> None: ...
    def warn(self, message: str) -> None: ...


class LogReporter:
    def __init__(self, lab: str) -> None:
        self.lab = lab

    def phase(self, name: str, total: int) -> None:
        log.debug("phase", lab=self.lab, phase=name, total=total)

    def advance(self, item: str) -> None:
        log.debug("done", lab=self.lab, item=item)

    def warn(self, message: str) -> None:
        log.warning(message, lab=self.lab)


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise NotRootError(f"tabbyctl lab {action} needs root (network namespaces, veth pairs, daemons)")


def _crash_point(step: str) -> None:
    """Test hook: ``TABBY_LAB_CRASH_AT=<step>`` kills this process there (crash-safety tests)."""
    if os.environ.get("TABBY_LAB_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _parallel(items: Sequence[T], work: Callable[[T], Any], reporter: Reporter | None = None,
              label: Callable[[T], str] = str) -> None:
    """Run ``work`` on every item in threads; every failure is collected, then raised together."""
    if not items:
        return
    problems: list[str] = []
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(items))) as pool:
        futures = {pool.submit(work, item): item for item in items}
        for future, item in futures.items():
            try:
                future.result()
            except LabError as exc:
                problems.extend(exc.problems)
            if reporter is not None:
                reporter.advance(label(item))
    if problems:
        raise LabError(problems[0], problems)


# --------------------------------------------------------------------------- the Lab handle


@dataclass
class Lab:
    """A deployed lab: names, addresses and a way to run commands in its nodes."""

    topology: Topology
    state: LabState
    exec_failures: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.topology.name

    @property
    def nodes(self) -> dict[str, Node]:
        return self.topology.nodes

    def node_netns(self, node: str) -> str:
        return self.topology.node(node).netns

    def mgmt_ipv4(self, node: str) -> IPv4Address | None:
        iface = self.topology.node(node).mgmt_ipv4
        return iface.ip if iface is not None else None

    def node_dir(self, node: str) -> Path:
        return self.state.node_dir(self.topology.node(node).name)

    def node_path(self, node: str, path: str) -> Path:
        """``path`` as ``node`` sees it in its own root (e.g. ``/var/run/frr/bgpd.pid``), readable from the host."""
        return kinds.node_path(self.topology.node(node), self.state, path)

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """``argv`` as it runs in ``node`` (``birdc`` gets its socket)."""
        n = self.topology.node(node)
        return kinds.handler_for(n.image).exec_argv(n, self.state.node_dir(node), list(argv))

    def exec(self, node: str, argv: Sequence[str], *, timeout: float | None = 30.0, check: bool = False,
             input_text: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``node``'s namespace with the node's environment; output captured as text."""
        n = self.topology.node(node)
        full = kinds.node_argv(n, self.state, self.exec_argv(node, argv), cwd=cwd)
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input_text,
                                  env=kinds.node_env(n), check=False, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise LabError(f"node {node}: {shlex.join(argv)} timed out after {timeout}s") from None
        except FileNotFoundError:
            raise LabError(f"node {node}: {argv[0]}: not found") from None
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise LabError(f"node {node}: {shlex.join(argv)} exited {proc.returncode}"
                           + (f": {detail[-1]}" if detail else ""))
        return proc

    def inspect(self) -> list[dict[str, str]]:
        return inspect_rows(self.topology, self.state)

    def destroy(self, cleanup: bool = True) -> None:
        destroy(self.topology, cleanup=cleanup)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy(cleanup=True)


def _topology(topology: Topology | str | Path | None) -> Topology:
    return topology if isinstance(topology, Topology) else load_topology(topology)


def load(topology: Topology | str | Path | None) -> Lab:
    """The handle of an already deployed lab (``LabError`` when it is not deployed)."""
    topo = _topology(topology)
    state = LabState.load(topo.name)
    if state is None:
        raise LabError(f"lab {topo.name} is not deployed (tabbyctl lab deploy -t {topo.path})")
    return Lab(topo, state)


# --------------------------------------------------------------------------- deploy


def deploy(topology: Topology | str | Path | None, *, reconfigure: bool = False, reporter: Reporter | None = None,
           ready_timeout: float = READY_TIMEOUT) -> Lab:
    """Build the lab and wait until every node's processes answer; returns its handle.

    On failure the half-built lab stays (its logs are what the user needs) and the error says
    how to remove it; ``destroy`` handles any partial state.
    """
    topo = _topology(topology)
    require_root("deploy")
    reporter = reporter or LogReporter(topo.name)
    handlers = {name: kinds.handler_for(node.image) for name, node in topo.nodes.items()}
    for name, handler in handlers.items():
        handler.check(topo.nodes[name])

    with lab_lock(topo.name):
        if reconfigure:
            _teardown(topo, cleanup=True)
        existing = LabState.load(topo.name)
        if existing is not None:
            raise LabError(f"lab {topo.name} is already deployed (from {existing.topology}, {existing.status}); "
                           "destroy it first or deploy with --reconfigure")
        taken = [ns for ns in topo.netns_names() if netns.exists(ns)]
        if taken:
            raise LabError(f"lab {topo.name}: namespace {taken[0]} already exists (another lab, or a leftover: "
                           f"ip netns del {taken[0]})")
        _refuse_paths_in_use(topo)
        shutil.rmtree(lab_dir(topo.name) / "nodes", ignore_errors=True)
        state = LabState(name=topo.name, topology=str(topo.path))
        state.save()
        lab = Lab(topo, state)
        for warning in topo.warnings:
            state.record_warning(warning)
            reporter.warn(warning)
        started = time.monotonic()
        _crash_point("namespaces")
        _create_namespaces(topo, state, reporter)
        _crash_point("mgmt")
        _create_mgmt(topo, state, reporter)
        _crash_point("links")
        _create_links(topo, reporter)
        _crash_point("start")
        stage_failures = _start_nodes(lab, handlers, reporter, ready_timeout)
        _crash_point("exec")
        lab.exec_failures = stage_failures + _run_execs(lab, reporter)
        state.set_status("deployed")
        log.info("lab deployed", lab=topo.name, nodes=len(topo.nodes), links=len(topo.links),
                 seconds=round(time.monotonic() - started, 2))
        return lab


def _refuse_paths_in_use(topo: Topology) -> None:
    """Two labs sharing an agent's run directory break each other (destroying one kills the other's
    agents): refuse a deploy whose host paths a running lab (its namespaces exist) recorded."""
    ours = {str(p): node.name for node in topo.nodes.values() for p in kinds.handler_for(node.image).host_paths(node)}
    if not ours:
        return
    root = state_root()
    for state_file in sorted(root.glob(f"*/{STATE_FILE}")) if root.is_dir() else []:
        other = state_file.parent.name
        if other == topo.name:
            continue
        try:
            state = LabState.load(other)
        except LabError:
            continue
        if state is None or not any(netns.exists(ns) for ns in state.netns):
            continue
        for path in state.paths:
            if path in ours:
                raise LabError(f"lab {topo.name}: node {ours[path]}'s run directory {path} is used by running lab "
                               f"{other}; destroy {other} or give the node another TABBY_RUN_ROOT")


def _create_namespaces(topo: Topology, state: LabState, reporter: Reporter) -> None:
    names = topo.netns_names()
    reporter.phase("namespaces", len(names))

    settings = docker_ipv4_settings()
    node_names = {n.netns for n in topo.nodes.values()}

    def make(name: str) -> None:
        state.record_netns(name)
        netns.add(name)
        if name in node_names:
            netns.run(netns.netns_argv(name, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]))

    _parallel(names, make, reporter)


def docker_ipv4_settings(proc_sys: Path = Path("/proc/sys")) -> dict[str, str]:
    """The IPv4 settings a container on a Docker host starts with.

    A new network namespace copies ``net.ipv4.conf.{all,default}`` from the initial namespace
    (``net.core.devconf_inherit_init_net=0``, the default; IPv6 starts at kernel defaults), and
    Docker turns IPv4 forwarding on for the host. So FRR labs written for containerlab never set
    ``ip_forward``, and their routers forward. Here: the deploying process's (initial) values,
    writable keys only, then forwarding on. ``sysctls:`` of the file is applied after, and wins.
    """
    out: dict[str, str] = {}
    for conf in ("all", "default"):
        directory = proc_sys / "net" / "ipv4" / "conf" / conf
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            try:
                if not path.stat().st_mode & 0o200:
                    continue
                value = path.read_text().strip()
            except OSError:
                continue
            if value and " " not in value and "\t" not in value:
                out[f"net.ipv4.conf.{conf}.{path.name}"] = value
    out["net.ipv4.conf.all.forwarding"] = "1"
    out["net.ipv4.conf.default.forwarding"] = "1"
    out["net.ipv4.ip_forward"] = "1"
    return out


def _mgmt_peer(index: int) -> str:
    return f"mv{index}"


def _create_mgmt(topo: Topology, state: LabState, reporter: Reporter) -> None:
    """A bridge in the lab's own management namespace; each node's eth0 plugged into it."""
    mgmt = topo.mgmt
    members = [(i, n) for i, n in enumerate(topo.nodes.values()) if n.mgmt_ipv4 is not None]
    reporter.phase("management network", len(members) + 1)
    mtu = ["mtu", str(mgmt.mtu)] if mgmt.mtu else []
    netns.batch(topo.mgmt_netns, [
        f"link add {mgmt.bridge} {' '.join(mtu)} type bridge",
        f"link set {mgmt.bridge} up",
        f"addr add {mgmt.gateway} dev {mgmt.bridge}",
    ])
    reporter.advance(mgmt.bridge)

    def plug(member: tuple[int, Node]) -> None:
        i, node = member
        netns.batch(node.netns, [netns.veth_command("eth0", _mgmt_peer(i), topo.mgmt_netns, mtu=mgmt.mtu)])

    _parallel(members, plug)
    netns.batch(topo.mgmt_netns, [cmd for i, _ in members for cmd in (
        f"link set {_mgmt_peer(i)} master {mgmt.bridge}", f"link set {_mgmt_peer(i)} up")])

    def address(member: tuple[int, Node]) -> None:
        _, node = member
        netns.batch(node.netns, [
            f"addr add {node.mgmt_ipv4} dev eth0",
            "link set eth0 up",
            f"route add default via {mgmt.gateway.ip} dev eth0",
        ])

    _parallel(members, address, reporter, label=lambda m: m[1].name)


def deferred_links(topo: Topology) -> list[Link]:
    """Links made in their nodes' ``create-links`` stage rather than before any program starts.

    A link one of whose nodes declares a ``create-links`` stage (a ``wait-for`` or an ``exec``)
    follows containerlab (>= 0.52): each node attaches its end when it enters that stage, the
    first one parking the other end (here in the lab's management namespace, never the root
    namespace) until its node picks it up. Every other link exists before any program starts,
    so a ``cmd`` sees its interfaces at once (under containerlab they appear just after the
    container starts; ``CLAB_INTFS`` in the node's env says how many to wait for, as there).
    """
    staged = {n.name for n in topo.nodes.values()
              if any(w.stage == "create-links" for w in n.stage_waits)
              or any(e.stage == "create-links" for e in n.stage_execs)}
    return [link for link in topo.links if link.a.node in staged or link.b.node in staged]


def _create_links(topo: Topology, reporter: Reporter) -> None:
    """Round 1 creates every early veth from its A side (peer straight into B); round 2 brings all up."""
    later = set(deferred_links(topo))
    early = [link for link in topo.links if link not in later]
    reporter.phase("links", len(early))
    create: dict[str, list[str]] = {}
    up: dict[str, list[str]] = {}
    for link in early:
        a, b = topo.nodes[link.a.node], topo.nodes[link.b.node]
        create.setdefault(a.netns, []).append(netns.veth_command(
            link.a.interface, link.b.interface, b.netns, mtu=link.mtu, mac=link.a.mac, peer_mac=link.b.mac))
        up.setdefault(a.netns, []).append(f"link set {link.a.interface} up")
        up.setdefault(b.netns, []).append(f"link set {link.b.interface} up")
    _parallel(list(create.items()), lambda item: netns.batch(item[0], item[1]))
    _parallel(list(up.items()), lambda item: netns.batch(item[0], item[1]))
    for link in early:
        reporter.advance(str(link))
    late_nodes = {end.node for link in later for end in (link.a, link.b)}
    _parallel([n for n in topo.nodes.values() if n.sysctls and n.name not in late_nodes], _apply_sysctls)


def _apply_sysctls(node: Node) -> None:
    """The file's ``sysctls`` (after the Docker-like defaults, so they win); they may name the node's interfaces."""
    netns.run(netns.netns_argv(node.netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in node.sysctls.items())]))


class _LinkAttacher:
    """containerlab's per-node link creation for ``deferred_links``: the first node of a link to reach
    ``create-links`` makes the veth with the other end parked (``pk<link index>``) in the lab's
    management namespace; the second moves that end into its own namespace under its real name."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.links = deferred_links(topo)
        self.lock = threading.Lock()
        self.parked: dict[int, str] = {}  # link index -> the node whose end is parked

    def attach(self, node: Node) -> None:
        park = self.topo.mgmt_netns
        for link in self.links:
            ends = [e for e in (link.a, link.b) if e.node == node.name]
            for mine in ends:
                other = link.b if mine is link.a else link.a
                parked = f"pk{link.index}"
                with self.lock:
                    if self.parked.get(link.index) == mine.node and other.node != mine.node:
                        netns.batch(park, [f"link set {parked} netns {node.netns} name {mine.interface}"])
                        del self.parked[link.index]
                    elif link.index not in self.parked:
                        netns.batch(node.netns, [netns.veth_command(mine.interface, parked, park, mtu=link.mtu,
                                                                    mac=mine.mac, peer_mac=other.mac)])
                        self.parked[link.index] = other.node
                    else:  # a link from the node to itself: both ends are this node's
                        netns.batch(park, [f"link set {parked} netns {node.netns} name {mine.interface}"])
                        del self.parked[link.index]
                netns.batch(node.netns, [f"link set {mine.interface} up"])


class _StageBoard:
    """Where every node is in containerlab's stages (create, create-links, configure, healthy, exit).

    A node entering a stage first waits until every ``(node, stage)`` its ``wait-for`` names for
    that stage is finished (an event per pair, set by the thread running that node). A node that
    fails sets its unfinished stages' events without finishing them, so a waiter never hangs: it
    stops with a line naming the node it waited for. Times are kept (monotonic) for the log.
    """

    def __init__(self, topo: Topology) -> None:
        self.events = {(n, s): threading.Event() for n in topo.nodes for s in STAGES}
        self.finished: dict[tuple[str, str], float] = {}
        #: (node, stage) pairs some node waits for: a node's exit stage is watched only when awaited
        self.awaited = {(w.node, w.other_stage) for n in topo.nodes.values() for w in n.stage_waits}

    def enter(self, node: Node, stage: str) -> None:
        for wait in node.stage_waits:
            if wait.stage != stage:
                continue
            self.events[(wait.node, wait.other_stage)].wait()
            if (wait.node, wait.other_stage) not in self.finished:
                raise _Blocked(f"node {node.name}: not started: node {wait.node}, whose {wait.other_stage} stage "
                               f"its {stage} stage waits for, failed")
        log.debug("stage entered", node=node.name, stage=stage)

    def finish(self, node: Node, stage: str) -> None:
        self.finished[(node.name, stage)] = time.monotonic()
        self.events[(node.name, stage)].set()
        log.debug("stage finished", node=node.name, stage=stage)

    def fail(self, node: Node) -> None:
        for stage in STAGES:
            self.events[(node.name, stage)].set()


class _Blocked(LabError):
    """A node that never started because a node it waits for failed (reported after the real failure)."""


def _start_nodes(lab: Lab, handlers: dict[str, kinds.ImageHandler], reporter: Reporter, timeout: float) -> list[str]:
    """Run every node through containerlab's stages, each node in its own thread.

    Per node: ``create`` (its root, the stage's on-enter exec, ``startup-delay``, its program
    started), ``create-links`` (its deferred links attached, ``deferred_links``), ``configure``
    (the image's own configuration: daemons answer, FRR's config applied), ``healthy`` (its
    healthcheck passed, at once without one) and, only when some node waits for it, ``exit``
    (its program exited). Each stage waits first for what its ``wait-for`` names, so a node
    waiting for another's ``create`` starts as soon as that node's program runs, not once that
    node is healthy. Stage ``exec`` commands run at their stage's entry (on-enter) or end
    (on-exit); a failure is reported like a failed ``exec``. Work is capped at MAX_WORKERS
    nodes at a time; waiting holds no slot. Returns the stage exec failures.
    """
    topo, state = lab.topology, lab.state
    reporter.phase("nodes", len(topo.nodes))
    board = _StageBoard(topo)
    links = _LinkAttacher(topo)
    late_nodes = {end.node for link in links.links for end in (link.a, link.b)}
    slots = threading.Semaphore(MAX_WORKERS)
    warnings: list[str] = []
    exec_failures: list[str] = []

    def stage_exec(node: Node, stage: str, phase: str) -> None:
        for entry in node.stage_execs:
            if entry.stage == stage and entry.phase == phase:
                failure = _exec_one(lab, node, entry.command, what=f"stages.{stage}.exec {phase}")
                if failure:
                    exec_failures.append(failure)

    def enter(node: Node, stage: str) -> None:
        board.enter(node, stage)
        with slots:
            stage_exec(node, stage, "on-enter")

    def finish(node: Node, stage: str) -> None:
        with slots:
            stage_exec(node, stage, "on-exit")
        board.finish(node, stage)

    def start(node: Node) -> None:
        ctx = kinds.NodeContext(topology=topo, node=node, state=state)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        handler = handlers[node.name]
        for path in handler.host_paths(node):  # e.g. an agent's run directory: destroy removes it
            state.record_path(path)
        try:
            board.enter(node, "create")
            with slots:
                if not _shared_host_root(node, handler):
                    _start_root(ctx, handler, timeout)
                stage_exec(node, "create", "on-enter")  # after its root exists: never against the host's files
                if node.startup_delay:
                    time.sleep(node.startup_delay)
                handler.start(ctx)
            finish(node, "create")
            enter(node, "create-links")
            with slots:
                links.attach(node)
                if node.sysctls and node.name in late_nodes:
                    _apply_sysctls(node)
            finish(node, "create-links")
            enter(node, "configure")
            with slots:
                handler.wait_ready(ctx, timeout)
            finish(node, "configure")
            enter(node, "healthy")
            if node.healthcheck is not None:
                _wait_healthy(ctx, node.healthcheck)
            finish(node, "healthy")
            if (node.name, "exit") in board.awaited:
                _wait_exited(ctx, timeout)
                board.finish(node, "exit")
        except _Blocked:
            board.fail(node)
            raise
        except LabError as exc:
            board.fail(node)
            raise LabError(exc.problems[0], [p if p.startswith("node ") else f"node {node.name}: {p}"
                                             for p in exc.problems]) from None
        except OSError as exc:
            board.fail(node)
            raise LabError(f"node {node.name}: {exc}") from None
        except BaseException:
            board.fail(node)
            raise
        finally:
            warnings.extend(ctx.warnings)
        log.info("node ready", lab=topo.name, node=node.name, image=node.image, handler=handler.name)
        reporter.advance(node.name)

    nodes = list(topo.nodes.values())
    problems: list[str] = []
    blocked: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:  # one thread per node: waits block threads
            futures = [pool.submit(start, node) for node in nodes]
            for future in futures:
                try:
                    future.result()
                except _Blocked as exc:
                    blocked.extend(exc.problems)
                except LabError as exc:
                    problems.extend(exc.problems)
        problems += blocked
        if problems:
            raise LabError(problems[0], problems)
    finally:
        for warning in warnings:
            state.record_warning(warning)
            reporter.warn(warning)
    return exec_failures


def _wait_exited(ctx: kinds.NodeContext, timeout: float) -> None:
    """The ``exit`` stage: the node's programs have all exited (a one-shot job other nodes wait for)."""
    deadline = time.monotonic() + timeout
    while any(proc.poll() is None for proc in ctx.popens.values() if proc is not ctx.popens.get(kinds.MOUNTNS_PROCESS)):
        if time.monotonic() > deadline:
            raise LabError(f"node {ctx.node.name}: still running after {timeout:.0f}s, and a node waits for its "
                           "exit stage")
        time.sleep(0.1)


def _wait_healthy(ctx: kinds.NodeContext, check: Healthcheck) -> None:
    """Docker's healthcheck as readiness: healthy at the first success of ``check.argv`` in the node;
    after ``start-period``, ``retries`` failures in a row make the node unhealthy (deploy fails)."""
    started = time.monotonic()
    failures = 0
    last = ""
    while True:
        ctx.check_alive()
        try:
            proc = ctx.run(list(check.argv), check=False, timeout=check.timeout)
            if proc.returncode == 0:
                return
            output = (proc.stdout + proc.stderr).strip().splitlines()
            last = output[-1] if output else f"exit {proc.returncode}"
        except LabError as exc:
            last = exc.problems[0]
        if time.monotonic() - started >= check.start_period:
            failures += 1
            if failures >= check.retries:
                raise LabError(f"node {ctx.node.name}: unhealthy: healthcheck {shlex.join(check.argv)!r} failed "
                               f"{failures} times: {last}")
        time.sleep(check.interval)


def shared_paths(node: Node) -> list[str]:
    """Host directories every node sees as the host does: the lab state root and the run root.

    Sockets, logs and pod records live there, so host-side tools (``lab pod add``, logs, flows)
    find what the node's processes made. Nested paths collapse into their parent.
    """
    candidates = [state_root(), Path(DEFAULT_RUN_ROOT)]
    if node.env.get("TABBY_RUN_ROOT"):
        candidates.append(Path(node.env["TABBY_RUN_ROOT"]))
    if node.env.get("TABBY_RUN_DIR"):
        candidates.append(Path(node.env["TABBY_RUN_DIR"]).parent)
    kept: list[Path] = []
    for path in sorted((p.resolve() for p in candidates if p.is_absolute()), key=lambda p: len(p.parts)):
        if path != Path("/") and not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return [str(p) for p in kept]


#: Test hook for the QEMU guest tests (tests/guest): their root is a chroot onto the host's root over
#: 9p, which a node cannot pivot out of into an overlay. With it set, plain-image nodes without binds
#: share that root (no private mount namespace); any other node is refused, never half-built.
SHARED_ROOT_ENV = "TABBY_LAB_SHARED_ROOT"


def _shared_host_root(node: Node, handler: kinds.ImageHandler) -> bool:
    if os.environ.get(SHARED_ROOT_ENV) != "1":
        return False
    if type(handler) is not kinds.ImageHandler or node.binds:
        raise LabError(f"node {node.name}: {SHARED_ROOT_ENV}=1 runs plain nodes without binds only "
                       f"(image {node.image or 'none'!r} needs its own root)")
    return True


def _start_root(ctx: kinds.NodeContext, handler: kinds.ImageHandler, timeout: float) -> None:
    """Start the holder of the node's mount namespace (``lab.mountns``) and wait until it pivoted.

    Recorded like any node process (destroy kills it, and its namespace goes with the last
    process in it); it lives in the node's network namespace, so a crash before the record is
    written is still swept by name.
    """
    node = ctx.node
    extra_binds, dirs = handler.root_setup(ctx)
    base = ctx.workdir / "rootfs"
    base.mkdir(parents=True, exist_ok=True)
    for bind in node.binds:  # sources under the lab directory (__clabNodeDir__) are made here, as containerlab does
        if not bind.source.exists() and ctx.state.dir in bind.source.parents:
            bind.source.mkdir(parents=True, exist_ok=True)
    shared = shared_paths(node)
    for path in shared:
        Path(path).mkdir(parents=True, exist_ok=True)
    spec = {
        "base": str(base),
        "hostname": node.name,
        "shared": shared,
        "binds": [{"source": str(b.source), "target": b.target, "ro": "ro" in (b.mode or "").split(",")}
                  for b in (*node.binds, *extra_binds)],
        "dirs": dirs,
    }
    argv = [sys.executable, "-I", mountns.__file__, json.dumps(spec)]
    with open(ctx.workdir / f"{kinds.MOUNTNS_PROCESS}.log", "ab") as err:
        proc = subprocess.Popen(netns.netns_argv(node.netns, argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, start_new_session=True)
    ctx.state.record_holder(ProcessRecord(pid=proc.pid, start_time=process_start_time(proc.pid), node=node.name,
                                           name=kinds.MOUNTNS_PROCESS, argv=argv[:3]))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    proc.stdout.close()
    if line != "ready":
        reason = line.removeprefix("error: ") or ctx.log_tail(kinds.MOUNTNS_PROCESS) or "no answer"
        raise LabError(f"node {node.name}: cannot build its root filesystem: {reason}")
    ctx.popens[kinds.MOUNTNS_PROCESS] = proc


def _exec_one(lab: Lab, node: Node, command: str, *, what: str = "exec") -> str | None:
    """Run one ``exec`` line in ``node`` from the topology's directory; the failure line, or None."""
    argv = shlex.split(command)
    try:
        proc = lab.exec(node.name, argv, timeout=EXEC_TIMEOUT, cwd=lab.topology.directory.resolve())
    except LabError as exc:
        return exc.problems[0]
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return (f"node {node.name}: {what} {command!r} failed (exit {proc.returncode})"
                + (f": {detail[-1]}" if detail else ""))
    return None


def _run_execs(lab: Lab, reporter: Reporter) -> list[str]:
    """containerlab's ``exec``: each node's commands in order; a failure is reported, not fatal.

    They run once every node has finished its stages (so an ``exec`` of ``tabbyctl apply`` finds
    the lab's etcd up), in the topology file's directory, so a relative path in an ``exec``
    (``tabbyctl apply -f lab/pools.yaml``) names the file beside the topology, as a relative
    bind source does. Stage ``exec`` commands ran at their stages (``_start_nodes``).
    """
    nodes = [n for n in lab.nodes.values() if n.exec]
    reporter.phase("exec", sum(len(n.exec) for n in nodes))
    failures: list[str] = []

    def run_node(node: Node) -> None:
        for command in node.exec:
            failure = _exec_one(lab, node, command)
            if failure:
                failures.append(failure)
            reporter.advance(f"{node.name}: {command}")

    _parallel(nodes, run_node)
    for failure in failures:
        lab.state.record_warning(failure)
        reporter.warn(failure)
    return failures


# --------------------------------------------------------------------------- destroy


@dataclass
class DestroyReport:
    lab: str
    namespaces: list[str] = field(default_factory=list)
    killed: int = 0
    paths: list[str] = field(default_factory=list)
    was_deployed: bool = False

    @property
    def nothing(self) -> bool:
        return not (self.namespaces or self.killed or self.paths or self.was_deployed)


def destroy(topology: Topology | str | Path | None, *, cleanup: bool = False, purge: bool = True) -> DestroyReport:
    """Remove every process, namespace and directory of the lab; idempotent.

    Without ``cleanup`` it works from the lab's state record and keeps the node logs. With
    ``cleanup`` it also sweeps what the topology implies (namespaces by name, FRR pathspaces,
    processes in those namespaces), works with a missing or corrupt record, and removes the
    lab directory: after a crashed deploy this leaves nothing behind. ``purge=False`` (``tabbyctl
    lab destroy --cleanup``) keeps the node logs (``nodes/<node>/*.log``) in the lab directory.
    """
    topo = _topology(topology)
    require_root("destroy")
    with lab_lock(topo.name):
        return _teardown(topo, cleanup=cleanup, purge=purge)


def _remove_keeping_logs(directory: Path) -> None:
    """Delete the lab directory except ``nodes/<node>/*.log``."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name == "nodes" and entry.is_dir():
            for node_dir in entry.iterdir():
                for item in (node_dir.iterdir() if node_dir.is_dir() else []):
                    if item.is_dir() and not item.is_symlink():
                        shutil.rmtree(item, ignore_errors=True)
                    elif item.suffix != ".log":
                        item.unlink(missing_ok=True)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _teardown(topo: Topology, *, cleanup: bool, purge: bool = True) -> DestroyReport:
    report = DestroyReport(lab=topo.name)
    try:
        state = LabState.load(topo.name)
    except LabError:
        if not cleanup:
            raise
        state = None
    namespaces: list[str] = list(state.netns) if state else []
    paths: list[str] = list(state.paths) if state else []
    if cleanup:
        namespaces += [ns for ns in topo.netns_names() if ns not in namespaces]
        # pods (``lab pod add``) are recorded before they are made; the sweep covers a lost record
        pod_prefixes = tuple(f"{node.netns}{POD_NETNS_INFIX}" for node in topo.nodes.values())
        namespaces += [ns for ns in netns.list_netns() if ns.startswith(pod_prefixes) and ns not in namespaces]
        for node in topo.nodes.values():
            paths += [str(p) for p in kinds.handler_for(node.image).host_paths(node) if str(p) not in paths]
    report.was_deployed = state is not None

    pids = [p.pid for p in (state.processes + state.holders if state else []) if p.alive()]
    for name in namespaces:
        pids += netns.pids(name)
    report.killed = len(set(pids))
    netns.kill_all(set(pids))
    for name in namespaces:
        if netns.exists(name):
            netns.delete(name)
            report.namespaces.append(name)
    for path in paths:
        if Path(path).is_dir() and not Path(path).is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            report.paths.append(path)
        elif Path(path).exists() or Path(path).is_symlink():
            Path(path).unlink(missing_ok=True)  # a file a node left on the host (an agent's nodename file)
            report.paths.append(path)
    if cleanup:
        report.paths += _sweep_by_netns(topo)
    directory = lab_dir(topo.name)
    if cleanup and purge:
        shutil.rmtree(directory, ignore_errors=True)
    elif cleanup:
        _remove_keeping_logs(directory)
    else:
        (directory / "state.json").unlink(missing_ok=True)
    log.info("lab destroyed", lab=topo.name, namespaces=len(report.namespaces), killed=report.killed,
             cleanup=cleanup)
    return report


def _sweep_by_netns(topo: Topology) -> list[str]:
    """``<run root>/by-netns/``: the agents' socket links by namespace inode. A lab's run root is its
    own by default (the whole directory goes); in a shared one only links into this lab's run
    directories or dangling ones go, and the directory once empty."""
    removed: list[str] = []
    roots = {node.env["TABBY_RUN_ROOT"] for node in topo.nodes.values() if node.env.get("TABBY_RUN_ROOT")}
    run_dirs = {str(p) for node in topo.nodes.values() for p in kinds.handler_for(node.image).host_paths(node)}
    for root in sorted(roots):
        by_netns = Path(root) / "by-netns"
        if not by_netns.is_dir():
            continue
        for link in by_netns.iterdir():
            target = os.readlink(link) if link.is_symlink() else ""
            if not link.exists() or any(target.startswith(d.rstrip("/") + "/") for d in run_dirs):
                link.unlink(missing_ok=True)
                removed.append(str(link))
        with contextlib.suppress(OSError):
            by_netns.rmdir()
            removed.append(str(by_netns))
        if Path(root).resolve().is_relative_to(lab_dir(topo.name)):
            with contextlib.suppress(OSError):
                Path(root).rmdir()
    return removed


# --------------------------------------------------------------------------- inspect


def inspect_rows(topo: Topology, state: LabState | None) -> list[dict[str, str]]:
    """containerlab's ``inspect --format json`` fields, one row per node."""
    rows: list[dict[str, str]] = []
    for node in topo.nodes.values():
        path = netns.NETNS_DIR / node.netns
        procs = state.node_processes(node.name) if state else []
        if state is None or not path.exists():
            status = "missing" if state is not None else "not deployed"
        elif procs and not all(p.alive() for p in procs):
            status = "exited"
        else:
            status = "running"
        try:
            container_id = f"{os.stat(path).st_ino:012x}"
        except OSError:
            container_id = ""
        rows.append({
            "lab_name": topo.name,
            "labPath": str(topo.path),
            "name": node.netns,
            "container_id": container_id,
            "image": node.image,
            "kind": node.kind,
            "state": status,
            "ipv4_address": str(node.mgmt_ipv4) if node.mgmt_ipv4 else "N/A",
            "restarts": str(supervision.restarts(state.node_dir(node.name))) if state is not None else "0",
            "ipv6_address": "N/A",
            "owner": "root",
        })
    return rows


def inspect(topology: Topology | str | Path | None) -> list[dict[str, str]]:
    topo = _topology(topology)
    return inspect_rows(topo, LabState.load(topo.name))


def all_processes_alive(lab: Lab) -> Iterable[str]:
    """Names of recorded processes that are gone (tests use it after deploy)."""
    return [f"{p.node}/{p.name}" for p in lab.state.processes if not p.alive()]


# Unambiguous names for callers whose own names are deploy/destroy (the click commands).
deploy_lab = deploy
destroy_lab = destroy
inspect_lab = inspect
load_lab = load
