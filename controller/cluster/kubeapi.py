"""A small Kubernetes API client over plain HTTP/1.1 (asyncio streams): list pages and watch streams.

Why not a client library: the sync needs four read-only calls (list with ``limit``/``continue``,
watch with ``resourceVersion``/``allowWatchBookmarks``/``timeoutSeconds``), a bearer token and a
CA. The official ``kubernetes`` client is synchronous and pulls urllib3, requests, oauthlib,
websocket-client and aiohttp; lightkube pulls httpx2 and msgspec and, on a 410 Gone, restarts the
watch without a resourceVersion instead of relisting (so a delete that happened in the gap is never
seen). The list/watch protocol itself is the part that must be right, and that lives in
:mod:`controller.cluster.kubesync`, tested against a recorded API stream served over real HTTP.

Configuration (:meth:`KubeAPIConfig.from_env`), as a Pod's in-cluster client finds it:
``TABBY_KUBE_API`` (``https://host:port``; else ``KUBERNETES_SERVICE_HOST``/``_PORT``, which the
kubelet sets in every Pod), ``TABBY_KUBE_TOKEN_FILE`` and ``TABBY_KUBE_CA_FILE`` (default: the
ServiceAccount's mounted token and CA), ``TABBY_KUBE_SYNC=off`` to disable the sync.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Longest header block or single watch line accepted (a Pod object with many labels stays far below).
MAX_LINE = 4 * 1024 * 1024


class KubeConfigError(ValueError):
    """A setting is malformed; the message starts with the variable's name."""


class KubeAPIError(Exception):
    """The API server answered with an error status (``status``: HTTP code, or a watch ERROR's code)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"{status}: {message}")


@dataclass(frozen=True)
class KubeAPIConfig:
    url: str
    token_file: Path | None = None
    ca_file: Path | None = None
    #: seconds to connect and to get a list answer (a watch may stay open longer)
    timeout: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KubeAPIConfig | None:
        """None when no API server is configured (not in a Pod, no TABBY_KUBE_API) or the sync is off."""
        env = os.environ if environ is None else environ
        switch = (env.get("TABBY_KUBE_SYNC") or "").strip().lower()
        if switch not in ("", "on", "off", "true", "false"):
            raise KubeConfigError(f"TABBY_KUBE_SYNC: must be on or off, got {switch!r}")
        if switch in ("off", "false"):
            return None
        url = (env.get("TABBY_KUBE_API") or "").strip()
        if not url and env.get("KUBERNETES_SERVICE_HOST"):
            host = env["KUBERNETES_SERVICE_HOST"].strip()
            port = (env.get("KUBERNETES_SERVICE_PORT") or "443").strip()
            url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        if not url:
            if switch in ("on", "true"):
                raise KubeConfigError("TABBY_KUBE_SYNC: on, but no API server: set TABBY_KUBE_API "
                                      "(or run in a Pod, where KUBERNETES_SERVICE_HOST is set)")
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KubeConfigError(f"TABBY_KUBE_API: must be http(s)://host[:port], got {url!r}")
        token = _path(env, "TABBY_KUBE_TOKEN_FILE", SERVICE_ACCOUNT / "token")
        ca = _path(env, "TABBY_KUBE_CA_FILE", SERVICE_ACCOUNT / "ca.crt")
        return cls(url=url.rstrip("/"), token_file=token, ca_file=ca)


def _path(env: Mapping[str, str], var: str, default: Path) -> Path | None:
    raw = (env.get(var) or "").strip()
    if raw:
        if not Path(raw).is_file():
            raise KubeConfigError(f"{var}: no such file: {raw}")
        return Path(raw)
    return default if default.is_file() else None


class KubeAPI:
    """One API server. Every call opens its own connection (a watch holds one for its lifetime)."""

    def __init__(self, config: KubeAPIConfig) -> None:
        self.config = config
        parts = urlsplit(config.url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self._ssl: ssl.SSLContext | None = None
        if self.tls:
            self._ssl = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)

    def _headers(self) -> dict[str, str]:
        headers = {"Host": f"{self.host}:{self.port}", "Accept": "application/json",
                   "User-Agent": "tabby-controller", "Connection": "close"}
        if self.config.token_file is not None:
            # Re-read every call: a projected ServiceAccount token is rotated on disk by the kubelet.
            token = self.config.token_file.read_text().strip()
            if token:
                headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _open(self, path: str, params: Mapping[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                                                           int, dict[str, str]]:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        target = path + (f"?{query}" if query else "")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=MAX_LINE), self.config.timeout)
        try:
            head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self._headers().items())
            writer.write((head + "\r\n").encode("latin-1"))
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), self.config.timeout)
            fields = status_line.decode("latin-1").split(" ", 2)
            if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
                raise KubeAPIError(502, f"not an HTTP answer from {self.config.url}: {status_line[:80]!r}")
            headers: dict[str, str] = {}
            while True:
                line = await asyncio.wait_for(reader.readline(), self.config.timeout)
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            return reader, writer, int(fields[1]), headers
        except BaseException:
            writer.close()
            raise

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One JSON answer (a list page)."""
        reader, writer, status, headers = await self._open(path, params or {})
        try:
            body = b"".join([chunk async for chunk in _body(reader, headers)])
        finally:
            writer.close()
        doc = _decode(body, path)
        if status >= 400:
            raise KubeAPIError(status, _status_message(doc, body))
        return doc

    async def stream(self, path: str, params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Watch events, one JSON object per line, until the server ends the stream."""
        reader, writer, status, headers = await self._open(path, params)
        try:
            if status >= 400:
                body = b"".join([chunk async for chunk in _body(reader, headers)])
                raise KubeAPIError(status, _status_message(_decode(body, path, strict=False), body))
            pending = b""
            async for chunk in _body(reader, headers):
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        yield _decode(line, path)
                if len(pending) > MAX_LINE:
                    raise KubeAPIError(502, f"watch line longer than {MAX_LINE} bytes from {path}")
            if pending.strip():
                yield _decode(pending, path)
        finally:
            writer.close()


async def _body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive: chunked, Content-Length, or until the server closes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ConnectionError("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            chunk = await reader.read(min(remaining, 65536))
            if not chunk:
                raise ConnectionError("connection closed before the whole body arrived")
            remaining -= len(chunk)
            yield chunk
    else:
        while chunk := await reader.read(65536):
            yield chunk


def _decode(body: bytes, path: str, *, strict: bool = True) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        if not strict:
            return {}
        raise KubeAPIError(502, f"answer from {path} is not JSON: {body[:80]!r}") from None
    if not isinstance(doc, dict):
        raise KubeAPIError(502, f"answer from {path} is not a JSON object")
    return doc


def _status_message(doc: Mapping[str, Any], body: bytes) -> str:
    """A Kubernetes Status' reason and message, else the raw body's start."""
    if doc.get("kind") == "Status":
        return f"{doc.get('reason') or 'Failure'}: {doc.get('message') or ''}".strip()
    return body[:200].decode("utf-8", "replace")
