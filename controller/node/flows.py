"""Flow visibility in the agent: the collector (felix_like.flowlog) wired to the model, and the
flow API that ``tabbyctl flows`` reaches over the network.

Why an API over TCP and not the local unix socket: an operator asks every node of the cluster at
once from wherever they are (Hubble Relay is the model), not from a root shell inside each node's
namespace. The agent listens inside its node's namespace on all addresses, port
``TABBY_FLOW_API_PORT`` (default 4244, Hubble's port; 0 = off), and writes where it listens into
its Node resource (annotation ``tabby.io/flow-api``), so a client finds each node from the
datastore. With etcd TLS configured (``ETCD_CA_CERT_FILE``/``ETCD_CERT_FILE``/``ETCD_KEY_FILE``)
the API is TLS with the same material, and clients must present a certificate of the same CA
(mutual TLS): the flow records name pods and policies, they are not for anyone on the network.

Wire format (HTTP/1.1, one request per connection):

* ``GET /v1/flows?after=SEQ&since=EPOCH&last=N&wait=S`` -> ``200``, one JSON record per line
  (docs/flows.md). ``wait`` (at most 30 s) long-polls until a record with ``seq > after`` exists
  (``tabbyctl flows observe --follow``).
* ``GET /v1/status`` -> one JSON object: node, capacity, size, seq, dropped (ring evictions),
  lost (netlink messages the kernel could not deliver), enabled and why not.

Settings (environment, read here: they concern flows only): ``TABBY_FLOW_LOGS`` (default true;
the compiler renders the NFLOG statements only then), ``TABBY_FLOW_BUFFER`` (ring size, default
4096), ``TABBY_FLOW_API_PORT``, ``TABBY_FLOW_API_HOST`` (default: every address).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from controller.node.model import Update
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from datastore import EtcdConfig
from felix_like.flowlog import DEFAULT_CAPACITY, Collector, FlowRecord, FlowRing, PeerInfo, Recorder, RuleLike
from felix_like.netns import run_in_netns

if TYPE_CHECKING:
    from controller.node.graph import Dispatcher

log = structlog.get_logger("tabby.node.flows")

DEFAULT_API_PORT = 4244
ANNOTATION = "tabby.io/flow-api"
MAX_WAIT = 30.0


class FlowConfigError(ValueError):
    """A flow setting is malformed (the message names the variable)."""


@dataclass(frozen=True)
class FlowSettings:
    enabled: bool = True
    capacity: int = DEFAULT_CAPACITY
    api_port: int = DEFAULT_API_PORT
    api_host: str = ""  # all addresses of the node's namespace

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FlowSettings:
        raw = env.get("TABBY_FLOW_LOGS", "").strip().lower()
        if raw not in ("", "true", "false"):
            raise FlowConfigError(f"TABBY_FLOW_LOGS: must be true or false, got {raw!r}")
        cap = env.get("TABBY_FLOW_BUFFER", "").strip() or str(DEFAULT_CAPACITY)
        if not cap.isdigit() or not 1 <= int(cap) <= 1_000_000:
            raise FlowConfigError(f"TABBY_FLOW_BUFFER: must be an integer between 1 and 1000000, got {cap!r}")
        port = env.get("TABBY_FLOW_API_PORT", "").strip() or str(DEFAULT_API_PORT)
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise FlowConfigError(f"TABBY_FLOW_API_PORT: must be a port number (0 = off), got {port!r}")
        return cls(enabled=raw != "false", capacity=int(cap), api_port=int(port),
                   api_host=env.get("TABBY_FLOW_API_HOST", "").strip())


class FlowPeers:
    """Address -> pod (name, namespace, labels, node), from every WorkloadEndpoint the agent sees.

    The collector thread reads it with single ``dict.get`` calls (atomic in CPython) while the event
    loop updates it; a pod that disappears keeps its entry until its address is reused, so a record
    of a flow that raced the pod's deletion still names it."""

    def __init__(self) -> None:
        self.by_ip: dict[str, PeerInfo] = {}
        self._ips: dict[str, tuple[str, ...]] = {}

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register(WorkloadEndpoint.KIND, self.on_wep)

    def on_wep(self, u: Update) -> None:
        self.set(u.key, u.new)

    def set(self, key: str, wep: WorkloadEndpoint | None) -> None:
        if wep is None:
            self._ips.pop(key, None)
            return
        info = PeerInfo(pod=wep.spec.pod or wep.spec.workload or wep.name, namespace=wep.namespace or "default",
                        labels=tuple(sorted((wep.metadata.labels or {}).items())), node=wep.spec.node or "")
        ips = tuple(str(ipaddress.ip_interface(n).ip) for n in wep.spec.ipNetworks)
        self._ips[key] = ips
        for ip in ips:
            self.by_ip[ip] = info

    def get(self, ip: str) -> PeerInfo | None:
        return self.by_ip.get(ip)


class RuleResolver:
    """Rule id -> RuleRef, from the compiled model the dataplane applies (``source`` returns its
    current ``rule_refs``). Ids are content hashes, so a ref once seen stays valid: the last 4,096
    seen are kept for records of packets logged just before a policy change."""

    def __init__(self, source: Callable[[], Mapping[str, Any] | None]) -> None:
        self.source = source
        self._seen: dict[str, RuleLike] = {}

    def __call__(self, rid: str) -> RuleLike | None:
        found = self._seen.get(rid)
        if found is not None:
            return found
        refs = self.source() or {}
        ref = refs.get(rid)
        if ref is not None:
            if len(self._seen) >= 4096:
                self._seen.clear()
            self._seen[rid] = ref
        return ref


