"""`make demo`: a BGP-routed Tabby rack on this machine, in network namespaces, left running to explore.

Deploys examples/three-node-tor.clab.yml with `tabbyctl lab` (etcd, an FRR top-of-rack router in
AS 65001, three Tabby nodes in an iBGP full mesh in AS 64512), waits until every BGP session is
Established on both ends, creates two pods per node through the real CNI plugin, then shows what
an operator would look at: `tabbyctl node status` on each node, IPAM usage per block, the ToR's BGP
table and the all-pairs pod reachability matrix. Everything lives in the lab's namespaces (nothing
is added to the root namespace); the lab stays up afterwards and the last lines say how to explore
and destroy it.

Why every step goes through the `tabbyctl` CLI (not the Python API): the demo is also the walkthrough
a user repeats by hand, so each command is printed before it runs. Re-running is safe: the deploy
uses `--reconfigure`, which destroys a previous run of the same lab first. The IPAM-only demo that
needs no root is `make demo-ipam` (controller/demo_ipam.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lab.state import lab_dir

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOPOLOGY = ROOT / "examples" / "three-node-tor.clab.yml"
PODS_PER_NODE = ("web", "db")
TOR_NETWORK_ADDRESS = "10.99.0.1"  # on the ToR's lo: "the rest of the data centre" (examples/three-node-tor)
SESSION_TIMEOUT = 90.0
FLOWS_POLICY = ROOT / "examples" / "three-node-tor" / "flows-policy.yaml"
#: a TCP connect (the SYN is what flow logging records; nothing listens, so it is refused or dropped)
CONNECT = "import socket,sys\ntry: socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()\n" \
          "except OSError: pass"
console = Console(highlight=False, soft_wrap=True)


class DemoError(Exception):
    """A step failed: one line for the user (the command's own output was already printed)."""


def tabbyctl_path() -> str:
    """The virtualenv's tabbyctl (next to this interpreter): `make demo` runs before anything is on PATH."""
    return str(Path(sys.executable).parent / "tabbyctl")


def shown_path(path: Path) -> str:
    """The topology as the user would type it: relative to the current directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Demo:
    """One run against one topology file; `lab(...)` runs `tabbyctl lab <cmd> -t FILE ...`."""

    def __init__(self, topology: Path) -> None:
        from lab import load_topology
        from lab.pods import is_tabby_node, nodename

        self.topology = topology.resolve()
        self.shown = shown_path(topology)
        self.topo = load_topology(topology)
        self.tabby_nodes = [n.name for n in self.topo.nodes.values() if is_tabby_node(n)]
        self.nodenames = {n: nodename(self.topo.nodes[n]) for n in self.tabby_nodes}
        self.frr_nodes = [n.name for n in self.topo.nodes.values() if "frr" in n.image]
        if not self.tabby_nodes or not self.frr_nodes:
            raise DemoError(f"{self.shown}: the demo needs tabby/node nodes and an FRR router")

    # ---- running commands ----------------------------------------------------------------------
    def lab(self, cmd: str, *args: str, show: bool = True, echo: bool = True, timeout: float = 240,
            ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        """`tabbyctl lab CMD -t FILE ARGS` (CMD may be "pod add"): printed first (show), output passed on (echo)."""
        argv = [tabbyctl_path(), "lab", *cmd.split(), "-t", str(self.topology), *args]
        if show:
            console.print(f"\n[bold cyan]$ tabbyctl lab {cmd} -t {escape(self.shown)} {escape(shlex.join(args))}[/]")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
        if echo:
            sys.stdout.write(proc.stdout)
            sys.stdout.flush()
        if proc.returncode not in ok:
            sys.stderr.write(proc.stderr)
            raise DemoError(f"tabbyctl lab {cmd} {shlex.join(args)} failed with exit code {proc.returncode}")
        return proc

    def exec_json(self, node: str, *argv: str) -> Any:
        """A command's JSON output inside `node` (None when it fails or prints no JSON yet)."""
        proc = self.lab("exec", node, "--", *argv, show=False, echo=False, ok=(0, 1, 2))
        try:
            return json.loads(proc.stdout) if proc.returncode == 0 else None
        except ValueError:
            return None

    # ---- BGP views -----------------------------------------------------------------------------
    def node_sessions(self, node: str) -> dict[str, str]:
        """peer address -> bgp_state, from the agent's BGP_STATUS (`tabbyctl node status -o json`)."""
        status = self.exec_json(node, "tabbyctl", "node", "status", "--nodename", self.nodenames[node], "-o", "json")
        return {s["peer_address"]: s["bgp_state"] for s in (status or {}).get("sessions", [])}

    def frr_sessions(self, node: str) -> dict[str, str]:
        """peer address -> state, from FRR's `show bgp summary json`."""
        summary = self.exec_json(node, "vtysh", "-c", "show bgp summary json") or {}
        return {p: i.get("state", "?") for p, i in summary.get("ipv4Unicast", {}).get("peers", {}).items()}

    def wait_sessions(self, timeout: float = SESSION_TIMEOUT) -> dict[str, dict[str, str]]:
        """Until every node has a session with every other node and each router, all Established."""
        want_node = len(self.tabby_nodes) - 1 + len(self.frr_nodes)
        deadline = time.monotonic() + timeout
        views: dict[str, dict[str, str]] = {}
        with console.status("waiting for the BGP sessions (mesh + ToR) to be Established ..."):
            while True:
                views = {n: self.node_sessions(n) for n in self.tabby_nodes}
                views |= {r: self.frr_sessions(r) for r in self.frr_nodes}
                if all_established(views, want_node, len(self.tabby_nodes), self.frr_nodes):
                    return views
                if time.monotonic() > deadline:
                    raise DemoError(f"BGP sessions not all Established after {timeout:.0f}s: {views}")
                time.sleep(1)

    # ---- the walkthrough -----------------------------------------------------------------------
    def run(self) -> None:
        console.rule("[bold]Tabby demo: a BGP-routed rack in network namespaces")
        console.print(
            f"Topology {self.shown}: etcd, FRR ToR {', '.join(self.frr_nodes)} (AS 65001), Tabby nodes "
            f"{', '.join(self.tabby_nodes)} (AS 64512, iBGP full mesh, eBGP to the ToR)."
        )
        started = time.monotonic()
        self.lab("deploy", "--reconfigure")
        views = self.wait_sessions()
        total = sum(len(v) for v in views.values())
        console.print(f"[green]all {total} BGP session ends Established[/] "
                      f"({time.monotonic() - started:.1f}s after the deploy began)")

        console.rule("[bold]Pods: two per node, through the real CNI plugin")
        pods = [json.loads(self.lab("pod add", node, f"{kind}-{i}", "--label", f"app={kind}").stdout)
                for i, node in enumerate(self.tabby_nodes, 1) for kind in PODS_PER_NODE]

        console.rule("[bold]BGP sessions as each node sees them")
        for node in self.tabby_nodes:
            self.lab("exec", node, "--", "tabbyctl", "node", "status")
        console.rule("[bold]IPAM: one /26 block per node, affine to it")
        self.lab("exec", self.tabby_nodes[0], "--", "tabbyctl", "ipam", "show", "--show-blocks")
        console.rule("[bold]Routes: the ToR's BGP table and a node's kernel")
        for router in self.frr_nodes:
            self.lab("exec", router, "--", "vtysh", "-c", "show bgp ipv4 unicast")
        self.lab("exec", self.tabby_nodes[0], "--", "ip", "route", "show", "proto", "81")

        console.rule("[bold]Reachability: every pod pings every other pod")
        proc = self.lab("check", echo=False, ok=(0, 1))
        report = json.loads(proc.stdout)
        console.print(matrix_table(report))
        if report["failed"]:
            raise DemoError(f"{len(report['failed'])} of {report['pairs']} pod pairs cannot reach each other: "
                            f"{report['failed'][:3]}")
        console.print(f"[bold green]all {report['pairs']} pod pairs reachable[/] ({report['pods']} pods on "
                      f"{len(self.tabby_nodes)} nodes)")
        self.ping_beyond_tor(pods[0])
        self.flows(pods)
        console.print(f"[bold green]Done in {time.monotonic() - started:.0f}s.[/] The lab is still running.")
        console.print(explore_text(self.shown, self.tabby_nodes, self.frr_nodes[0]))

    def flows(self, pods: list[dict[str, Any]]) -> None:
        """Flow visibility: a policy isolates the db pods, a few connections, then what every node's
        flow API recorded (summary, the denials with the deciding rule, explain) and the picture."""
        console.rule("[bold]Flows: every connection with its verdict and the policy that decided it")
        self.lab("exec", self.tabby_nodes[0], "--", "tabbyctl", "apply", "-f", str(FLOWS_POLICY))
        by_name = {p["name"]: p for p in pods}
        web, db, db2 = by_name["web-1"], by_name["db-2"], by_name["db-3"]
        time.sleep(1)  # the policy reaches every agent through its watch
        for src, dst, what in ((web, db, "tcp 5432"), (by_name["db-1"], db, "tcp 5432"), (web, db, "ping"),
                               (by_name["web-2"], db2, "tcp 5432"), (by_name["web-3"], web, "ping")):
            ip = dst["ips"][0].split("/")[0]
            argv = ["ping", "-c1", "-W1", ip] if what == "ping" else \
                [sys.executable, "-c", CONNECT, ip, what.split()[1]]
            subprocess.run(["ip", "netns", "exec", src["netns"], *argv], capture_output=True, timeout=15, check=False)
        time.sleep(0.5)
        self.lab("flows", "summary")
        self.lab("flows", "observe", "--verdict", "denied", "--last", "6")
        self.lab("exec", self.tabby_nodes[0], "--", "tabbyctl", "policy", "explain", "--from", "default/db-1",
                 "--to", "default/db-2", "--port", "5432")
        out = lab_dir(self.topo.name) / "flows.svg"
        self.lab("flows", "graph", "-o", str(out))
        console.print(f"[bold]the flows graph:[/] {out}")

    def ping_beyond_tor(self, pod: dict[str, Any]) -> None:
        """A pod reaches the ToR's own network: FRR learned the pod's block over eBGP and routes it back."""
        ping = subprocess.run(["ip", "netns", "exec", pod["netns"], "ping", "-c", "2", "-W", "2",
                               TOR_NETWORK_ADDRESS], capture_output=True, text=True, timeout=15, check=False)
        verdict = "[green]ok[/]" if ping.returncode == 0 else "[red]no answer[/]"
        console.print(f"pod {pod['name']} -> {TOR_NETWORK_ADDRESS} (behind the ToR, routed by FRR): {verdict}")


def all_established(views: dict[str, dict[str, str]], want_node: int, want_router: int,
                    routers: list[str]) -> bool:
    """Each Tabby node has `want_node` sessions and each router `want_router`, every one Established."""
    for name, sessions in views.items():
        want = want_router if name in routers else want_node
        if len(sessions) != want or any(state != "Established" for state in sessions.values()):
            return False
    return True


def matrix_table(report: dict[str, Any]) -> Table:
    """`lab check`'s matrix as a grid: rows ping, columns answer."""
    names = list(report["matrix"])
    table = Table(title=f"{report['ok']}/{report['pairs']} pairs ok", show_lines=False)
    table.add_column("from \\ to", style="bold")
    for name in names:
        table.add_column(name, justify="center")
    for src in names:
        cells = []
        for dst in names:
            if src == dst:
                cells.append("[dim]·[/]")
            else:
                cells.append("[green]✔[/]" if report["matrix"][src].get(dst) else "[bold red]✘[/]")
        table.add_row(src, *cells)
    return table


def explore_text(topology: str, nodes: list[str], router: str) -> str:
    """What to try next, and how to take it all down."""
    first, second = nodes[0], nodes[1 % len(nodes)]
    t = f"-t {topology}"
    return (
        "\nExplore (as root; `tabbyctl` is .venv/bin/tabbyctl):\n"
        f"  tabbyctl lab inspect {t}\n"
        f"  tabbyctl lab exec {t} {first} -- tabbyctl node status\n"
        f"  tabbyctl lab exec {t} {first} -- ip route show proto 81\n"
        f"  tabbyctl lab exec {t} {router} -- vtysh -c 'show bgp summary'\n"
        f"  tabbyctl lab exec {t} {first} -- tabbyctl get bgppeers -o wide\n"
        f"  tabbyctl lab pod add {t} {second} extra-1\n"
        f"  tabbyctl lab check {t}\n"
        f"  tabbyctl lab graph {t} -o three-node-tor.svg\n"
        f"  tabbyctl lab flows {t} observe --follow\n"
        f"  tabbyctl lab flows {t} observe --verdict denied -o json\n"
        f"  tabbyctl lab exec {t} {first} -- tabbyctl policy explain --from default/web-1 --to default/db-2 "
        "--port 5432\n"
        "Destroy:\n"
        f"  tabbyctl lab destroy {t} --cleanup\n"
        "More in docs/demo.md."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("-t", "--topology", type=Path, default=DEFAULT_TOPOLOGY,
                        help="the lab to deploy (default: examples/three-node-tor.clab.yml)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the demo builds network namespaces: run it as root (sudo make demo)", file=sys.stderr)
        return 1
    from lab.errors import LabError

    try:
        Demo(args.topology).run()
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"(the lab is left as it is; remove it with: tabbyctl lab destroy -t {shown_path(args.topology)} "
              "--cleanup)", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"error: {shlex.join(str(a) for a in exc.cmd)} did not finish in {exc.timeout:.0f}s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
