"""``tabby/node`` lab image: run the node agent inside the lab node's namespace.

Imported by ``lab/__init__`` for its ``register_image`` side effect (a static import: the lab
starts the agent as a program and imports nothing of ``controller``). The agent gets the node's
``env`` (calico-node names) with NODENAME defaulting to the lab node's name; its run directory
is per node (/run/tabby/<nodename>), so several agents share one machine. Ready = its local API answers STATUS.
The agent runs under ``lab/supervise.py`` (runit's role in calico-node's image): killed, it comes back
after a bounded backoff (node env ``TABBY_RESTART_BACKOFF``, ``TABBY_RESTART_MAX_BACKOFF``; 1 s and 30 s).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from lab.kinds import ImageHandler, NodeContext, register_image
from lab.topology import Node

ROOT = Path(__file__).resolve().parents[1]
# The agent's own default (controller.node.config.DEFAULT_RUN_ROOT); the lab reads it as a program would.
DEFAULT_RUN_ROOT = "/run/tabby"


def _run_dir(env: dict[str, str], nodename: str) -> Path:
    if env.get("TABBY_RUN_DIR"):
        return Path(env["TABBY_RUN_DIR"])
    # The agent lower-cases NODENAME (controller.node.config): the same name, or we poll the wrong path.
    return Path(env.get("TABBY_RUN_ROOT") or DEFAULT_RUN_ROOT) / nodename.strip().lower()


def supervise_state(workdir: Path) -> Path:
    """The agent supervisor's state file in the node's directory (restarts, pid, last exit)."""
    return workdir / "tabby-node.supervise.json"


class TabbyNodeHandler(ImageHandler):
    """Starts ``python -m controller.node`` in the node namespace; ``exec`` runs commands there as is."""

    name = "tabby-node"

    def _env(self, ctx: NodeContext) -> dict[str, str]:
        env = dict(ctx.env)
        env.setdefault("NODENAME", ctx.node.name)
        env.setdefault("PYTHONPATH", str(ROOT))
        env.setdefault("TABBY_LOG_FORMAT", "json")
        env.setdefault("GRPC_VERBOSITY", "NONE")
        return env

    def host_paths(self, node: Node) -> list[Path]:
        env = dict(node.env)
        paths = [_run_dir(env, env.get("NODENAME") or node.name)]
        # The agent's nodename file for a named namespace (controller/node/identity.py): keyed by its inode.
        try:
            inode = os.stat(Path("/run/netns") / node.netns).st_ino
        except OSError:
            return paths
        return [*paths, Path(env.get("TABBY_RUN_ROOT") or DEFAULT_RUN_ROOT) / "by-netns" / f"{inode}.nodename"]

    def start(self, ctx: NodeContext) -> None:
        # Supervised as calico-node's runit does: a killed agent comes back by itself (lab/supervise.py).
        env = self._env(ctx)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        ctx.spawn("tabby-node", [
            sys.executable, "-m", "lab.supervise", "--state", str(supervise_state(ctx.workdir)),
            "--backoff", env.get("TABBY_RESTART_BACKOFF", "1"),
            "--max-backoff", env.get("TABBY_RESTART_MAX_BACKOFF", "30"),
            "--", sys.executable, "-m", "controller.node"], env=env)

    def wait_ready(self, ctx: NodeContext, timeout: float) -> None:
        env = self._env(ctx)
        sock_path = _run_dir(env, env["NODENAME"]) / "agent.sock"

        def up() -> bool:
            # The socket appears at once; the agent is "up" when it answers at all (STATUS may
            # still say not ready: the lab adds the node's address after start).
            if not sock_path.exists():
                return False
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(2)
                    s.connect(str(sock_path))
                    s.sendall(json.dumps({"command": "STATUS", "env": {}, "config": {}}).encode() + b"\n")
                    return bool(s.recv(65536))
            except OSError:
                return False

        ctx.wait_until("tabby-node agent socket", up, timeout)


_HANDLER = TabbyNodeHandler()
register_image("tabby/node", _HANDLER)
register_image("tabby/node:*", _HANDLER)
