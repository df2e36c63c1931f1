"""The node agent's main: start-up order, the watch loop, registration, tunnel addresses, stop.

Start-up order and why:

1. local API first (answers "not ready, try again later" = code 11 instead of "no agent");
2. the node's address (configured, or autodetected; retried until it appears, because the lab
   adds the address after the agent starts);
3. register the Node (compare-on-revision, retried while etcd is away);
4. the watch over the whole prefix feeds ONE validated model (controller/node/model.py); its
   changes go through the calculation graph (graph.py) to the dataplane thread as typed messages
   (dataplane.py); the first full snapshot starts the dataplane (full resync), later changes are
   applied in throttled apply phases, CNI ADD/DEL in the fast lane;
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
import ipaddress
import os
import random
import signal
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import structlog

from common import logs
from controller.cluster_info import ensure_cluster_information
from controller.metrics import MetricsServer
from controller.node import gc_tuning
from controller.node.api import ApiServer
from controller.node.autodetect import Detected, interface_holding, read_interfaces, route_source, select
from controller.node.bgp import NodeBgp, disabled_status
from controller.node.cni_handlers import INTERNAL, CNIError, CNIHandlers, Request
from controller.node.config import NodeConfig
from controller.node.dataplane import Dataplane
from controller.node.felix_config import FelixSettings, describe, felix_settings
from controller.node.flows import ANNOTATION, FlowPeers, FlowService, FlowSettings
from controller.node.graph import CalcGraph, EncapSettings, host_mtu, pod_mtu, with_host_mtu
from controller.node.liveness import LeaseKeeper, liveness_ttl
from controller.node.messages import InSync, Message, RouteUpdate, WorkloadDeviceUpdate
from controller.node.metrics import AgentMetrics, readiness, start_metrics
from controller.node.model import Model, counts
from controller.node.nlutil import netns_inode
from controller.node.nodestatus import NodeStatusReporter
from datamodel.resources import FelixConfiguration, IPPool
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from datastore import Conflict, Datastore, DatastoreError, Put, WatchHealth, WatchResync, mod_is, staged
from datastore.keys import GUARDS, HANDLES, resource_key
from datastore.watch import watch_prefix
from felix_like.route_programmer import ApplyResult
from felix_like.vxlan import derive_vtep_mac
from felix_like.workload import WorkloadSpec, enable_forwarding
from ipam import IPAMClient, Pool

log = structlog.get_logger("tabby.node.agent")

DETECT_LOG_EVERY = 60.0


class Agent:
    """One node's agent. ``await Agent(config).run(stop)``."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.log = log.bind(node=config.nodename)
        #: The one validated model of the datastore, and the calculation graph fed from it.
        self.model = Model(config.nodename)
        self.graph = CalcGraph(config.nodename, config.networking_backend, vxlan_mac=config.vxlan_mac,
                               flow_logs=config.flow_logs)
        self.graph.bgp.on_change = self._bgp_inputs_changed
        self._ipam_pools: list[Pool] | None = None
        request_cfg = replace(
            config.etcd,
            connect_timeout=config.cni_timeout,
            rpc_timeout=min(config.etcd.rpc_timeout, config.cni_timeout),
        )
        #: Requests (CNI, registration) and the watch use separate connections: the watch drops
        #: and re-dials its own when etcd goes away, which must not cut a request short.
        self.ds = Datastore(request_cfg)
        self.watch_ds = Datastore(config.etcd)
        #: Whether the watch's view is current (datastore.watch): CNI ADD answers code 11 while stale.
        self.watch_health = WatchHealth(on_change=self._watch_health_changed)
        self.ipam = IPAMClient(self.ds, pool_source=self.ipam_pools, pool_filter=self._ipam_pool_filter)
        self.detected: Detected | None = None
        self.detected6: Detected | None = None  # IP6 (None unless IP6 is set)
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
        #: BGP (ExaBGP + RIB) with the ``bird`` backend only.
        self.bgp: NodeBgp | None = NodeBgp(self) if config.bgp_enabled else None
        if self.bgp is not None:
            self.bgp.on_learned = self._learned_changed
        #: Prometheus endpoint, /healthz, /readyz (controller/node/metrics.py; FELIX_PROMETHEUSMETRICS*).
        self.metrics = AgentMetrics(self)
        self.metrics_server: MetricsServer | None = None
        #: What FelixConfiguration (and the environment, which wins) sets; recomputed on every change.
        self.felix: FelixSettings = self._felix_settings([])
        self._felix_reported: set[str] = set()
        #: Flow visibility (controller/node/flows.py): every pod address -> pod, NFLOG records, the flow API.
        self.flow_peers = FlowPeers()
        self.flow_peers.register(self.graph.dispatcher)
        self.flows = FlowService(config.nodename, config.netns, FlowSettings.from_env(os.environ), self.flow_peers,
                                 self.rule_refs, config.etcd)
        #: the tunnel settings in force (FelixConfiguration's, auto MTUs made explicit by mtuIfacePattern)
        self.encap = EncapSettings()
        #: the MTU mtuIfacePattern found (None: unset, or it matched nothing: the autodetected NIC's)
        self.host_mtu: int | None = None

    def _felix_settings(self, configs: list[FelixConfiguration]) -> FelixSettings:
        env = os.environ
        return felix_settings(
            self.config.nodename, env, configs,
            env_log_level=self.config.log_level if (env.get("TABBY_LOG_LEVEL") or "").strip() else None,
            env_resync=self.config.resync_interval if (env.get("TABBY_RESYNC_INTERVAL") or "").strip() else None)

    async def apply_felix_configuration(self) -> None:
        """FelixConfiguration changed (or the first snapshot): apply what changed, at once."""
        configs = [c for c in self.model.of_kind(FelixConfiguration.KIND).values()
                   if isinstance(c, FelixConfiguration)]
        new, old = self._felix_settings(configs), self.felix
        self.felix = new
        if new.log_level != old.log_level:
            logs.set_level(new.log_level)
        if new.resync_interval != old.resync_interval and self.dataplane is not None:
            self.dataplane.set_resync_interval(new.resync_interval)
        self.host_mtu = None
        if new.mtu_iface_pattern:
            try:
                links = await asyncio.to_thread(read_interfaces, self.config.netns)
                self.host_mtu = host_mtu([(i.name, i.mtu, i.up) for i in links], new.mtu_iface_pattern)
            except OSError as exc:
                self.log.warning("agent.mtu_iface_pattern_failed", error=str(exc)[:200])
        self.encap = with_host_mtu(new.encap, self.host_mtu)
        self.graph.set_encap(self.encap)  # the watch loop flushes the graph right after
        if new.metrics != old.metrics:
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            self.metrics_server = await start_metrics(self, new.metrics)
        for line in new.ignored:
            if line not in self._felix_reported:
                self.log.warning("agent.felix_config_not_honoured", problem=line)
        self._felix_reported = set(new.ignored)
        if new != old:
            self.log.info("agent.felix_config", **{k: v for k, v in describe(new).items() if k != "not_honoured"})

    def rule_refs(self) -> Any:
        """The compiled policy model's rule id -> RuleRef map (what the dataplane applies), or None."""
        return self.dataplane.rule_refs if self.dataplane is not None else None

    # -- readiness -----------------------------------------------------------------------------
    def not_ready_reason(self) -> str:
        if self.detected is None and self.config.ip != "none":
            return f"waiting for the node address ({self.config.autodetect.describe()})"
        if self.detected6 is None and self.config.ip6 != "none":
            return f"waiting for the node's IPv6 address (IP6={self.config.ip6}, {self.config.autodetect6.describe()})"
        if not self.model.synced:
            return "waiting for the first datastore snapshot (is etcd reachable?)"
        if not self.watch_health.fresh:
            return f"its datastore view is stale ({self.watch_health.reason})"
        if self.dataplane is None or not self.dataplane.started:
            return "dataplane not started"
        return ""

    async def handle(self, req: Request) -> dict[str, Any]:
        if req.command == "BGP_STATUS":
            return self.bgp_status()
        start, code = time.monotonic(), None
        try:
            return await self.handlers.handle(req)
        except CNIError as exc:
            code = exc.code
            raise
        except Exception:
            code = INTERNAL
            raise
        finally:
            self.metrics.observe_cni(req.command, time.monotonic() - start, code)

    def bgp_status(self) -> dict[str, Any]:
        """Sessions, counters and metrics for `tabbyctl node status` (answered before readiness too)."""
        out = disabled_status(self.config.networking_backend) if self.bgp is None else self.bgp.status()
        out["node"] = self.config.nodename
        out["invalid_resources"] = self.model.invalid_report()
        out["felix_configuration"] = describe(self.felix)
        out["felix_configuration"]["tunnels_off"] = self.graph.tunnels.suppressed()
        out["felix_configuration"]["host_mtu"] = self.host_mtu
        if self.dataplane is not None:
            st = self.dataplane.stats
            out["dataplane"] = {"apply_phases": st.apply_phases, "fast_applies": st.fast_applies,
                                "full_resyncs": st.full_resyncs, "link_resyncs": st.link_resyncs,
                                "resync_reasons": dict(st.resync_reasons), "policy_applies": st.policy_applies,
                                "foreign_nft_commits": st.foreign_nft_commits,
                                "policy_refresh_skipped": st.policy_refresh_skipped}
        ready, reasons = readiness(self)
        out["ready"] = ready
        out["not_ready_reason"] = "; ".join(reasons)
        out["not_ready_reasons"] = reasons
        return out

    def _watch_health_changed(self, health: WatchHealth) -> None:
        if health.fresh:
            self.log.info("agent.datastore_fresh", stale_count=health.stale_count)
        elif self.model.synced:
            self.log.warning("agent.datastore_stale", reason=health.reason, cni="ADD answers code 11 until fresh")

    # -- derived state ---------------------------------------------------------------------------
    @property
    def local_ip(self) -> str | None:
        return self.detected.address if self.detected else None

    @property
    def local_ip6(self) -> str | None:
        """The node's IPv6 address in CIDR form (IP6 / IP6_AUTODETECTION_METHOD), None when IP6 is none."""
        return self.detected6.address if self.detected6 else None

    @property
    def interface(self) -> str:
        return self.detected.interface if self.detected else ""

    def pod_mtu(self) -> int:
        nic = self.host_mtu or (self.detected.mtu if self.detected else 1500)
        return pod_mtu(nic, self.graph.tunnels.programmed(), self.config.mtu, self.encap.mtus())

    # -- the model's consumers -------------------------------------------------------------------
    def ipam_pools(self) -> list[Pool] | None:
        """IPAM's pools: the model's validated IPPools (None before the first snapshot: IPAM reads etcd)."""
        if not self.model.synced:
            return None
        if self._ipam_pools is None:
            self._ipam_pools = [Pool.from_ippool(p) for p in self.model.pools()]
        return self._ipam_pools

    def _ipam_pool_filter(self, key: str, raw: bytes) -> Pool | None:
        """IPAM's fresh read of the pools goes through the same validation filter (last good version kept)."""
        obj = self.model.filter(key, raw)
        return Pool.from_ippool(obj) if isinstance(obj, IPPool) else None

    def _bgp_inputs_changed(self) -> None:
        if self.bgp is not None and self.bgp.started:
            self.bgp.mark_dirty()

    def _learned_changed(self) -> None:
        """BGP's best routes changed: they are an input of the route calculation like any other."""
        assert self.bgp is not None
        self.graph.routes.update_learned(self.bgp.take_learned_changes())
        if self.dataplane is not None:
            self.dataplane.send(self.graph.flush())

    async def local_workload_added(self, key: str, container_id: str, ips: Iterable[str],
                                   interface: str, wep: WorkloadEndpoint | None = None,
                                   device: WorkloadSpec | None = None) -> ApplyResult | None:
        """A pod CNI is adding: a WorkloadEndpoint input of the graph before etcd echoes it; its
        device (``device``: made by the workload manager), its policy and its routes go through the
        fast lane in that order (applied at once; returns when all are in the kernel: the pod is
        enforced before ADD returns). A device error is raised (the CNI request's error)."""
        ips = list(ips)
        self.graph.routes.local_add(key, container_id, ips, interface)
        if wep is not None:
            self.graph.policy.local_add(key, wep)
            self.flow_peers.set(key, wep)
        assert self.dataplane is not None
        messages: list[Message] = [WorkloadDeviceUpdate(interface, device)] if device is not None else []
        messages += self.graph.flush()
        # The endpoint is written with the allocation, before the veth exists, so its etcd echo may
        # have reached the graph first: then this flush holds no update for the pod, and a throttled
        # write of its route may have failed for want of the device, or gone with a half-done ADD's
        # veth that this ADD replaced (the kernel drops a deleted device's routes without telling
        # anyone). So the fast lane always carries the pod's own routes, written unconditionally.
        have = {m.dst for m in messages if isinstance(m, RouteUpdate)}
        for ip in ips:
            dst = str(ipaddress.ip_network(ip))  # the resolver's key: "10.0.0.5/32", normalised v6
            route = self.graph.routes.resolver.route_for(dst)
            if dst not in have and route is not None:
                messages.append(RouteUpdate(dst, route))
        return await self.dataplane.apply_fast(messages, force=True)

    async def local_workload_removed(self, keys: Iterable[str], interfaces: Iterable[str],
                                     devices: Iterable[str] = ()) -> ApplyResult | None:
        """CNI DEL (or a failed ADD undone): the workload leaves the graph at once, fast lane; the
        ``devices`` named are deleted by the workload manager first (their routes go with them)."""
        keys, interfaces = list(keys), list(interfaces)
        self.graph.routes.local_remove(keys, interfaces)
        self.graph.policy.local_remove(set(keys), set(interfaces))
        if self.dataplane is None:
            return None
        messages: list[Message] = [WorkloadDeviceUpdate(name, None) for name in devices]
        return await self.dataplane.apply_fast(messages + self.graph.flush())

    # -- main ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        gc_tuning.watch_pauses()
        gc_tuning.hold_during_start()
        await self.api.start()
        self.metrics_server = await start_metrics(self, self.felix.metrics)
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
        await self.flows.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
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
        if self.config.ip6 != "none":
            self.detected6 = await self.detect(version=6)
        try:
            await ensure_cluster_information(self.ds)
        except DatastoreError as exc:  # etcd away at start: registration's own retries wait for it
            self.log.warning("agent.cluster_info_skipped", error=str(exc))
        await self.flows.start()
        await self.register()
        self.graph.set_local_node(self.local_ip, self.interface, self.local_ip6)
        # Liveness lease for the cluster controller (controller/node/liveness.py).
        self.liveness = LeaseKeeper(self.config.etcd, self.config.nodename, liveness_ttl())
        self._tasks.append(asyncio.create_task(self.liveness.run(), name="agent-liveness"))
        # CalicoNodeStatus objects naming this node get their status filled (controller/node/nodestatus.py).
        self._tasks.append(asyncio.create_task(NodeStatusReporter(self).run(), name="agent-nodestatus"))
        if self.bgp is not None:
            await asyncio.to_thread(self.bgp.capture_kernel_routes, self.interface)
            self.graph.routes.set_learned(self.bgp.learned_routes())  # the provisional routes
            self.bgp.take_learned_changes()  # all in: later changes go prefix by prefix
        self.dataplane = Dataplane(self.config.netns, resync_interval=self.felix.resync_interval,
                                   node=self.config.nodename, flow_logs=self.config.flow_logs)
        self.dataplane.observers.append(self.metrics.observe_apply)
        self.dataplane.start()
        self._tasks.append(asyncio.create_task(self._tunnels(), name="agent-tunnels"))
        await self._watch()

    # -- address detection ------------------------------------------------------------------------
    async def detect(self, version: int = 4) -> Detected:
        """The node's address and NIC; waits (unbounded, logging each minute) until it exists.
        ``version`` 6: the IPv6 address from IP6 / IP6_AUTODETECTION_METHOD."""
        cfg = self.config
        static = cfg.static_ip6 if version == 6 else cfg.static_ip
        method = cfg.autodetect6 if version == 6 else cfg.autodetect
        last_log = 0.0
        delay = 0.1
        while True:
            try:
                interfaces = await asyncio.to_thread(read_interfaces, cfg.netns)
                found: Detected | None
                if static:
                    itf = interface_holding(static, interfaces, version)
                    found = Detected(itf.name, static, itf.mtu) if itf else None
                else:
                    src = None
                    if method.kind == "can-reach":
                        src = await asyncio.to_thread(route_source, cfg.netns, method.args[0])
                    found = select(method, interfaces, route_source=src, version=version)
            except OSError as exc:
                found = None
                self.log.warning("agent.detect_failed", error=str(exc))
            if found is not None:
                self.log.info("agent.address", ip=found.address, interface=found.interface, mtu=found.mtu,
                              family=f"ipv{version}")
                return found
            now = time.monotonic()
            if now - last_log >= DETECT_LOG_EVERY:
                last_log = now
                self.log.warning("agent.address_missing", ip=cfg.ip6 if version == 6 else cfg.ip,
                                 autodetect=method.describe(),
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
                current = await staged.get_for_update(self.ds, key)
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
            except Conflict:  # a large apply holds the Node staged: read again once it lands
                delay = 0.05
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
            if self.detected6 is not None:
                bgp["ipv6Address"] = self.detected6.address
            if cfg.as_number is not None:
                bgp["asNumber"] = cfg.as_number
            if bgp:
                spec["bgp"] = bgp
            meta = doc.setdefault("metadata", {})
            annotations = dict(meta.get("annotations") or {})
            if self.flows.port and self.detected is not None:
                host = self.detected.address.split("/")[0]
                annotations[ANNOTATION] = f"[{host}]:{self.flows.port}" if ":" in host else \
                    f"{host}:{self.flows.port}"
            else:
                annotations.pop(ANNOTATION, None)
            if annotations:
                meta["annotations"] = annotations
            else:
                meta.pop("annotations", None)

        await self.update_node(mutate, "registration")
        self._registered = True

    def datastore_locked(self) -> bool:
        """``tabbyctl datastore migrate lock`` holds (ClusterInformation datastoreReady false, as the watch
        last saw it): no IPAM writes -- no pod addresses, no tunnel addresses -- until unlock."""
        info = self.model.get(resource_key("clusterinformations", "default"))
        return info is not None and info.spec.datastoreReady is False

    async def _tunnels(self) -> None:
        """Allocate (or give back) the IPIP/VXLAN tunnel addresses the pools ask for."""
        deferred = False
        while True:
            await self._tunnel_dirty.wait()
            if self.datastore_locked():
                # Calico's lock: an IPAM-leak report must stay true while it is acted on. Look again
                # each second; the change that asked for this runs once the datastore is unlocked.
                if not deferred:
                    self.log.info("agent.tunnel_ipam_deferred", reason="datastore locked (datastore migrate lock)")
                deferred = True
                await asyncio.sleep(1)
                continue
            deferred = False
            self._tunnel_dirty.clear()
            try:
                await self.ensure_tunnels()
            except Exception as exc:
                self.log.warning("agent.tunnel_address_failed", error=str(exc)[:200])
                await asyncio.sleep(2)
                self._tunnel_dirty.set()

    async def ensure_tunnels(self) -> None:
        encaps = self.graph.tunnels.encapsulations()
        node = self.config.nodename
        result: dict[str, str | None] = {}
        for kind in ("ipip", "vxlan"):
            if kind in encaps:
                result[kind] = await asyncio.wait_for(self.ipam.assign_tunnel_address(node=node, kind=kind), 30)
            else:
                result[kind] = None
                mine = self.model.node(node)
                spec = mine.spec if mine is not None else None
                has = None
                if spec is not None:
                    has = (spec.bgp.ipv4IPIPTunnelAddr if spec.bgp else None) if kind == "ipip" else \
                        spec.ipv4VXLANTunnelAddr
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

    # -- watch ----------------------------------------------------------------------------------
    async def _watch(self) -> None:
        own_key = resource_key("nodes", self.config.nodename)
        assert self.dataplane is not None
        # Handles and guards: many keys the dataplane never reads (skipped in the list and the events).
        async for item in watch_prefix(self.watch_ds, "", health=self.watch_health, skip=(HANDLES, GUARDS)):
            if isinstance(item, WatchResync):  # the benchmarks time cold start from here
                self.log.info("agent.snapshot_received", revision=item.revision, keys=len(item.kvs))
            # a resync's values are validated in a worker thread: the CNI socket keeps answering meanwhile
            pre = await asyncio.to_thread(self.model.prevalidate, item.kvs) if isinstance(item, WatchResync) else None
            updates = self.model.apply(item, pre)
            self.graph.apply(updates)
            if isinstance(item, WatchResync) or any(u.kind == FelixConfiguration.KIND for u in updates):
                await self.apply_felix_configuration()
            if any(u.kind == IPPool.KIND for u in updates):
                self._ipam_pools = None
                self._tunnel_dirty.set()
            messages = self.graph.flush()
            if isinstance(item, WatchResync):
                self.log.info("agent.snapshot", revision=item.revision, changes=len(updates), **counts(self.model))
                if not self.dataplane.started:
                    self.dataplane.send([*messages, InSync()])
                    await self.dataplane.wait_synced()
                    self.ready.set()
                    self.log.info("agent.ready", backend=self.config.networking_backend)
                    gc_tuning.freeze_startup_heap()
                    if self.bgp is not None:
                        await self.bgp.start()
                else:
                    self.dataplane.send(messages)
                    if self.bgp is not None and self.bgp.started:
                        self.bgp.mark_dirty()
                self._tunnel_dirty.set()
                continue
            self.dataplane.send(messages)
            if self._registered and any(u.key == own_key and u.new is None for u in updates):
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
