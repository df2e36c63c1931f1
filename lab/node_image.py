"""``tabby/node`` lab image: run the node agent inside the lab node's namespace.

Imported by ``lab/__init__`` for its ``register_image`` side effect (a static import: the lab
starts the agent as a program and imports nothing of ``controller``). The agent gets the node's
``env`` (calico-node names) with NODENAME defaulting to the lab node's name; its run directory
is per node (/run/tabby/<nodename>), so several agents share one machine. Ready = its local API answers STATUS.
"""

from __future__ import annotations

import json
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
        return [_run_dir(env, env.get("NODENAME") or node.name)]

    def start(self, ctx: NodeContext) -> None:
        ctx.spawn("tabby-node", [sys.executable, "-m", "controller.node"], env=self._env(ctx))

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
