"""Which node this agent is, kept stable across restarts, and one agent per node.

NODENAME is resolved as calico-node resolves it: the ``NODENAME`` variable, then ``HOSTNAME``,
then the ``nodename`` file the agent wrote at its first start, then the machine's hostname. The
file is what makes a manual restart (``tabbyctl node run`` without NODENAME) come back as the
same Node instead of registering the hostname as a second Node and deleting the first one's
routes. Where the file lives:

* ``TABBY_NODENAME_FILE`` when set;
* ``<TABBY_RUN_ROOT>/by-netns/<inode>.nodename`` for an agent of a named namespace (one of
  ``ip netns``'s, or ``TABBY_NETNS``: a lab node; several nodes share one machine and one file
  system and the namespace is what tells them apart, as for the CNI plugin's by-netns alias);
* ``/var/lib/tabby/nodename`` otherwise (the host's own namespace; calico-node's
  ``/var/lib/calico/nodename``).

A second agent for the same node would fight the first over the socket, the routes and the
datastore: :func:`acquire_lock` takes an exclusive ``flock`` on ``<run dir>/agent.lock`` (the run
directory holds the socket both would serve) for the life of the process and refuses with one
line naming the running agent's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import structlog

from felix_like.netns import NETNS_DIR, netns_inode

log = structlog.get_logger("tabby.node.identity")

NODENAME_FILE_ENV = "TABBY_NODENAME_FILE"
HOST_NODENAME_FILE = Path("/var/lib/tabby/nodename")
DEFAULT_RUN_ROOT = "/run/tabby"


class AgentLocked(RuntimeError):
    """Another agent holds this node's lock."""


def nodename_file(env: Mapping[str, str]) -> Path:
    if env.get(NODENAME_FILE_ENV):
        return Path(env[NODENAME_FILE_ENV])
    netns = env.get("TABBY_NETNS", "").strip() or None
    try:
        inode = netns_inode(netns)
    except OSError:
        return HOST_NODENAME_FILE
    if netns is None and not _named_namespace(inode):
        return HOST_NODENAME_FILE  # the host's own namespace (not one of `ip netns`'s)
    return Path(env.get("TABBY_RUN_ROOT") or DEFAULT_RUN_ROOT) / "by-netns" / f"{inode}.nodename"


def _named_namespace(inode: int) -> bool:
    """Whether the namespace is one of /run/netns (a lab node's), i.e. not the host's."""
    try:
        entries = list(Path(NETNS_DIR).iterdir())
    except OSError:
        return False
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.stat().st_ino == inode:
                return True
    return False


def resolve_nodename(env: Mapping[str, str]) -> tuple[str, str]:
    """(name, where it came from): NODENAME, HOSTNAME, the nodename file, the hostname."""
    for var in ("NODENAME", "HOSTNAME"):
        if env.get(var, "").strip():
            return env[var].strip().lower(), var
    path = nodename_file(env)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = path.read_text().strip()
        if text:
            return text.lower(), str(path)
    return socket.gethostname().strip().lower(), "hostname"


def remember_nodename(env: Mapping[str, str], name: str) -> Path | None:
    """Write the nodename file (first start, or NODENAME changed); None when it cannot be written."""
    path = nodename_file(env)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if path.read_text().strip() == name:
            return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(name + "\n")
        tmp.replace(path)
    except OSError as exc:
        log.warning("agent.nodename_file_unwritable", path=str(path), error=exc.strerror or str(exc))
        return None
    return path


def lock_path(run_dir: Path) -> Path:
    return run_dir / "agent.lock"


def acquire_lock(run_dir: Path, nodename: str) -> IO[str]:
    """Hold ``<run dir>/agent.lock`` (keep the returned file open); AgentLocked if taken."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    f = open(path, "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise AgentLocked(
            f"another tabby-node agent (pid {pid}) is already running for node {nodename} "
            f"(lock {path}); stop it first"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
