"""``tabbyctl node run`` (start the node agent in the foreground) and ``tabbyctl node status`` (calicoctl's
BGP table, read from the running agent's local API).

Why ask the agent and not ExaBGP: the agent owns the session states (from ExaBGP's state messages) and
the RIB counters; ExaBGP has no CLI here (``exabgp.api.cli=false``). The agent is found the way the CNI
plugin finds it, so ``node status`` run inside a node's namespace talks to that node's agent.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

DEFAULT_RUN_ROOT = "/run/tabby"
STATUS_TIMEOUT = 5.0


@click.group()
def node() -> None:
    """The node agent of this host."""


@node.command("run")
def run() -> None:
    """Run the Tabby node agent (settings from NODENAME, IP, IP_AUTODETECTION_METHOD, AS, ETCD_*,
    CALICO_NETWORKING_BACKEND)."""
    from controller.node.__main__ import main

    code = main([])
    if code:
        raise SystemExit(code)


def agent_sockets(nodename: str | None, run_root: str | None = None) -> list[Path]:
    """Where the local agent may listen, in the CNI plugin's order: <root>/<node>/agent.sock when the node
    name is known, then the by-netns symlink of the namespace we run in, then <root>/agent.sock."""
    root = Path(run_root or os.environ.get("TABBY_RUN_ROOT") or DEFAULT_RUN_ROOT)
    out: list[Path] = []
    if nodename:
        out.append(root / nodename / "agent.sock")
    try:
        inode = os.stat("/proc/self/ns/net").st_ino
        out.append(root / "by-netns" / f"{inode}.sock")
    except OSError:
        pass
    out.append(root / "agent.sock")
    return out


def query_agent_command(paths: list[Path], command: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any] | None:
    """``command``'s answer (its result, or ``{"error": ...}``) from the first agent that answers; None if none."""
    for path in paths:
        if not path.exists():
            continue
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(path))
                sock.sendall(json.dumps({"command": command, "env": {}, "config": {}}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
            reply = json.loads(data)
        except (OSError, ValueError):
            continue
        if isinstance(reply, dict) and isinstance(reply.get("result"), dict):
            return reply["result"]
        if isinstance(reply, dict) and "error" in reply:
            return {"error": reply["error"]}
    return None


def query_agent(paths: list[Path], timeout: float = STATUS_TIMEOUT) -> dict[str, Any] | None:
    """BGP_STATUS from the first agent that answers; None when none does."""
    result = query_agent_command(paths, "BGP_STATUS", timeout)
    return None if result is None or "error" in result else result


def _since(ts: float) -> str:
    """BIRD's (and so calicoctl's) SINCE: the time of day when it is today, else the date."""
    if not ts:
        return ""
    if time.strftime("%Y-%m-%d", time.localtime(ts)) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", time.localtime(ts))
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def _centre(text: str, width: int) -> str:
    """tablewriter's centring: the odd space goes to the right (str.center puts it on the left)."""
    left = (width - len(text)) // 2
    return " " * left + text + " " * (width - len(text) - left)


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """calicoctl's box (Go tablewriter defaults): +---+ borders, centred upper-case header, cells left."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [border, "|" + "|".join(f" {_centre(h, w)} " for h, w in zip(header, widths, strict=True)) + "|", border]
    for row in rows:
        out.append("|" + "|".join(f" {c.ljust(w)} " for c, w in zip(row, widths, strict=True)) + "|")
    out.append(border)
    return "\n".join(out)


def render_status(status: dict[str, Any]) -> str:
    """The text `calicoctl node status` prints, with Tabby's name."""
    lines = ["Tabby process is running."]
    if status.get("ready") is False:
        reasons = status.get("not_ready_reasons") or [status.get("not_ready_reason") or "unknown"]
        lines += [f"Not ready: {reason}" for reason in reasons]
    lines.append("")
    invalid = status.get("invalid_resources") or []
    if invalid:
        lines.append("Invalid resources in the datastore (the agent ignores them, or keeps their last good version)")
        rows = [[r["key"], r["kind"], "last good version" if r.get("kept_last_good") else "ignored",
                 (r.get("problems") or [""])[0]] for r in invalid]
        lines.append(render_table(["KEY", "KIND", "IN USE", "PROBLEM"], rows))
        lines.append("")
    if not status.get("enabled", True):
        lines.append(f"BGP is not in use (CALICO_NETWORKING_BACKEND={status.get('backend')}).")
        return "\n".join(lines) + "\n"
    sessions = status.get("sessions") or []
    for version, title in ((4, "IPv4"), (6, "IPv6")):
        mine = [s for s in sessions if (":" in s["peer_address"]) == (version == 6)]
        lines.append(f"{title} BGP status")
        if not mine:
            lines.append(f"No {title} peers found.")
        else:
            rows = [[s["peer_address"], s["peer_type"], s["state"], _since(s.get("since") or 0), s["info"]]
                    for s in mine]
            lines.append(render_table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows))
        lines.append("")
    if any("graceful_restart" in s for s in sessions):
        # Tabby's addition: what decides how fast a dead peer leaves the forwarding path
        lines.append("Graceful restart and BFD")
        rows = [[s["peer_address"], s.get("graceful_restart") or "-", str(s.get("prefixes_stale", 0)),
                 s.get("bfd") or ("requested, not running" if s.get("bfd_requested") else "off")]
                for s in sessions]
        lines.append(render_table(["PEER ADDRESS", "PEER GRACEFUL RESTART", "STALE PATHS", "BFD"], rows))
        lines.append("")
    warnings = status.get("warnings") or []
    if warnings:
        lines.append("Warnings")
        lines += [f"- {w}" for w in warnings]
        lines.append("")
    return "\n".join(lines)


@node.command("status")
@click.option("--nodename", default=None, help="Node whose agent to ask (default: NODENAME, then this namespace's).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--metrics", is_flag=True, help="Print the agent's Prometheus text instead of the table.")
def status(nodename: str | None, output: str, metrics: bool) -> None:
    """BGP sessions of the local node agent (calicoctl node status), or its counters with -o json."""
    name = nodename or os.environ.get("NODENAME") or None
    result = query_agent(agent_sockets(name))
    if result is None:
        click.echo("Tabby process is not running.")
        sys.exit(1)
    if metrics:
        click.echo(result.get("metrics", ""), nl=False)
    elif output == "json":
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(render_status(result), nl=False)


from controller.cli.checksystem import checksystem  # noqa: E402
from controller.cli.diags import diags  # noqa: E402 - the diags module imports this one's helpers lazily

node.add_command(diags)
node.add_command(checksystem)
