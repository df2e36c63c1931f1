"""The agent's local API: one JSON request per unix-socket connection, one JSON reply line.

Wire format (docs/cni.md)::

    -> {"command": "ADD"|"DEL"|"CHECK"|"GC"|"STATUS"|"BGP_STATUS", "env": {CNI_* ...}, "config": {...},
        "mode": "tabby"|"tabby-ipam"}\n
    <- {"result": {...}}\n     or     {"error": {"cniVersion", "code", "msg", "details"}}\n

or, from the native forwarder (controller/cni/forward.c), the runtime's call passed on unparsed::

    -> {"forwarded": 1, "mode": "tabby"|"tabby-ipam", "env": {CNI_*, K8S_*}, "stdin": "<netconf text>"}\n
    <- "<exit code>\n<the plugin's stdout>"   (not JSON: the forwarder copies it to its stdout)

The agent answers a forwarded call with the plugin's own code (``controller.cni.plugin.conversation``:
the same validation, errors and result shape as the Python plugin), so the forwarder needs no JSON
parser and no Python start. An agent without this answers a forwarded call with an error reply
(no ``command``), which the forwarder takes as "run the Python plugin instead".

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

from controller.cni import plugin as cni_plugin
from controller.node.cni_handlers import DECODE_FAILURE, INTERNAL, CNIError, Request

log = structlog.get_logger("tabby.node.api")

MAX_REQUEST = 1 << 20
READ_TIMEOUT = 5.0
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "BGP_STATUS")

Handler = Callable[[Request], Awaitable[dict[str, Any]]]


def parse_request(data: Any) -> Request:
    """One request (bytes of its line, or the decoded object) -> Request, or CNIError(6) naming what is wrong."""
    if isinstance(data, (bytes, str)):
        data = _decode(data.encode() if isinstance(data, str) else data)
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

    async def _answer(self, data: Any, cni_version: str = "1.0.0") -> dict[str, Any]:
        """One request object -> the reply object (never raises)."""
        try:
            req = parse_request(data)
            cni_version = str(req.config.get("cniVersion") or cni_version)
            return {"result": await self.handler(req)}
        except CNIError as exc:
            return {"error": exc.to_json(cni_version)}
        except Exception as exc:
            log.exception("api.internal_error", node=self.node)
            return {"error": CNIError(INTERNAL, f"internal error in the node agent: {type(exc).__name__}: {exc}")
                    .to_json(cni_version)}

    async def _forwarded(self, data: dict[str, Any]) -> bytes:
        """A call the native forwarder passed on unparsed: answered as the Python plugin would."""
        env = data.get("env")
        stdin = data.get("stdin")
        mode = data.get("mode")
        if not isinstance(env, dict) or not isinstance(stdin, str) or mode not in ("tabby", "tabby-ipam"):
            text = cni_plugin.json_dumps({"cniVersion": "1.0.0", "code": DECODE_FAILURE, "details": "",
                                          "msg": "local API: a forwarded call needs env, stdin and mode"})
            return b"1\n" + text.encode() + b"\n"
        talk = cni_plugin.conversation(mode, {str(k): str(v) for k, v in env.items()}, lambda: stdin)
        try:
            request, _conf = next(talk)
            talk.send(await self._answer(request))
        except StopIteration as stop:
            code, text = stop.value
        return f"{code}\n{text}".encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                data = _decode(line)
            except CNIError as exc:
                out = json.dumps({"error": exc.to_json("1.0.0")}).encode() + b"\n"
            except (TimeoutError, asyncio.LimitOverrunError, ValueError):
                out = json.dumps({"error": CNIError(DECODE_FAILURE, "local API: no complete request line")
                                  .to_json("1.0.0")}).encode() + b"\n"
            else:
                if isinstance(data, dict) and data.get("forwarded") == 1 and "command" not in data:
                    out = await self._forwarded(data)
                else:
                    out = json.dumps(await self._answer(data)).encode() + b"\n"
            writer.write(out)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the plugin gave up; the work is done or undone either way
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _decode(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise CNIError(DECODE_FAILURE, f"local API: request is not JSON: {exc}") from None


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
