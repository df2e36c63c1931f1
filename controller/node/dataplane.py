"""Dataplane managers behind the message boundary, applied on their own thread.

Why a thread with an apply phase (Felix's ``int_dataplane``): netlink and ``nft`` writes can be
slow (a loaded kernel, a 10k-route resync); on the agent's event loop they would stall BGP
keepalives and the CNI socket. The calculation graph (controller/node/graph.py) sends typed
messages (controller/node/messages.py); this thread owns every kernel object and:

* buffers datastore-driven messages and applies them in one apply phase, at most every
  ``throttle`` seconds, and only once in sync (after :class:`~controller.node.messages.InSync`:
  nothing is written before the first complete snapshot);
* applies a CNI ADD/DEL's messages at once (:meth:`Dataplane.apply_fast`, the fast lane: the
  pod's device by the workload manager, then its policy, then one netlink batch for its routes);
  ADD awaits it, so the pod's veth, policy and /32 are in the kernel when ADD returns. Devices of
  requests queued together (a burst) are made in parallel. The throttle governs datastore-driven
  updates only;
* order within an apply phase: tunnel devices (VXLAN, IPIP), NAT, then routes (routes through
  ``vxlan.tabby``/``tunl0`` need the device); a re-created VXLAN device triggers a route resync;
* full route resync at start (adopting what a previous agent left: an unchanged set costs zero
  writes), 1 s after a failure, every ``resync_interval`` (Felix's routeRefreshInterval, which also
  re-applies tunnels and NAT), when the kernel diverges (a route deleted by hand), and within
  milliseconds when a link comes (back) up or an address is added (the link monitor: a link that
  went down lost its IPv4 routes without a route notification).

The dataplane is never flushed: not when etcd goes away, not on SIGTERM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from controller.node.messages import (
    InSync,
    IPIPUpdate,
    Message,
    NATUpdate,
    PolicyUpdate,
    RouteUpdate,
    VTEPUpdate,
    VXLANUpdate,
    WorkloadDeviceUpdate,
)
from felix_like.forward import ForwardAccepts
from felix_like.ipip import IPIPManager
from felix_like.nat import NATManager
from felix_like.netlink import LinkMonitor, Route, RouteOp
from felix_like.nft_monitor import NFPROTO_INET, CommitMonitor, ForeignCommit, name_this_thread
from felix_like.policy import TABLE as POLICY_TABLE
from felix_like.policy import PolicyManager, PolicyState
from felix_like.policy_ids import RuleRef
from felix_like.route_programmer import ApplyResult, RouteProgrammer
from felix_like.vxlan import RemoteVTEP, VTEPSet, VXLANManager
from felix_like.workload import WorkloadManager

log = structlog.get_logger("tabby.node.dataplane")

THROTTLE = 0.02
RETRY_AFTER_FAILURE = 1.0
RETRY_MAX = 30.0
"""A failure that the next resync does not fix is retried with doubling delays up to this: retrying
every second dumped and compared the whole table each time. (A route another program holds, EEXIST,
is not retried at all: it waits for that route's deletion, see Dataplane._held_by_foreign.)"""
RETRY_AFTER_LINK = 0.2
KERNEL_DEBOUNCE = 0.05


@dataclass
class Stats:
    """Counters of the apply loop (status, benchmarks, tests)."""

    apply_phases: int = 0
    fast_applies: int = 0
    device_applies: int = 0
    full_resyncs: int = 0
    link_resyncs: int = 0
    policy_applies: int = 0
    #: nf_tables commits by anyone but this dataplane in the node's namespace (felix_like.nft_monitor),
    #: and the periodic policy rebuilds skipped because there was none.
    foreign_nft_commits: int = 0
    policy_refresh_skipped: int = 0
    last_apply_at: float = 0.0
    last_result: ApplyResult | None = None
    resync_reasons: dict[str, int] = field(default_factory=dict)


class TunnelManagers:
    """VXLAN, IPIP, NAT and FORWARD-accept managers of one namespace; each applies the last message it got.

    VXLAN is incremental: remote VTEPs arrive one node at a time (:class:`VTEPUpdate`) and are
    applied as that node's entries; the full reconcile (a dump of the device's neighbours and FDB)
    runs only when the local VTEP changed, at the first sync, at the periodic resync, and after a
    failure (``vxlan_full``).
    """

    def __init__(self, netns: str | None, node: str) -> None:
        self.node = node
        self.vxlan = VXLANManager(netns)
        self.ipip = IPIPManager(netns)
        self.nat = NATManager(netns)
        self.forward = ForwardAccepts(netns)
        self.vxlan_msg: VXLANUpdate | None = None
        self.vteps = VTEPSet()
        self.vtep_changes: dict[str, RemoteVTEP | None] = {}  # node -> its VTEP as last applied
        self.vxlan_full = True
        self.ipip_msg: IPIPUpdate | None = None
        self.nat_msg: NATUpdate | None = None
        self._vxlan_on = False
        self._nat_on = False

    def set_local(self, msg: VXLANUpdate) -> None:
        if self.vxlan_msg is None or self.vxlan_msg.local != msg.local:
            self.vxlan_full = True
        self.vxlan_msg = msg

    def set_vtep(self, msg: VTEPUpdate) -> None:
        old = self.vteps.set(msg.node, msg.vtep)
        self.vtep_changes.setdefault(msg.node, old)

    def apply(self) -> bool:
        """One pass over the managers (blocking; the dataplane thread). True: routes must be resynced."""
        resync = False
        vx = self.vxlan_msg
        if vx is not None and vx.local is not None:
            if self.vxlan_full or not self._vxlan_on:
                res = self.vxlan.apply(vx.local, self.vteps.values())
            elif self.vtep_changes:
                res = self.vxlan.apply_changes(vx.local, self.vteps, self.vtep_changes)
            else:
                res = None
            self.vtep_changes = {}
            self._vxlan_on = True
            if res is not None:
                self.vxlan_full = bool(res.error)  # a failure: the next pass reconciles everything
                resync = bool(res.recreated)
                if res.error:
                    log.warning("tunnels.vxlan_failed", node=self.node, error=res.error)
        elif self._vxlan_on:
            self.vxlan.remove()
            self._vxlan_on = False
            self.vxlan_full = True
            self.vtep_changes = {}
        else:
            self.vtep_changes = {}
        if self.ipip_msg is not None and self.ipip_msg.config is not None:
            ires = self.ipip.apply(self.ipip_msg.config)
            if ires.error:
                log.warning("tunnels.ipip_failed", node=self.node, error=ires.error)
        nat = self.nat_msg
        if nat is not None and (nat.wanted or self._nat_on):
            nres = self.nat.apply(list(nat.pools))
            self._nat_on = True
            if nres.error:
                log.warning("tunnels.nat_failed", node=self.node, error=nres.error)
        # A FORWARD policy DROP in another base chain (Docker's) would drop pod traffic: accept ours there.
        self.forward.apply()
        return resync


class Dataplane:
    """The managers of one node namespace and the thread that applies their messages."""

    def __init__(self, netns: str | None, *, resync_interval: float = 90.0, node: str = "",
                 throttle: float = THROTTLE, flow_logs: bool = True) -> None:
        self.netns = netns
        self.flow_logs = flow_logs
        self.resync_interval = resync_interval
        self._resync_rearm = False
        self.throttle = throttle
        self.node = node
        self.stats = Stats()
        self._log = log.bind(node=node)
        self._lock = threading.Lock()
        self._inbox: list[Message] = []
        self._fast: list[tuple[list[WorkloadDeviceUpdate], list[RouteUpdate], list[PolicyUpdate], bool,
                               concurrent.futures.Future[ApplyResult | None]]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._sync_future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        # owned by the thread only:
        self.programmer: RouteProgrammer | None = None
        self.workloads = WorkloadManager(netns)
        self._tunnels: TunnelManagers | None = None
        self._routes: dict[str, Route] = {}  # dst -> desired route
        self._pending_routes: dict[str, Route | None] = {}
        self._tunnels_dirty = False
        self.policy: PolicyManager | None = None
        self._policy = PolicyState()
        self._policy_dirty = False
        self._nft_monitor: CommitMonitor | None = None
        self._nft_foreign = False  # a foreign nf_tables commit since the last policy rebuild
        self._policy_table_handle: int | None = None  # the kernel's handle of the table we last rebuilt
        self._in_sync = False
        self._retry_needed = False
        self._retry_delay = RETRY_AFTER_FAILURE  # doubles while retries keep failing, reset on success
        # Routes the kernel refused for want of their device (ENODEV): a pod's endpoint reaches the graph
        # through etcd before CNI made its veth. Written when the device appears (the link monitor), not
        # by a full resync 1 s later: that was O(all routes) per pod. ifname -> dst -> route.
        self._no_device: dict[str, dict[str, Route]] = {}
        #: Routes refused with EEXIST (another program's route holds the key, e.g. FRR's default
        #: route redistributed onto a node that has its own): written when a deletion under that
        #: destination is seen, and tried again by every periodic resync; one retry resync at the first
        #: refusal, then none (each dumped and compared the whole table: most of the agent's CPU at
        #: 10,000 BGP routes).
        self._held_by_foreign: dict[str, Route] = {}
        #: Called with every ApplyResult, on the dataplane thread (the metrics' apply histograms).
        self.observers: list[Callable[[ApplyResult], None]] = []

    # -- the agent's side (event loop) ---------------------------------------------------------------
    @property
    def started(self) -> bool:
        """True once the first full resync after the first complete snapshot is done."""
        return self._synced.is_set()

    def start(self) -> None:
        """Start the thread; it applies nothing until :class:`InSync` arrives."""
        self._thread = threading.Thread(target=self._run, name=f"dataplane-{self.node}", daemon=True)
        self._thread.start()

    async def wait_synced(self) -> None:
        await asyncio.wrap_future(self._sync_future)

    def send(self, messages: Iterable[Message]) -> None:
        """Datastore-driven messages: buffered, applied in the next (throttled) apply phase."""
        messages = list(messages)
        if not messages:
            return
        with self._lock:
            self._inbox.extend(messages)
        self._wake()

    async def apply_fast(self, messages: Iterable[Message], *, force: bool = False) -> ApplyResult | None:
        """The fast lane (CNI ADD/DEL): workload devices, then policy, then route updates in one netlink
        batch, at once; other messages go to the normal buffer. Returns when all of it is in the kernel
        (or raises what failed: a device error is the CNI request's error). ``force``: write the routes
        even where the programmer's cache says they are there (see RouteProgrammer.apply_changes)."""
        devices: list[WorkloadDeviceUpdate] = []
        routes: list[RouteUpdate] = []
        policies: list[PolicyUpdate] = []
        rest: list[Message] = []
        for msg in messages:
            if isinstance(msg, WorkloadDeviceUpdate):
                devices.append(msg)
            elif isinstance(msg, RouteUpdate):
                routes.append(msg)
            elif isinstance(msg, PolicyUpdate):
                policies.append(msg)  # the pod is enforced before its route exists and ADD returns
            else:
                rest.append(msg)
        self.send(rest)
        if not devices and not routes and not policies:
            return None
        future: concurrent.futures.Future[ApplyResult | None] = concurrent.futures.Future()
        with self._lock:
            self._fast.append((devices, routes, policies, force, future))
        self._wake()
        return await asyncio.wrap_future(future)

    def has_route(self, dst: str) -> bool:
        """Is a route of ours for ``dst`` in the kernel (as of the last write or dump)? A dict lookup,
        safe from the event loop while the thread writes (no iteration, no copy: O(1))."""
        programmer = self.programmer
        return programmer is not None and programmer.has_key(dst)

    async def stop(self) -> None:
        """Stop applying; every route stays in the kernel (the next agent adopts them)."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        with self._lock:
            fast, self._fast = self._fast, []
        for *_, future in fast:
            if not future.done():
                future.set_exception(RuntimeError("the dataplane stopped"))
        self._wake_r.close()
        self._wake_w.close()

    def set_resync_interval(self, seconds: float) -> None:
        """routeRefreshInterval changed (FelixConfiguration): re-arm the periodic resync now
        (``math.inf`` = off)."""
        if seconds != self.resync_interval:
            self.resync_interval = seconds
            self._resync_rearm = True
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            name_this_thread()  # the name NEWGEN reports for our commits: anything else is foreign
        except OSError as exc:
            self._log.warning("dataplane.thread_name_failed", error=str(exc))
        try:
            self.programmer = RouteProgrammer(self.netns)
            self._tunnels = TunnelManagers(self.netns, self.node)
            self.policy = PolicyManager(self.netns, flow_logs=self.flow_logs)
            route_mon = self.programmer.monitor()
            link_mon = LinkMonitor(self.netns)
            try:
                self._nft_monitor = CommitMonitor(self.netns)
            except OSError as exc:  # then the policy table is rebuilt at every periodic refresh
                self._log.warning("dataplane.nft_monitor_unavailable", error=str(exc))
        except Exception as exc:
            self._log.exception("dataplane.start_failed")
            if not self._sync_future.done():
                self._sync_future.set_exception(exc)
            return
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sel.register(route_mon.fileno(), selectors.EVENT_READ, "routes")
        sel.register(link_mon.fileno(), selectors.EVENT_READ, "links")
        if self._nft_monitor is not None:
            sel.register(self._nft_monitor.fileno(), selectors.EVENT_READ, "nft")
        next_periodic = time.monotonic() + self.resync_interval
        resync_at: float | None = None  # a full route resync is due at this time
        resync_reason = ""
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                deadlines = [next_periodic]
                if resync_at is not None:
                    deadlines.append(resync_at)
                if self._in_sync and (self._pending_routes or self._tunnels_dirty or self._policy_dirty):
                    deadlines.append(self.stats.last_apply_at + self.throttle)
                timeout = min(max(0.0, min(deadlines) - now), 60.0)  # periodic may be off (inf)
                for key, _ in sel.select(timeout):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                    elif key.data == "nft":
                        self._foreign_commits()
                    elif key.data == "routes":
                        route_mon.set_ifnames(self.programmer.ifnames)
                        events, overflowed = route_mon.read_events()
                        if self._held_by_foreign:
                            self._foreign_routes_gone([e.route.dst for e in events if e.kind == "del"
                                                       and e.table == self.programmer.table])
                        if self._in_sync and (overflowed or any(self.programmer.diverges(e) for e in events)):
                            resync_at = min(resync_at or now + KERNEL_DEBOUNCE, now + KERNEL_DEBOUNCE)
                            resync_reason = resync_reason or "kernel_changed"
                    else:
                        up, addr_added, overflowed = link_mon.read_changes()
                        self._devices_appeared(link_mon.take_appeared())
                        if self._in_sync and (up or addr_added or overflowed):
                            self.stats.link_resyncs += 1
                            resync_at = min(resync_at or now + KERNEL_DEBOUNCE, now + KERNEL_DEBOUNCE)
                            resync_reason = "link_up" if up else "address_added"
                            self._log.info("dataplane.link_change", links_up=up, address_added=addr_added)
                if self._stop.is_set():
                    break
                self._take_inbox()
                self._run_fast()
                if self._resync_rearm:
                    self._resync_rearm = False
                    next_periodic = time.monotonic() + self.resync_interval
                if not self._in_sync:
                    continue
                now = time.monotonic()
                if now >= next_periodic:
                    next_periodic = now + self.resync_interval
                    self._tunnels_dirty = True
                    if self._tunnels is not None:
                        self._tunnels.vxlan_full = True  # hand edits and drift: the full reconcile
                    if self._nft_monitor is None or self._nft_foreign:
                        self._policy_resync("periodic")  # someone else committed: drift is possible
                    else:
                        self.stats.policy_refresh_skipped += 1
                    resync_at, resync_reason = now, "periodic"
                due = now >= self.stats.last_apply_at + self.throttle
                if (self._pending_routes or self._tunnels_dirty or self._policy_dirty) and due \
                        and self._apply_phase():
                    resync_at, resync_reason = now, resync_reason or "device_recreated"
                if resync_at is not None and now >= resync_at:
                    reason = resync_reason or "retry"
                    resync_at, resync_reason = None, ""
                    self._retry_needed = False
                    if not self._full_resync(reason):
                        # right after a link came up its connected route may lag: retry soon, then slower
                        soon = reason in ("link_up", "address_added")
                        if reason == "retry":
                            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
                        resync_at = time.monotonic() + (RETRY_AFTER_LINK if soon else self._retry_delay)
                        resync_reason = "link_retry" if soon else "retry"
                    else:
                        self._retry_delay = RETRY_AFTER_FAILURE
                if self._retry_needed and resync_at is None:
                    resync_at, resync_reason = time.monotonic() + self._retry_delay, "retry"
                self._retry_needed = False
        finally:
            sel.close()
            route_mon.close()
            link_mon.close()
            if self._nft_monitor is not None:
                self._nft_monitor.close()
            self.programmer.close()  # leaves every route in place

    def _take_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for msg in inbox:
            if isinstance(msg, RouteUpdate):
                self._pending_routes[msg.dst] = msg.route
            elif isinstance(msg, VXLANUpdate):
                assert self._tunnels is not None
                self._tunnels.set_local(msg)
                self._tunnels_dirty = True
            elif isinstance(msg, VTEPUpdate):
                assert self._tunnels is not None
                self._tunnels.set_vtep(msg)
                self._tunnels_dirty = True
            elif isinstance(msg, IPIPUpdate):
                assert self._tunnels is not None
                self._tunnels.ipip_msg = msg
                self._tunnels_dirty = True
            elif isinstance(msg, NATUpdate):
                assert self._tunnels is not None
                self._tunnels.nat_msg = msg
                self._tunnels_dirty = True
            elif isinstance(msg, PolicyUpdate):
                self._policy.fold(msg.sets, msg.chains, msg.interfaces, msg.chain_refs)
                self._policy_dirty = True
            elif isinstance(msg, InSync) and not self._in_sync:
                self._first_sync()

    def _first_sync(self) -> None:
        """Tunnel devices first, then the first full route resync (adopting a predecessor's routes)."""
        assert self._tunnels is not None
        with contextlib.suppress(Exception):
            self._tunnels.apply()
        self._tunnels_dirty = False
        self._policy_resync("start")  # before routes: a pod is never reachable unpoliced
        self._fold_pending()
        ok = self._full_resync("start")
        self._in_sync = True
        self._synced.set()
        if not self._sync_future.done():
            self._sync_future.set_result(None)
        if not ok:
            self._retry_needed = True

    def _fold_pending(self) -> tuple[list[Route], list[Route]]:
        upserts, removes = self._fold_routes(self._pending_routes)
        self._pending_routes.clear()
        return upserts, removes

    def _fold_routes(self, changes: dict[str, Route | None]) -> tuple[list[Route], list[Route]]:
        """Fold route changes (dst -> route, None = gone) into the desired table; what to write and what to
        remove (a route whose key changed is removed and written anew)."""
        upserts: list[Route] = []
        removes: list[Route] = []
        for dst, route in changes.items():
            old = self._routes.get(dst)
            if route is None:
                if old is not None:
                    removes.append(old)
                    del self._routes[dst]
            else:
                if old is not None and old.key != route.key:
                    removes.append(old)
                self._routes[dst] = route
                upserts.append(route)
        return upserts, removes

    def _run_fast(self) -> None:
        with self._lock:
            fast, self._fast = self._fast, []
        if not fast:
            return
        assert self.programmer is not None
        # The devices of every request queued now, in parallel (a burst of pods); a request whose
        # device failed gets that error and nothing else of it is written.
        flat = [(i, d) for i, (devices, *_rest) in enumerate(fast) for d in devices]
        failed: dict[int, BaseException] = {}
        if flat:
            errors = self.workloads.apply([(d.host_ifname, d.spec) for _, d in flat])
            self.stats.device_applies += 1
            for (i, _), err in zip(flat, errors, strict=True):
                if err is not None:
                    failed.setdefault(i, err)
        # Then, for all of them together (a burst costs one policy transaction and one route batch, not
        # one of each per pod): policy before routes, so a pod is never reachable unpoliced.
        live: list[tuple[list[RouteUpdate], list[PolicyUpdate], bool, concurrent.futures.Future[ApplyResult | None]]]
        live = []
        for i, (_devices, updates, policies, force, future) in enumerate(fast):
            if i in failed:
                future.set_exception(failed[i])
            elif not updates and not policies:
                future.set_result(None)
            else:
                live.append((updates, policies, force, future))
        if not live:
            return
        any_policy = False
        for _updates, policies, _force, _future in live:
            for pol in policies:
                self._policy.fold(pol.sets, pol.chains, pol.interfaces, pol.chain_refs)
                any_policy = True
        # also what the throttled buffer holds: the pod's endpoint may have reached the graph through
        # the watch echo first (the allocation transaction wrote it), its update then waits there
        if (any_policy or self._policy_dirty) and self._in_sync:
            self._policy_dirty = False
            try:
                self._policy_apply()
            except Exception as exc:
                self._log.exception("dataplane.fast_policy_failed")
                self._policy_dirty = True
                self._retry_needed = True
                for *_, future in live:
                    future.set_exception(exc)
                return
        final: dict[str, Route | None] = {}  # in request order: the later request's update wins, as applied one by one
        for updates, *_ in live:
            for upd in updates:
                self._pending_routes.pop(upd.dst, None)  # the fast update is the graph's latest for dst
                final[upd.dst] = upd.route
        upserts, removes = self._fold_routes(final)
        try:
            if not self._in_sync:
                result = ApplyResult("changes")  # not in sync yet: the first resync will carry it
            else:
                result = self.programmer.apply_changes(upserts, removes, force=any(f for _, _, f, _ in live))
                self.stats.fast_applies += 1
                self._after(result)
        except Exception as exc:
            self._log.exception("dataplane.fast_apply_failed")
            for *_, future in live:
                future.set_exception(exc)
            return
        for *_, future in live:
            future.set_result(result)

    def _apply_phase(self) -> bool:
        """One throttled apply of everything buffered. True: a route resync is needed."""
        assert self.programmer is not None and self._tunnels is not None
        self.stats.apply_phases += 1
        self.stats.last_apply_at = time.monotonic()
        resync = False
        if self._tunnels_dirty:
            self._tunnels_dirty = False
            try:
                resync = self._tunnels.apply()
            except Exception:
                self._log.exception("dataplane.tunnels_failed")
                self._tunnels_dirty = True
        if self._policy_dirty:
            self._policy_dirty = False
            try:
                self._policy_apply()
            except Exception:
                self._log.exception("dataplane.policy_failed")
                self._policy_dirty = True
                self._retry_needed = True
        if self._pending_routes:
            upserts, removes = self._fold_pending()
            try:
                self._after(self.programmer.apply_changes(upserts, removes))
            except Exception:
                self._log.exception("dataplane.apply_failed")
                self._retry_needed = True
        return resync

    @property
    def rule_refs(self) -> Mapping[str, RuleRef]:
        """Rule id (the ``tabby:<id>`` NFLOG prefix) -> what the rule stands for, for every id the
        desired policy program carries (kept exact by PolicyState.fold on the dataplane thread; a
        lookup from another thread is safe, iterating is not)."""
        return self._policy.rule_refs

    def _policy_apply(self) -> None:
        assert self.policy is not None
        rebuilds = self.policy.rebuilds
        start = time.monotonic()
        n = self.policy.apply(self._policy.view(), self._policy.take_touched())
        if self.policy.rebuilds != rebuilds:  # the kernel's state was unknown: apply rebuilt the table
            self._remember_policy_table()
        self.stats.policy_applies += 1
        if n:
            self._log.debug("dataplane.policy_applied", commands=n, ms=round((time.monotonic() - start) * 1000, 2))

    def _policy_table_lookup(self) -> tuple[bool, int | None]:
        """(looked up, the kernel's handle of the policy table; None: there is none)."""
        assert self._nft_monitor is not None
        try:
            return True, self._nft_monitor.table_handle(NFPROTO_INET, POLICY_TABLE)
        except OSError as exc:
            self._log.warning("dataplane.nft_monitor_failed", error=str(exc))
            return False, None

    def _remember_policy_table(self) -> None:
        """After our own rebuild: the new table's handle is ours (a different one later is not)."""
        if self._nft_monitor is not None:
            looked_up, handle = self._policy_table_lookup()
            if looked_up:
                self._policy_table_handle = handle

    def _foreign_commits(self) -> None:
        """Someone else committed to nf_tables here: the periodic refresh rebuilds the policy table
        (it may have been edited); a policy table deleted or replaced is rebuilt at once (no policy
        table = no enforcement: fail closed, not one refresh interval later)."""
        assert self._nft_monitor is not None
        try:
            foreign = self._nft_monitor.read()
        except OSError as exc:
            self._log.warning("dataplane.nft_monitor_failed", error=str(exc))
            foreign = [ForeignCommit(0, 0, "")]
        if not foreign:
            return
        self.stats.foreign_nft_commits += len(foreign)
        self._nft_foreign = True
        self._log.debug("dataplane.foreign_nft_commit", count=len(foreign), comm=foreign[-1].comm,
                        pid=foreign[-1].pid, gen=foreign[-1].gen)
        if not self._in_sync or self.policy is None or self._policy_table_handle is None:
            return
        looked_up, handle = self._policy_table_lookup()
        if not looked_up:
            return
        if handle != self._policy_table_handle:
            self._log.warning("dataplane.policy_table_replaced", comm=foreign[-1].comm, pid=foreign[-1].pid,
                              handle=handle)
            self._policy_resync("table_replaced")

    def _policy_resync(self, reason: str) -> None:
        """The whole policy table in one transaction (adopts a predecessor's table atomically)."""
        assert self.policy is not None
        self._policy_dirty = False
        self._nft_foreign = False  # what is committed from here on is ours until the monitor says not
        try:
            self._policy.take_touched()
            # off the commit monitor's group for our own big transaction (felix_like.nft_monitor.quiet)
            with self._nft_monitor.quiet() if self._nft_monitor is not None else contextlib.nullcontext():
                n = self.policy.resync(self._policy.view())
            render_s, nft_s = self.policy.last_resync_s
            self._log.info("dataplane.policy_resync", reason=reason, commands=n, render_s=render_s, nft_s=nft_s)
            self._remember_policy_table()
            if self._nft_monitor is not None and self._nft_monitor.pending:
                self._foreign_commits()  # someone committed while we were off the group: the refresh rebuilds
        except Exception:
            self._log.exception("dataplane.policy_resync_failed", reason=reason)
            self._policy_dirty = True
            self._retry_needed = True

    def _full_resync(self, reason: str) -> bool:
        assert self.programmer is not None
        self.stats.full_resyncs += 1
        self.stats.resync_reasons[reason] = self.stats.resync_reasons.get(reason, 0) + 1
        try:
            result = self.programmer.full_resync(self._routes.values())
        except Exception:
            self._log.exception("dataplane.resync_failed", reason=reason)
            return False
        if reason != "start":
            self._log.info("dataplane.resync", reason=reason, added=result.added, deleted=result.deleted,
                           replaced=result.replaced)
        return self._after(result)

    def _after(self, result: ApplyResult) -> bool:
        """Report ``result``; park the failures a later event will fix (no device yet, a foreign route
        holding the key). True when every failure was parked (nothing for a retry resync to do)."""
        self.stats.last_result = result
        for observe in self.observers:
            try:
                observe(result)
            except Exception:
                self._log.exception("dataplane.observer_failed")
        parked = True
        for failure in result.failures:
            route = failure.route
            if failure.errno == errno.ENODEV and route.oif and not route.nexthops \
                    and failure.op in (RouteOp.ADD, RouteOp.REPLACE):
                self._no_device.setdefault(route.oif, {})[route.dst] = route  # written when the device appears
            elif failure.errno == errno.EEXIST and failure.op == RouteOp.ADD:
                if route.dst not in self._held_by_foreign:
                    # once: a full resync tells a stale view of our own route (it is replaced) from
                    # another program's route (the add fails again, and then it is only held)
                    self._log.warning("dataplane.route_held_by_another", dst=route.dst,
                                      note="written when that route goes, and at each periodic resync")
                    self._retry_needed = True
                    parked = False
                self._held_by_foreign[route.dst] = route
            else:
                self._retry_needed = True
                parked = False
        return parked

    def _foreign_routes_gone(self, dsts: list[str]) -> None:
        """Routes deleted from the kernel: write ours that another program's route held off."""
        routes = [r for d in dsts if (r := self._held_by_foreign.get(d)) is not None and self._routes.get(d) == r]
        if routes and self._in_sync:
            assert self.programmer is not None
            try:
                result = self.programmer.apply_changes(routes, [], force=True)
            except Exception:
                self._log.exception("dataplane.apply_failed")
                self._retry_needed = True
                return
            still = {f.route.dst for f in result.failures}
            for r in routes:  # written: no longer held (still refused: stays held, no new retry)
                if r.dst not in still:
                    self._held_by_foreign.pop(r.dst, None)
            self._after(result)

    def _devices_appeared(self, names: list[str]) -> None:
        """New links: write the routes that were waiting for them (O(their routes), no resync)."""
        if not self._in_sync or not self._no_device:
            return
        assert self.programmer is not None
        routes: list[Route] = []
        for name in names:
            for dst, route in self._no_device.pop(name, {}).items():
                if self._routes.get(dst) == route:  # still wanted
                    routes.append(route)
        if routes:
            try:
                self._after(self.programmer.apply_changes(routes, [], force=True))
            except Exception:
                self._log.exception("dataplane.apply_failed")
                self._retry_needed = True
