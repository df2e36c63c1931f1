"""The node agent's main: start-up order, the watch loop, registration, tunnel addresses, stop.

Start-up order and why:

1. local API first (answers "not ready, try again later" = code 11 instead of "no agent");
2. the node's address (configured, or autodetected; retried until it appears, because the lab
   adds the address after the agent starts);
3. register the Node (compare-on-revision, retried while etcd is away);
4. the watch over the whole prefix; the first full snapshot starts the dataplane (full resync);
   later events only mark it dirty (coalesced deltas);
5. tunnel addresses whenever the pools ask for them;
6. with CALICO_NETWORKING_BACKEND=bird (the default): BGP (controller/node/bgp.py) once the first
   snapshot is in; the kernel's BGP routes of a previous agent are kept until the RIB is refilled.

SIGTERM stops the tasks and leaves the dataplane as it is (routes keep forwarding; the next
agent's first full resync adopts them) and ExaBGP running with its sessions (the next agent
adopts it). etcd going away changes nothing in the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from dataclasses import replace
from typing import Any

import structlog

from controller.cluster_info import ensure_cluster_information
from controller.node.api import ApiServer
from controller.node.autodetect import Detected, interface_holding, read_interfaces, route_source, select
from controller.node.bgp import NodeBgp, backend_inputs, disabled_status
from controller.node.cni_handlers import CNIHandlers, Request
from controller.node.config import NodeConfig
from controller.node.dataplane import Dataplane
from controller.node.nlutil import netns_inode
from controller.node.snapshot import Snapshot, pod_mtu
from datastore import Datastore, DatastoreError, Put, WatchEvent, WatchResync, mod_is
from datastore.keys import resource_key
from datastore.watch import watch_prefix
from felix_like.routes import RouteInputs, WorkloadInfo
from felix_like.vxlan import derive_vtep_mac
from felix_like.workload import enable_forwarding
from ipam import IPAMClient

log = structlog.get_logger("tabby.node.agent")

DETECT_LOG_EVERY = 60.0


class Agent:
    """One node's agent. ``await Agent(config).run(stop)``."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.log = log.bind(node=config.nodename)
        self.snapshot = Snapshot(config.nodename)
        request_cfg = replace(
            config.etcd,
            connect_timeout=config.cni_timeout,
            rpc_timeout=min(config.etcd.rpc_timeout, config.cni_timeout),
        )
        #: Requests (CNI, registration) and the watch use separate connections: the watch drops
        #: and re-dials its own when etcd goes away, which must not cut a request short.
        self.ds = Datastore(request_cfg)
        self.watch_ds = Datastore(config.etcd)
        self.ipam = IPAMClient(self.ds)
        self.detected: Detected | None = None
        self.dataplane: Dataplane | None = None
        self.ready = asyncio.Event()
        self.handlers = CNIHandlers(self)
        alias = None
        try:
            alias = config.by_netns_dir / f"{netns_inode(config.netns)}.sock"
        except OSError:
            self.log.warning("agent.netns_unknown", netns=config.netns)
        self.api = ApiServer(config.socket_path, self.handle, alias=alias, node=config.nodename)
        self._tasks: list[asyncio.Task[Any]] = []
        self._tunnel_dirty = asyncio.Event()
        self._registered = False
        self._managers: Any = None
        self._tunnels_at = 0.0
        #: BGP (ExaBGP + RIB) with the ``bird`` backend only.
        self.bgp: NodeBgp | None = NodeBgp(self) if config.bgp_enabled else None

    # -- readiness -----------------------------------------------------------------------------
    def not_ready_reason(self) -> str:
        if self.detected is None and self.config.ip != "none":
            return f"waiting for the node address ({self.config.autodetect.describe()})"
        if not self.snapshot.synced:
            return "waiting for the first datastore snapshot (is etcd reachable?)"
        if self.dataplane is None or not self.dataplane.started:
            return "dataplane not started"
        return ""

    async def handle(self, req: Request) -> dict[str, Any]:
        if req.command == "BGP_STATUS":
            return self.bgp_status()
        return await self.handlers.handle(req)

    def bgp_status(self) -> dict[str, Any]:
        """Sessions, counters and metrics for `tabbyctl node status` (answered before readiness too)."""
        out = disabled_status(self.config.networking_backend) if self.bgp is None else self.bgp.status()
        out["node"] = self.config.nodename
        out["ready"] = not self.not_ready_reason()
        out["not_ready_reason"] = self.not_ready_reason()
        return out

    # -- derived state ---------------------------------------------------------------------------
    @property
    def local_ip(self) -> str | None:
        return self.detected.address if self.detected else None

    @property
    def interface(self) -> str:
        return self.detected.interface if self.detected else ""

    def pod_mtu(self) -> int:
        nic = self.detected.mtu if self.detected else 1500
        return pod_mtu(nic, self.snapshot.encapsulations(), self.config.mtu)

    def route_inputs(self, extra: dict[str, WorkloadInfo], gone: set[str]) -> RouteInputs:
        inputs = self.snapshot.route_inputs(self.local_ip, self.interface, extra)
        learned = self.bgp.learned_routes() if self.bgp is not None else ()
        inputs = backend_inputs(inputs, self.config.networking_backend, learned)
        if gone:
            inputs = replace(inputs, workloads=tuple(w for w in inputs.workloads if w.interface not in gone))
        return inputs

    # -- main ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.api.start()
        self.log.info("agent.starting", run_dir=str(self.config.run_dir), netns=self.config.netns or "",
                      ip=self.config.ip, autodetect=self.config.autodetect.describe())
        main = asyncio.create_task(self._main(), name="agent-main")
        self._tasks.append(main)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        try:
            if main in done:
                main.result()  # re-raise a fatal error
        finally:
            await self.close()

    async def close(self) -> None:
        await self.api.stop()
        if self.bgp is not None:
            await self.bgp.stop()  # ExaBGP keeps running: sessions and announcements survive a restart
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.dataplane is not None:
            await self.dataplane.stop()  # leaves every route in place
        await self.ds.close()
        await self.watch_ds.close()
        self.log.info("agent.stopped", dataplane="left in place")

    async def _main(self) -> None:
        await asyncio.to_thread(enable_forwarding, self.config.netns)
        if self.config.ip != "none":
            self.detected = await self.detect()
        try:
            await ensure_cluster_information(self.ds)
        except DatastoreError as exc:  # etcd away at start: registration's own retries wait for it
            self.log.warning("agent.cluster_info_skipped", error=str(exc))
        await self.register()
        if self.bgp is not None:
            await asyncio.to_thread(self.bgp.capture_kernel_routes, self.interface)
        self.dataplane = Dataplane(
            self.config.netns, self.route_inputs, resync_interval=self.config.resync_interval,
            node=self.config.nodename,
        )
        self.dataplane.managers.append(self.apply_tunnels)
        self._tasks.append(asyncio.create_task(self._tunnels(), name="agent-tunnels"))
        await self._watch()

    # -- address detection ------------------------------------------------------------------------
    async def detect(self) -> Detected:
        """The node's address and NIC; waits (unbounded, logging each minute) until it exists."""
        cfg = self.config
        last_log = 0.0
        delay = 0.1
        while True:
            try:
                interfaces = await asyncio.to_thread(read_interfaces, cfg.netns)
                found: Detected | None
                if cfg.static_ip:
                    itf = interface_holding(cfg.static_ip, interfaces)
                    found = Detected(itf.name, cfg.static_ip, itf.mtu) if itf else None
                else:
                    src = None
                    if cfg.autodetect.kind == "can-reach":
                        src = await asyncio.to_thread(route_source, cfg.netns, cfg.autodetect.args[0])
                    found = select(cfg.autodetect, interfaces, route_source=src)
            except OSError as exc:
                found = None
                self.log.warning("agent.detect_failed", error=str(exc))
            if found is not None:
                self.log.info("agent.address", ip=found.address, interface=found.interface, mtu=found.mtu)
                return found
            now = time.monotonic()
            if now - last_log >= DETECT_LOG_EVERY:
                last_log = now
                self.log.warning("agent.address_missing", ip=cfg.ip, autodetect=cfg.autodetect.describe(),
                                 hint="waiting for the interface address to appear")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- node registration ------------------------------------------------------------------------
    async def update_node(self, mutate: Any, what: str) -> dict[str, Any]:
        """Read-modify-write the Node with a compare on mod_revision; retried (also while etcd is away)."""
        key = resource_key("nodes", self.config.nodename)
        delay = 0.1
        for attempt in range(1, 10_000):
            try:
                current = await self.ds.get(key)
                doc = current.json() if current is not None else {
                    "apiVersion": "projectcalico.org/v3", "kind": "Node",
                    "metadata": {"name": self.config.nodename,
                                 "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                    "spec": {},
                }
                before = repr(doc)
                mutate(doc)
                if current is not None and repr(doc) == before:
                    return doc
                res = await self.ds.txn([mod_is(key, current.mod_revision if current else 0)], [Put(key, doc)])
                if res.succeeded:
                    self.log.info("agent.node_updated", what=what, attempt=attempt)
                    return doc
                delay = 0.01
            except DatastoreError as exc:
                if attempt == 1 or attempt % 20 == 0:
                    self.log.warning("agent.node_update_retry", what=what, error=str(exc)[:200])
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
        raise RuntimeError(f"could not update Node {self.config.nodename}: {what}")

    async def register(self) -> None:
        cfg = self.config

        def mutate(doc: dict[str, Any]) -> None:
            spec = doc.setdefault("spec", {})
            bgp = dict(spec.get("bgp") or {})
            if self.detected is not None:
                bgp["ipv4Address"] = self.detected.address
            if cfg.as_number is not None:
                bgp["asNumber"] = cfg.as_number
            if bgp:
                spec["bgp"] = bgp

        await self.update_node(mutate, "registration")
        self._registered = True

    async def _tunnels(self) -> None:
        """Allocate (or give back) the IPIP/VXLAN tunnel addresses the pools ask for."""
        while True:
            await self._tunnel_dirty.wait()
            self._tunnel_dirty.clear()
            try:
                await self.ensure_tunnels()
            except Exception as exc:
                self.log.warning("agent.tunnel_address_failed", error=str(exc)[:200])
                await asyncio.sleep(2)
                self._tunnel_dirty.set()

    async def ensure_tunnels(self) -> None:
        encaps = self.snapshot.encapsulations()
        node = self.config.nodename
        result: dict[str, str | None] = {}
        for kind in ("ipip", "vxlan"):
            if kind in encaps:
                result[kind] = await asyncio.wait_for(self.ipam.assign_tunnel_address(node=node, kind=kind), 30)
            else:
                result[kind] = None
                mine = self.snapshot.node(node) or {}
                spec = mine.get("spec") or {}
                has = (spec.get("bgp") or {}).get("ipv4IPIPTunnelAddr") if kind == "ipip" else \
                    spec.get("ipv4VXLANTunnelAddr")
                if has:
                    await asyncio.wait_for(self.ipam.release_by_handle(f"{kind}-tunnel-addr-{node}"), 30)
        mac = self.config.vxlan_mac or derive_vtep_mac(node)

        def mutate(doc: dict[str, Any]) -> None:
            spec = doc.setdefault("spec", {})
            bgp = dict(spec.get("bgp") or {})
            if result["ipip"]:
                bgp["ipv4IPIPTunnelAddr"] = result["ipip"]
            else:
                bgp.pop("ipv4IPIPTunnelAddr", None)
            if bgp:
                spec["bgp"] = bgp
            if result["vxlan"]:
                spec["ipv4VXLANTunnelAddr"] = result["vxlan"]
                spec["vxlanTunnelMACAddr"] = mac
            else:
                spec.pop("ipv4VXLANTunnelAddr", None)
                spec.pop("vxlanTunnelMACAddr", None)

        await self.update_node(mutate, "tunnel addresses")

    async def apply_tunnels(self) -> bool:
        """Tunnel devices and NAT from the snapshot; only when their inputs changed (or periodically)."""
        from controller.node.tunnels import TunnelManagers, tunnel_inputs

        if self._managers is None:
            self._managers = TunnelManagers(self.config.netns)
        inputs = tunnel_inputs(
            self.config.nodename, self.snapshot.nodes(), self.snapshot.pools(), self.snapshot.encapsulations(),
            self.local_ip, self.interface,
        )
        now = time.monotonic()
        if inputs == self._managers.last and now - self._tunnels_at < self.config.resync_interval:
            return False
        self._tunnels_at = now
        return await asyncio.to_thread(self._managers.apply, inputs, self.config.nodename)

    # -- watch ----------------------------------------------------------------------------------
    async def _watch(self) -> None:
        async for item in watch_prefix(self.watch_ds, ""):
            change = self.snapshot.apply(item)
            if isinstance(item, WatchResync):
                self.log.info("agent.snapshot", revision=item.revision, keys=len(self.snapshot.values))
                assert self.dataplane is not None
                if not self.dataplane.started:
                    await self.dataplane.start()
                    self.ready.set()
                    self.log.info("agent.ready", backend=self.config.networking_backend)
                    if self.bgp is not None:
                        await self.bgp.start()
                else:
                    self.dataplane.mark_dirty()
                    if self.bgp is not None:
                        self.bgp.mark_dirty()
                self._tunnel_dirty.set()
                continue
            assert isinstance(item, WatchEvent)
            if self.bgp is not None and self.bgp.started and self.bgp.interested(item.kv.key):
                self.bgp.mark_dirty()
            if change.routes and self.dataplane is not None:
                self.dataplane.mark_dirty()
            if change.pools:
                self._tunnel_dirty.set()
            if change.own_node and self._registered and item.kind == "delete":
                # Someone deleted our Node: register again (Calico's node does the same on restart).
                self._tasks.append(asyncio.create_task(self.register()))


async def run_agent(config: NodeConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("agent.signal", node=config.nodename, signal=signal.Signals(signum).name)
        loop.call_soon_threadsafe(stop.set)

    # Not loop.add_signal_handler: that routes signals through a wakeup fd which children forked
    # by libraries (pyroute2 forks to open sockets in a namespace) inherit, so a signal delivered
    # to such a child would stop the agent. A plain handler runs only in the process it hit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    await Agent(config).run(stop)
