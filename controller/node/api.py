"""The agent's local API: one JSON request per unix-socket connection, one JSON reply line.

Wire format (docs/cni.md)::

    -> {"command": "ADD"|"DEL"|"CHECK"|"GC"|"STATUS"|"BGP_STATUS", "env": {CNI_* ...}, "config": {...},
        "mode": "tabby"|"tabby-ipam"}\n
    <- {"result": {...}}\n     or     {"error": {"cniVersion", "code", "msg", "details"}}\n

Why a unix socket with mode 0600: only root (the container runtime) may ask the agent to plumb
interfaces or hand out addresses, and the file system is the one thing every network namespace
of the machine shares, so the plugin reaches its agent from whatever namespace it runs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from controller.node.cni_handlers import DECODE_FAILURE, INTERNAL, CNIError, Request

log = structlog.get_logger("tabby.node.api")

MAX_REQUEST = 1 << 20
READ_TIMEOUT = 5.0
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "BGP_STATUS")

Handler = Callable[[Request], Awaitable[dict[str, Any]]]


def parse_request(line: bytes) -> Request:
    """Bytes of one request line -> Request, or CNIError(6) naming what is wrong."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise CNIError(DECODE_FAILURE, f"local API: request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CNIError(DECODE_FAILURE, "local API: request must be a JSON object")
    command = data.get("command")
    if command not in COMMANDS:
        raise CNIError(DECODE_FAILURE, f"local API: command must be one of {', '.join(COMMANDS)}, got {command!r}")
    env = data.get("env") or {}
    config = data.get("config") or {}
    if not isinstance(env, dict) or not isinstance(config, dict):
        raise CNIError(DECODE_FAILURE, "local API: env and config must be JSON objects")
    mode = data.get("mode") or "tabby"
    if mode not in ("tabby", "tabby-ipam"):
        raise CNIError(DECODE_FAILURE, f"local API: mode must be tabby or tabby-ipam, got {mode!r}")
    return Request(command=command, env={str(k): str(v) for k, v in env.items()}, config=config, mode=mode)


class ApiServer:
    """Serves :class:`Request` s on ``path``; optionally links ``alias`` (by-netns) to it."""

    def __init__(self, path: Path, handler: Handler, *, alias: Path | None = None, node: str = "") -> None:
        self.path = path
        self.alias = alias
        self.handler = handler
        self.node = node
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a previous (killed) agent
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        if self.alias is not None:
            self.alias.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            prune_dangling_aliases(self.alias.parent)
            tmp = self.alias.with_name(self.alias.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.path)
            tmp.replace(self.alias)
        log.info("api.listening", node=self.node, socket=str(self.path), alias=str(self.alias or ""))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        for p in (self.alias, self.path):
            if p is None:
                continue
            # Remove the alias only while it still points at us (a newer agent may own it).
            if p is self.alias and (not p.is_symlink() or os.readlink(p) != str(self.path)):
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cni_version = "1.0.0"
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                req = parse_request(line)
                cni_version = str(req.config.get("cniVersion") or cni_version)
                reply: dict[str, Any] = {"result": await self.handler(req)}
            except CNIError as exc:
                reply = {"error": exc.to_json(cni_version)}
            except (TimeoutError, asyncio.LimitOverrunError, ValueError):
                reply = {"error": CNIError(DECODE_FAILURE, "local API: no complete request line").to_json(cni_version)}
            except Exception as exc:
                log.exception("api.internal_error", node=self.node)
                reply = {"error": CNIError(INTERNAL, f"internal error in the node agent: {type(exc).__name__}: {exc}")
                         .to_json(cni_version)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the plugin gave up; the work is done or undone either way
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def prune_dangling_aliases(directory: Path) -> list[Path]:
    """Remove by-netns links whose agent socket is gone (an agent killed with SIGKILL leaves them).

    A dangling link would send the CNI plugin to a dead socket; nobody else can know its name,
    since it is the inode of a namespace that may no longer exist.
    """
    removed = []
    for link in directory.glob("*.sock"):
        if link.is_symlink() and not link.exists():
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
                removed.append(link)
    return removed