def server_ssl_context(etcd: EtcdConfig) -> ssl.SSLContext | None:
    """TLS with the etcd material (cert + key; clients verified against the CA), or None."""
    if not (etcd.cert_file and etcd.key_file):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(etcd.cert_file, etcd.key_file)
    if etcd.ca_cert_file:
        ctx.load_verify_locations(etcd.ca_cert_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class FlowService:
    """The ring, the recorder, the collector thread and the API server of one agent."""

    def __init__(self, node: str, netns: str | None, settings: FlowSettings, peers: FlowPeers,
                 rule_refs: Callable[[], Mapping[str, Any] | None], etcd: EtcdConfig | None = None) -> None:
        self.node = node
        self.netns = netns
        self.settings = settings
        self.peers = peers
        self.ring = FlowRing(settings.capacity)
        self.resolver = RuleResolver(rule_refs)
        self.recorder = Recorder(node, self.ring, self.resolver, peers.get, on_record=self._on_record)
        self.collector: Collector | None = None
        self.etcd = etcd
        self.error = ""
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new = asyncio.Event()
        self._waiters = 0
        self.tls = False

    # -- collector -------------------------------------------------------------------------------
    async def start(self, advertise: Callable[[str], Any] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.settings.enabled:
            self.error = "flow logs are off (TABBY_FLOW_LOGS=false)"
        else:
            collector = Collector(self.netns, self.recorder)
            try:
                await asyncio.to_thread(collector.start)
                self.collector = collector
                log.info("flows.collecting", node=self.node, capacity=self.settings.capacity,
                         accounting=collector.accounting)
            except OSError as exc:
                # Networking matters more than its flow logs: say so and run without them.
                self.error = f"cannot read NFLOG in the node's namespace: {exc}"
                log.error("flows.collector_failed", node=self.node, error=str(exc))
        if self.settings.api_port:
            await self._listen()

    def _on_record(self, _rec: FlowRecord) -> None:
        # from the reader thread: wake long-polls only when someone waits (no loop work otherwise)
        if self._waiters and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._new.set)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if self.collector is not None:
            await asyncio.to_thread(self.collector.stop)
            self.collector = None

    # -- API ---------------------------------------------------------------------------------------
    async def _listen(self) -> None:
        from controller.metrics import MetricsServer  # the same dual-stack listening socket

        ctx = None
        try:
            ctx = server_ssl_context(self.etcd) if self.etcd is not None else None
        except (OSError, ssl.SSLError) as exc:
            log.error("flows.tls_failed", error=str(exc))
            self.error = f"flow API TLS material unusable: {exc}"
            return
        try:
            host, port = self.settings.api_host, self.settings.api_port
            sock = await asyncio.to_thread(
                run_in_netns, self.netns, lambda: MetricsServer.listening_socket(host, port))
        except OSError as exc:
            log.error("flows.listen_failed", port=self.settings.api_port, error=exc.strerror or str(exc),
                      hint="TABBY_FLOW_API_PORT names a port already in use")
            return
        self._server = await asyncio.start_server(self._serve, sock=sock, ssl=ctx)
        self.port = int(sock.getsockname()[1])
        self.tls = ctx is not None
        log.info("flows.api_listening", node=self.node, port=self.port, tls=self.tls)

    def status(self) -> dict[str, Any]:
        c = self.recorder.counters
        return {"node": self.node, "enabled": self.collector is not None, "error": self.error,
                "capacity": self.ring.capacity, "size": len(self.ring), "seq": self.ring.seq,
                "dropped": self.ring.dropped, "lost": c.lost, "conntrack_ends": c.ct_ends,
                "accounting": bool(self.collector and self.collector.accounting)}

    async def records(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        after = int(query.get("after") or 0)
        since = float(query["since"]) if query.get("since") else None
        last = int(query["last"]) if query.get("last") else None
        wait = min(float(query.get("wait") or 0), MAX_WAIT)
        recs = self.ring.records(after=after, since=since, last=last)
        deadline = time.monotonic() + wait
        while not recs and wait > 0 and time.monotonic() < deadline:
            self._new.clear()
            self._waiters += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new.wait(), max(0.0, min(1.0, deadline - time.monotonic())))
            finally:
                self._waiters -= 1
            recs = self.ring.records(after=after, since=since, last=last)
        return [r.to_json() for r in recs]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                del line
            parts = request.decode("latin-1").split()
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            url = urllib.parse.urlsplit(target)
            query = dict(urllib.parse.parse_qsl(url.query))
            status, body = "200 OK", b""
            try:
                if method != "GET":
                    status, body = "405 Method Not Allowed", b"only GET\n"
                elif url.path == "/v1/flows":
                    body = "".join(json.dumps(r, separators=(",", ":")) + "\n"
                                   for r in await self.records(query)).encode()
                elif url.path == "/v1/status":
                    body = (json.dumps(self.status()) + "\n").encode()
                else:
                    status, body = "404 Not Found", b"try /v1/flows or /v1/status\n"
            except ValueError as exc:
                status, body = "400 Bad Request", f"bad query: {exc}\n".encode()
            head = (f"HTTP/1.1 {status}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
