"""``tabbyctl lab``: deploy, destroy, inspect, graph and exec for containerlab topology files.

Mounted into tabbyctl with ``cli.add_command(lab)``; also runs standalone as
``python -m lab``. A user mistake prints one line per problem on stderr and exits 1;
progress goes to stderr so stdout stays machine-readable (``inspect -f json``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from lab import graph as graph_mod
from lab import kinds, netns
from lab.deploy import READY_TIMEOUT, Lab, deploy_lab, destroy_lab, inspect_lab, load_lab
from lab.errors import LabError
from lab.state import LabState, lab_dir
from lab.topology import Topology, load_topology

F = TypeVar("F", bound=Callable[..., Any])
TOPO_HELP = "topology file (*.clab.yml), or a directory holding one; default: the one in the current directory"


def _fail(lines: list[str], code: int = 1) -> None:
    for line in lines:
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


def user_errors(func: F) -> F:
    """Turn ``LabError`` into one stderr line per problem and exit 1 (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LabError as exc:
            _fail(exc.problems)
        except KeyboardInterrupt:
            _fail(["interrupted; `tabbyctl lab destroy -t FILE --cleanup` removes whatever was made"], 130)
        return None

    return wrapper  # type: ignore[return-value]


def _topology(path: str | None) -> Topology:
    return load_topology(path)


class ProgressReporter:
    """deploy's progress: a rich bar per phase on a terminal; nothing when stderr is not a terminal
    (scripts and CI logs get the result and the warnings, not progress)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[item]}"), console=console, disable=not self.live, transient=False,
        )
        self.task: TaskID | None = None
        self.name = ""
        self.total = 0
        self.done = 0

    def __enter__(self) -> ProgressReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_phase()
        self.progress.__exit__(None, None, None)

    def _finish_phase(self) -> None:
        self.task = None

    def phase(self, name: str, total: int) -> None:
        self._finish_phase()
        self.name, self.total, self.done = name, total, 0
        self.task = self.progress.add_task(name, total=max(total, 1), item="")
        if total == 0:
            self.progress.update(self.task, completed=1)

    def advance(self, item: str) -> None:
        self.done += 1
        if self.task is not None:
            self.progress.update(self.task, advance=1, item=item)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning[/yellow]: {message}", highlight=False, soft_wrap=True)


def _topology_arg(args: list[str]) -> tuple[str | None, list[str]]:
    """The ``-t/--topo`` value among a command's arguments (before ``--``), and the arguments without it."""
    rest: list[str] = []
    value: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg in ("-t", "--topo") and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith("--topo="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-t") and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def _kernel_arg(args: list[str]) -> tuple[str, list[str]]:
    """``deploy --kernel host|guest`` (default host), and the arguments without it."""
    kernel, rest, i = "host", [], 0
    while i < len(args):
        if args[i] == "--kernel" and i + 1 < len(args):
            kernel, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--kernel="):
            kernel = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return kernel, rest


def _in_guest(args: list[str]) -> int | None:
    """Run the command in the lab's guest kernel when there is one (``lab.guest``): its exit status.

    ``deploy --kernel guest`` boots the guest first; any other command naming a lab whose guest
    runs is forwarded there; ``destroy`` then powers the guest off. ``None``: run it here.
    """
    from lab import guest

    if os.environ.get("TABBY_LAB_IN_GUEST") == "1" or not args or args[0] in ("--help", "-h"):
        return None
    command, rest = args[0], args[1:]
    kernel = "host"
    if command == "deploy":
        kernel, rest = _kernel_arg(rest)
        if kernel not in ("host", "guest"):
            return None  # click reports the bad choice
    path, rest = _topology_arg(rest)
    if "--help" in rest:
        return None
    try:
        topology = load_topology(path)
    except LabError:
        return None  # the command itself reports it, as it does without a guest
    running = guest.guest_record(topology.name) is not None
    if kernel != "guest" and not running:
        return None
    if kernel == "guest":
        guest.boot(topology.name, topology.path)
    try:
        code, out, err = guest.forward(topology.name, [command, "-t", str(topology.path.resolve()), *rest])
        click.echo(out, nl=False)
        click.echo(err, err=True, nl=False)
    finally:
        if command == "destroy":  # the guest goes even when its agent no longer answers
            guest.stop(topology.name)
            if "--cleanup" in rest:  # the host side holds only the guest's files (console log)
                shutil.rmtree(lab_dir(topology.name), ignore_errors=True)
            click.echo(f"lab {topology.name}: guest kernel powered off", err=True)
    return code


class LabGroup(click.Group):
    """The ``lab`` group: a command naming a lab that runs in a guest kernel runs there."""

    def invoke(self, ctx: click.Context) -> Any:
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            code = _in_guest(args)
        except LabError as exc:
            _fail(exc.problems)
        if code is not None:
            sys.exit(code)
        return super().invoke(ctx)


@click.group(name="lab", cls=LabGroup)
@click.option("-v", "--verbose", is_flag=True, help="debug logs on stderr")
def lab(verbose: bool) -> None:
    """containerlab topologies on network namespaces (no Docker needed)."""
    if verbose or not structlog.is_configured():
        from common import logs

        logs.configure(level="debug" if verbose else "warning")


@lab.command()
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("--reconfigure", "-c", is_flag=True, help="destroy the lab first (with --cleanup), then deploy")
@click.option("--timeout", type=click.FloatRange(1, 600), default=READY_TIMEOUT, show_default=True,
              help="seconds each node's daemons get to answer")
@click.option("--kernel", type=click.Choice(["host", "guest"]), default="host", show_default=True,
              help="guest: run the whole lab inside Debian's kernel under QEMU (modules the host lacks: ipip, "
                   "gre, vrf, 8021q, ...; plain linux nodes only); later commands for the lab go there")
@user_errors
def deploy(topo: str | None, reconfigure: bool, timeout: float, kernel: str) -> None:
    """Build the lab and wait until every node's processes are up."""
    topology = _topology(topo)
    if kernel == "guest":  # LabGroup boots the guest and forwards; reaching here means it could not
        raise LabError(f"lab {topology.name}: --kernel guest is handled before this point (a bug if seen)")
    console = Console(stderr=True)
    try:
        with ProgressReporter(console) as reporter:
            handle = deploy_lab(topology, reconfigure=reconfigure, reporter=reporter, ready_timeout=timeout)
    except LabError as exc:
        half_built = _half_built(topology)
        for line in exc.problems:
            click.echo(f"error: {line}", err=True)
        if half_built:
            click.echo(f"hint: the half-built lab stays for its logs ({half_built}); remove it with "
                       f"`tabbyctl lab destroy -t {topology.path} --cleanup`", err=True)
        sys.exit(1)
    _print_table(handle.inspect())
    if handle.exec_failures:
        console.print(f"{len(handle.exec_failures)} exec command(s) failed (see warnings above)", highlight=False)


@lab.command()
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("--cleanup", is_flag=True,
              help="also sweep by name what the topology implies and delete the lab directory, except the node "
                   "logs; works after a crashed deploy")
@click.option("--purge", is_flag=True, help="with --cleanup: delete the node logs too")
@user_errors
def destroy(topo: str | None, cleanup: bool, purge: bool) -> None:
    """Remove every namespace, link, process and directory of the lab (node logs stay unless --purge)."""
    topology = _topology(topo)
    if purge and not cleanup:
        raise LabError("--purge goes with --cleanup: destroy -t FILE --cleanup --purge")
    report = destroy_lab(topology, cleanup=cleanup, purge=purge)
    if report.nothing:
        click.echo(f"lab {topology.name}: nothing to destroy", err=True)
    else:
        click.echo(f"lab {topology.name}: destroyed ({len(report.namespaces)} namespaces, "
                   f"{report.killed} processes)", err=True)


def _half_built(topology: Topology) -> Path | None:
    """The lab directory when this deploy left a partial lab (state recorded, never finished)."""
    try:
        state = LabState.load(topology.name)
    except LabError:
        return None
    return state.dir / "nodes" if state is not None and state.status == "deploying" else None


def _print_table(rows: list[dict[str, str]]) -> None:
    table = Table(show_lines=False)
    for column in ("#", "Name", "Kind", "Image", "State", "Restarts", "IPv4 Address"):
        table.add_column(column)
    for i, row in enumerate(rows, 1):
        colour = "green" if row["state"] == "running" else "red"
        table.add_row(str(i), row["name"], row["kind"], row["image"], f"[{colour}]{row['state']}[/{colour}]",
                      row.get("restarts", ""), row["ipv4_address"])
    console = Console()
    if not console.is_terminal:
        console.width = 200  # piped or captured: never truncate names
    console.print(table)


@lab.command()
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@user_errors
def inspect(topo: str | None, fmt: str) -> None:
    """Show the lab's nodes (containerlab's inspect fields)."""
    topology = _topology(topo)
    rows = inspect_lab(topology)
    deployed = any(r["state"] != "not deployed" for r in rows)
    if fmt == "json":
        click.echo(json.dumps({"containers": rows if deployed else []}, indent=2))
        return
    if not deployed:
        click.echo(f"lab {topology.name} is not deployed", err=True)
        return
    _print_table(rows)


@lab.command()
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="picture file: .svg, .png, .dot (Graphviz) or .md (Mermaid); default <lab>.svg")
@user_errors
def graph(topo: str | None, output: Path | None) -> None:
    """Draw the topology's nodes and links (no root needed, nothing deployed).

    With the lab deployed (and root), the picture also shows each node's data-plane addresses,
    AS number, BGP sessions with their state and pods, read from the running nodes.
    """
    topology = _topology(topo)
    target = output or Path(f"{topology.name}.svg")
    live = None
    if os.geteuid() == 0 and LabState.load(topology.name) is not None:
        from lab import live as live_mod

        live = live_mod.collect(load_lab(topology))
    graph_mod.render(topology, target, live=live)
    click.echo(f"wrote {target}", err=True)


@lab.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("--all", "all_nodes", is_flag=True, help="run the command in every node")
@click.option("--timeout", type=click.FloatRange(0.1), default=None, help="give up after this many seconds")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@user_errors
def exec_(topo: str | None, all_nodes: bool, timeout: float | None, args: tuple[str, ...]) -> None:
    """Run a command in a node: exec -t FILE NODE -- CMD... (or --all -- CMD...)."""
    topo, all_nodes, timeout, args = _exec_options(topo, all_nodes, timeout, args)
    topology = _topology(topo)
    if all_nodes:
        nodes, argv = list(topology.nodes), list(args)
    else:
        if not args:
            raise LabError("exec needs a node name and a command: exec -t FILE NODE -- CMD...")
        if args[0] not in topology.nodes:
            raise LabError(f"lab {topology.name} has no node {args[0]!r} (nodes: {', '.join(topology.nodes)})")
        nodes, argv = [args[0]], list(args[1:])
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("exec needs a command after the node name: exec -t FILE NODE -- CMD...")
    handle = load_lab(topology)
    for name in nodes:
        if not netns.exists(topology.nodes[name].netns):
            raise LabError(f"node {name}: namespace {topology.nodes[name].netns} is missing (lab not fully deployed)")
    if not all_nodes:
        sys.exit(_exec_passthrough(handle, nodes[0], argv, timeout))
    worst = 0
    for name in nodes:
        proc = handle.exec(name, argv, timeout=timeout)
        click.echo(f"== {name} ({topology.nodes[name].netns}) exit {proc.returncode}")
        if proc.stdout:
            click.echo(proc.stdout, nl=not proc.stdout.endswith("\n"))
        if proc.stderr:
            click.echo(proc.stderr, nl=not proc.stderr.endswith("\n"), err=True)
        worst = worst or proc.returncode
    sys.exit(1 if worst else 0)


def _exec_options(topo: str | None, all_nodes: bool, timeout: float | None,
                  args: tuple[str, ...]) -> tuple[str | None, bool, float | None, tuple[str, ...]]:
    """exec's own options also after the node name (``exec -t F r1 --timeout 5 -- CMD``).

    click stops parsing options at the first argument (the node), so ``--timeout 5`` would
    otherwise become the command. Only the leading words before the command (or ``--``) are read.
    """
    rest = list(args)
    out: list[str] = []
    i = 0
    while i < len(rest) and rest[i] != "--":
        word = rest[i]
        value = rest[i + 1] if i + 1 < len(rest) else None
        if word == "--all":
            all_nodes, i = True, i + 1
        elif word in ("--timeout", "-t", "--topo") and value is not None:
            if word == "--timeout":
                timeout = _exec_timeout(value)
            else:
                topo = value
            i += 2
        elif word.startswith("--timeout="):
            timeout, i = _exec_timeout(word.split("=", 1)[1]), i + 1
        elif not out and not all_nodes:
            out.append(word)  # the node name
            i += 1
        else:
            break
    return topo, all_nodes, timeout, (*out, *rest[i:])


def _exec_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise LabError(f"exec --timeout: {value!r} is not a number of seconds") from None
    if seconds < 0.1:
        raise LabError(f"exec --timeout: {value} is below 0.1 s")
    return seconds


def _real_stream(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _exec_passthrough(handle: Lab, node: str, argv: list[str], timeout: float | None) -> int:
    """One node: the command's own stdin/stdout/stderr and exit code, as ``docker exec`` gives."""
    n = handle.topology.nodes[node]
    full = kinds.node_argv(n, handle.state, handle.exec_argv(node, argv))
    try:
        if not _real_stream(sys.stdout) or not _real_stream(sys.stderr):
            # output captured by an in-process caller (the guest agent, lab.guest_agent): hand it back
            proc = subprocess.run(full, env=kinds.node_env(n), timeout=timeout, check=False, capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL)
            click.echo(proc.stdout, nl=False)
            click.echo(proc.stderr, nl=False, err=True)
            return proc.returncode
        return subprocess.run(full, env=kinds.node_env(n), timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
        raise LabError(f"node {node}: {' '.join(argv)} timed out after {timeout}s") from None


# --------------------------------------------------------------------------- pods


@lab.group()
def pod() -> None:
    """Pods: a network namespace plumbed by the real CNI plugin inside a Tabby node."""


@pod.command(name="add")
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("-n", "--namespace", default="default", show_default=True, help="the pod's Kubernetes namespace")
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE", help="a pod label (repeatable)")
@click.option("--port", "ports", multiple=True, metavar="NAME=PROTO/PORT",
              help="a named container port, stored in the WorkloadEndpoint's ports (repeatable)")
@click.option("--timeout", type=click.FloatRange(1, 600), default=60.0, show_default=True,
              help="seconds to keep retrying while the agent says 'try again later'")
@click.argument("node")
@click.argument("name")
@user_errors
def pod_add(topo: str | None, namespace: str, labels: tuple[str, ...], ports: tuple[str, ...], timeout: float,
            node: str, name: str) -> None:
    """Create pod NAME on NODE: a netns, then CNI ADD as a runtime would; prints the pod as JSON."""
    from lab import pods as pods_mod

    record = pods_mod.add_pod(_topology(topo), node, name, namespace=namespace,
                              labels=pods_mod.parse_labels(labels), timeout=timeout,
                              ports=pods_mod.parse_ports(ports))
    click.echo(json.dumps(record.summary()))


@pod.command(name="label")
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("-n", "--namespace", default="default", show_default=True, help="the pod's Kubernetes namespace")
@click.option("--remove", "remove", multiple=True, metavar="KEY", help="remove the label KEY (repeatable)")
@click.argument("node")
@click.argument("name")
@click.argument("labels", nargs=-1, metavar="KEY=VALUE...")
@user_errors
def pod_label(topo: str | None, namespace: str, remove: tuple[str, ...], node: str, name: str,
              labels: tuple[str, ...]) -> None:
    """Set (overwriting) or --remove labels on the live pod NAME on NODE: its WorkloadEndpoint's labels."""
    from lab import pods as pods_mod

    if not labels and not remove:
        raise click.UsageError("give at least one KEY=VALUE or --remove KEY")
    record = pods_mod.label_pod(_topology(topo), node, name, namespace=namespace,
                                labels=pods_mod.parse_labels(labels), remove=remove)
    click.echo(json.dumps({**record.summary(), "labels": record.labels}))


@pod.command(name="del")
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("-n", "--namespace", default="default", show_default=True, help="the pod's Kubernetes namespace")
@click.option("--force", is_flag=True, help="remove the pod's namespace even when CNI DEL fails")
@click.argument("node")
@click.argument("name")
@user_errors
def pod_del(topo: str | None, namespace: str, force: bool, node: str, name: str) -> None:
    """Delete pod NAME on NODE: CNI DEL, then its namespace."""
    from lab import pods as pods_mod

    record = pods_mod.del_pod(_topology(topo), node, name, namespace=namespace, force=force)
    click.echo(f"pod {record.key} deleted from node {record.node}", err=True)


@pod.command(name="list")
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@user_errors
def pod_list(topo: str | None) -> None:
    """The lab's pods as JSON (name, namespace, node, netns, ips, labels, status)."""
    from lab import pods as pods_mod

    records = pods_mod.pods(load_lab(_topology(topo)))
    click.echo(json.dumps([{**r.summary(), "labels": r.labels, "status": r.status} for r in records], indent=2))


@lab.command()
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("-c", "--count", type=click.IntRange(1, 10), default=2, show_default=True, help="pings per pair")
@click.option("-W", "--wait", "wait", type=click.IntRange(1, 10), default=2, show_default=True,
              help="seconds each ping waits for its answer")
@user_errors
def check(topo: str | None, count: int, wait: int) -> None:
    """All-pairs ping between the lab's pods; JSON summary on stdout, exit 1 when a pair fails."""
    from lab import pods as pods_mod

    report = pods_mod.check(_topology(topo), count=count, wait=wait)
    click.echo(json.dumps(report, indent=2))
    if report["failed"]:
        click.echo(f"error: {report['pairs'] - report['ok']} of {report['pairs']} pod pairs cannot reach each other "
                   f"(first: {report['failed'][0]['from']} -> {report['failed'][0]['to']} "
                   f"{report['failed'][0]['ip']})", err=True)
        sys.exit(1)


@lab.command()
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.argument("node")
@user_errors
def restart(topo: str | None, node: str) -> None:
    """Restart a node's supervised processes (the tabby/node agent) and wait until they run again."""
    from lab import supervision

    handle = load_lab(_topology(topo))
    if node not in handle.topology.nodes:
        raise LabError(f"node {node!r} is not in lab {handle.topology.name} "
                       f"(nodes: {', '.join(sorted(handle.topology.nodes))})")
    names = supervision.restart(handle.state.node_dir(node), node)
    click.echo(f"node {node}: restarted {', '.join(names)}", err=True)


@lab.command()
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (Ctrl-C stops)")
@click.option("-p", "--process", default=None, help="only this process's log (e.g. tabby-node, bgpd)")
@click.argument("node")
@user_errors
def logs(topo: str | None, follow: bool, process: str | None, node: str) -> None:
    """Print a node's process logs (kept after destroy; --cleanup --purge removes them)."""
    from lab import logs as logs_mod
    from lab.state import lab_dir

    topology = _topology(topo)
    if node not in topology.nodes:
        raise LabError(f"node {node!r} is not in lab {topology.name} (nodes: {', '.join(sorted(topology.nodes))})")
    try:
        logs_mod.show(lab_dir(topology.name) / "nodes" / node, node, process=process, follow=follow)
    except KeyboardInterrupt:
        return


# --------------------------------------------------------------------------- flows


@lab.command(name="flows", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-t", "--topo", "topo", help=TOPO_HELP)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@user_errors
def flows(topo: str | None, args: tuple[str, ...]) -> None:
    """`tabbyctl flows` against a deployed lab, from its management network (outside every node):
    flows -t FILE [observe|summary|graph] [OPTIONS] (default: observe)."""
    from lab.pods import is_tabby_node, nodename

    topology = _topology(topo)
    handle = load_lab(topology)
    argv = list(args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv or argv[0].startswith("-"):
        argv = ["observe", *argv]
    endpoints = []
    env = dict(os.environ)
    for name, node in topology.nodes.items():
        ip = handle.mgmt_ipv4(name)
        if not is_tabby_node(node) or ip is None:
            continue
        port = node.env.get("TABBY_FLOW_API_PORT") or "4244"
        if port != "0":
            endpoints.append(f"--endpoint={nodename(node)}={ip}:{port}")
        for key in ("ETCD_ENDPOINTS", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"):
            if node.env.get(key) and key not in env:
                env[key] = node.env[key]
    if not endpoints:
        raise LabError(f"lab {topology.name}: no tabby/node node with a management address serves flows")
    if not netns.exists(topology.mgmt_netns):
        raise LabError(f"lab {topology.name}: management namespace {topology.mgmt_netns} is missing (not deployed)")
    tabbyctl = str(Path(sys.executable).parent / "tabbyctl")
    full = ["ip", "netns", "exec", topology.mgmt_netns, tabbyctl, "flows", *argv, *endpoints]
    sys.exit(subprocess.run(full, env=env, check=False).returncode)
