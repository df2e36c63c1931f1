"""The Prometheus endpoint of the agent and the controller: ``/metrics``, ``/healthz``, ``/readyz``.

Switched and placed as Felix's is: ``prometheusMetricsEnabled`` (default false) and
``prometheusMetricsPort`` (default 9091) with the matching environment variables
``FELIX_PROMETHEUSMETRICSENABLED`` / ``FELIX_PROMETHEUSMETRICSPORT`` (and
``FELIX_PROMETHEUSMETRICSHOST``, default all addresses). As in Felix, the environment wins over
the datastore: :func:`agent_settings` takes the FelixConfiguration spec (the ``calicoctl`` kind)
as its second argument; until the agent reads that kind it is called without one. The controller
listens on ``TABBY_CONTROLLER_PROMETHEUSMETRICSPORT`` (default 9094, kube-controllers' port;
0 = off).

Why a small asyncio server and not prometheus-client's ``start_http_server``: that one serves
``/metrics`` only from a thread; the probes need ``/healthz`` and ``/readyz`` with reasons, and
the agent's listening socket must be created inside the node's network namespace
(``TABBY_NETNS``), which a socket passed to ``asyncio.start_server`` allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = structlog.get_logger("tabby.metrics")

FELIX_DEFAULT_PORT = 9091
CONTROLLER_DEFAULT_PORT = 9094
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


class MetricsConfigError(ValueError):
    """A metrics setting is malformed; the message names it."""


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = False
    port: int = FELIX_DEFAULT_PORT
    host: str = ""


def _port(name: str, raw: Any) -> int:
    text = str(raw).strip()
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise MetricsConfigError(f"{name}: must be a port number between 1 and 65535, got {text!r}")
    return int(text)


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise MetricsConfigError(f"{name}: must be true or false, got {raw!r}")


def agent_settings(env: Mapping[str, str], felix_spec: Mapping[str, Any] | None = None) -> MetricsSettings:
    """Felix's rule: FelixConfiguration fields, overridden by FELIX_* environment variables."""
    spec = felix_spec or {}
    enabled = _bool("prometheusMetricsEnabled", spec.get("prometheusMetricsEnabled", False))
    port = _port("prometheusMetricsPort", spec.get("prometheusMetricsPort", FELIX_DEFAULT_PORT))
    host = str(spec.get("prometheusMetricsHost", "") or "")
    if env.get("FELIX_PROMETHEUSMETRICSENABLED") is not None:
        enabled = _bool("FELIX_PROMETHEUSMETRICSENABLED", env["FELIX_PROMETHEUSMETRICSENABLED"])
    if env.get("FELIX_PROMETHEUSMETRICSPORT"):
        port = _port("FELIX_PROMETHEUSMETRICSPORT", env["FELIX_PROMETHEUSMETRICSPORT"])
    if env.get("FELIX_PROMETHEUSMETRICSHOST"):
        host = env["FELIX_PROMETHEUSMETRICSHOST"].strip()
    return MetricsSettings(enabled=enabled, port=port, host=host)


def controller_settings(env: Mapping[str, str]) -> MetricsSettings:
    raw = env.get("TABBY_CONTROLLER_PROMETHEUSMETRICSPORT", "").strip()
    if raw == "0":
        return MetricsSettings(enabled=False, port=CONTROLLER_DEFAULT_PORT)
    port = _port("TABBY_CONTROLLER_PROMETHEUSMETRICSPORT", raw) if raw else CONTROLLER_DEFAULT_PORT
    return MetricsSettings(enabled=True, port=port, host=env.get("TABBY_CONTROLLER_PROMETHEUSMETRICSHOST", ""))


#: A probe answers (ok, reasons): 200 with "ok" when ok, else 503 with one reason per line.
Probe = Callable[[], tuple[bool, list[str]]]


class MetricsServer:
    """Serve a registry and two probes on one TCP port."""

    def __init__(self, registry: CollectorRegistry, *, healthz: Probe, readyz: Probe) -> None:
        self.registry = registry
        self.healthz = healthz
        self.readyz = readyz
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @staticmethod
    def listening_socket(host: str, port: int) -> socket.socket:
        """Create (in the calling thread's namespace) a listening socket; IPv6 dual-stack for all addresses."""
        family = socket.AF_INET6 if (not host or ":" in host) and socket.has_ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self.port = int(sock.getsockname()[1])
        log.info("metrics.listening", port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                del line  # headers are not needed
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = self._route(method, path)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path in ("/healthz", "/readyz", "/livez"):
            ok, reasons = (self.readyz if path == "/readyz" else self.healthz)()
            body = ("ok\n" if ok else "".join(f"{r}\n" for r in reasons)).encode()
            return ("200 OK" if ok else "503 Service Unavailable"), "text/plain; charset=utf-8", body
        return "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"
