"""Restarts of supervised node processes: counted for ``lab inspect``, requested by ``lab restart``.

A node image that supervises a process (``tabby/node``: lab/supervise.py, as runit does in
calico-node's image) leaves ``<name>.supervise.json`` in the node's directory. Reading those files
is all ``inspect`` needs; ``restart`` sends the supervisor SIGHUP (it stops the program and starts
it again at once, counting one restart).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lab.errors import LabError
from lab.supervise import read_state

SUFFIX = ".supervise.json"


def supervised(node_dir: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    """process name -> supervisor state, for every supervised process of the node."""
    out = {}
    for path in sorted(node_dir.glob(f"*{SUFFIX}")):
        state = read_state(path)
        if state is not None:
            out[path.name[: -len(SUFFIX)]] = state
    return out


def restarts(node_dir: Path) -> int:
    return sum(int(s.get("restarts") or 0) for s in supervised(node_dir).values())


def restart(node_dir: Path, node: str, timeout: float = 30.0) -> list[str]:
    """Restart every supervised process of the node; returns their names. Waits until each runs again."""
    procs = supervised(node_dir)
    if not procs:
        raise LabError(f"node {node} has no supervised process to restart (only tabby/node agents are supervised)")
    for name, state in procs.items():
        pid = state.get("supervisor_pid")
        try:
            os.kill(int(pid), signal.SIGHUP)  # type: ignore[arg-type]
        except (TypeError, ValueError, ProcessLookupError) as exc:
            raise LabError(f"node {node}: the supervisor of {name} is not running ({exc})") from None
    deadline = time.monotonic() + timeout
    for name, before in procs.items():
        while True:
            now = supervised(node_dir).get(name) or {}
            if now.get("pid") and now.get("restarts", 0) > before.get("restarts", 0):
                break
            if time.monotonic() > deadline:
                raise LabError(f"node {node}: {name} did not come back within {timeout:.0f}s")
            time.sleep(0.05)
    return sorted(procs)
