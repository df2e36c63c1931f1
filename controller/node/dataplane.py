"""Dataplane managers behind the message boundary, applied on their own thread.

Why a thread with an apply phase (Felix's ``int_dataplane``): netlink and ``nft`` writes can be
slow (a loaded kernel, a 10k-route resync); on the agent's event loop they would stall BGP
keepalives and the CNI socket. The calculation graph (controller/node/graph.py) sends typed
messages (controller/node/messages.py); this thread owns every kernel object and:

* buffers datastore-driven messages and applies them in one apply phase, at most every
  ``throttle`` seconds, and only once in sync (after :class:`~controller.node.messages.InSync`:
  nothing is written before the first complete snapshot);
* applies a CNI ADD/DEL's messages at once (:meth:`Dataplane.apply_fast`, the fast lane: one
  netlink batch for that endpoint's routes); ADD awaits it, so the pod's /32 is in the kernel
  when ADD returns. The throttle governs datastore-driven updates only;
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
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from controller.node.messages import InSync, IPIPUpdate, Message, NATUpdate, PolicyUpdate, RouteUpdate, VXLANUpdate
from felix_like.forward import ForwardAccepts
from felix_like.ipip import IPIPManager
from felix_like.nat import NATManager
from felix_like.netlink import LinkMonitor, Route, RouteMonitor
from felix_like.policy import PolicyManager, PolicyState
from felix_like.route_programmer import ApplyResult, RouteProgrammer
from felix_like.vxlan import VXLANManager

log = structlog.get_logger("tabby.node.dataplane")

THROTTLE = 0.02
RETRY_AFTER_FAILURE = 1.0
RETRY_AFTER_LINK = 0.2
KERNEL_DEBOUNCE = 0.05


@dataclass
class Stats:
    """Counters of the apply loop (status, benchmarks, tests)."""

    apply_phases: int = 0
    fast_applies: int = 0
    full_resyncs: int = 0
    link_resyncs: int = 0
    policy_applies: int = 0
    last_apply_at: float = 0.0
    last_result: ApplyResult | None = None
    resync_reasons: dict[str, int] = field(default_factory=dict)


class TunnelManagers:
    """VXLAN, IPIP, NAT and FORWARD-accept managers of one namespace; each applies the last message it got."""

    def __init__(self, netns: str | None, node: str) -> None:
        self.node = node
        self.vxlan = VXLANManager(netns)
        self.ipip = IPIPManager(netns)
        self.nat = NATManager(netns)
        self.forward = ForwardAccepts(netns)
        self.vxlan_msg: VXLANUpdate | None = None
        self.ipip_msg: IPIPUpdate | None = None
        self.nat_msg: NATUpdate | None = None
        self._vxlan_on = False
        self._nat_on = False

    def apply(self) -> bool:
        """One pass over the three (blocking; the dataplane thread). True: routes must be resynced."""
        resync = False
        vx = self.vxlan_msg
        if vx is not None and vx.local is not None:
            res = self.vxlan.apply(vx.local, list(vx.remotes))
            self._vxlan_on = True
            resync = bool(res.recreated)
            if res.error:
                log.warning("tunnels.vxlan_failed", node=self.node, error=res.error)
        elif self._vxlan_on:
            self.vxlan.remove()
            self._vxlan_on = False
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
                 throttle: float = THROTTLE) -> None:
        self.netns = netns
        self.resync_interval = resync_interval
        self.throttle = throttle
        self.node = node
        self.stats = Stats()
        self._log = log.bind(node=node)
        self._lock = threading.Lock()
        self._inbox: list[Message] = []
        self._fast: list[tuple[list[RouteUpdate], list[PolicyUpdate], bool,
                               concurrent.futures.Future[ApplyResult]]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._sync_future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        # owned by the thread only:
        self.programmer: RouteProgrammer | None = None
        self._tunnels: TunnelManagers | None = None
        self._routes: dict[str, Route] = {}  # dst -> desired route
        self._pending_routes: dict[str, Route | None] = {}
        self._tunnels_dirty = False
        self.policy: PolicyManager | None = None
        self._policy = PolicyState()
        self._policy_dirty = False
        self._in_sync = False
        self._retry_needed = False
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
        """The fast lane (CNI ADD/DEL): route updates applied at once, in one netlink batch; other
        messages go to the normal buffer. Returns when the routes are in the kernel (or failed).
        ``force``: write them even where the programmer's cache says they are there (see
        RouteProgrammer.apply_changes)."""
        routes: list[RouteUpdate] = []
        policies: list[PolicyUpdate] = []
        rest: list[Message] = []
        for msg in messages:
            if isinstance(msg, RouteUpdate):
                routes.append(msg)
            elif isinstance(msg, PolicyUpdate):
                policies.append(msg)  # the pod is enforced before its route exists and ADD returns
            else:
                rest.append(msg)
        self.send(rest)
        if not routes and not policies:
            return None
        future: concurrent.futures.Future[ApplyResult] = concurrent.futures.Future()
        with self._lock:
            self._fast.append((routes, policies, force, future))
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

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.programmer = RouteProgrammer(self.netns)
            self._tunnels = TunnelManagers(self.netns, self.node)
            self.policy = PolicyManager(self.netns)
            route_mon = RouteMonitor(self.netns)
            link_mon = LinkMonitor(self.netns)
        except Exception as exc:
            self._log.exception("dataplane.start_failed")
            if not self._sync_future.done():
                self._sync_future.set_exception(exc)
            return
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sel.register(route_mon.fileno(), selectors.EVENT_READ, "routes")
        sel.register(link_mon.fileno(), selectors.EVENT_READ, "links")
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
                timeout = max(0.0, min(deadlines) - now)
                for key, _ in sel.select(timeout):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                    elif key.data == "routes":
                        route_mon.set_ifnames(self.programmer.ifnames)
                        events, overflowed = route_mon.read_events()
                        if self._in_sync and (overflowed or any(self.programmer.diverges(e) for e in events)):
                            resync_at = min(resync_at or now + KERNEL_DEBOUNCE, now + KERNEL_DEBOUNCE)
                            resync_reason = resync_reason or "kernel_changed"
                    else:
                        up, addr_added, overflowed = link_mon.read_changes()
                        if self._in_sync and (up or addr_added or overflowed):
                            self.stats.link_resyncs += 1
                            resync_at = min(resync_at or now + KERNEL_DEBOUNCE, now + KERNEL_DEBOUNCE)
                            resync_reason = "link_up" if up else "address_added"
                            self._log.info("dataplane.link_change", links_up=up, address_added=addr_added)
                if self._stop.is_set():
                    break
                self._take_inbox()
                self._run_fast()
                if not self._in_sync:
                    continue
                now = time.monotonic()
                if now >= next_periodic:
                    next_periodic = now + self.resync_interval
                    self._tunnels_dirty = True
                    self._policy_resync("periodic")
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
                        resync_at = time.monotonic() + (RETRY_AFTER_LINK if soon else RETRY_AFTER_FAILURE)
                        resync_reason = "link_retry" if soon else "retry"
                if self._retry_needed and resync_at is None:
                    resync_at, resync_reason = time.monotonic() + RETRY_AFTER_FAILURE, "retry"
                self._retry_needed = False
        finally:
            sel.close()
            route_mon.close()
            link_mon.close()
            self.programmer.close()  # leaves every route in place

    def _take_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for msg in inbox:
            if isinstance(msg, RouteUpdate):
                self._pending_routes[msg.dst] = msg.route
            elif isinstance(msg, VXLANUpdate):
                assert self._tunnels is not None
                self._tunnels.vxlan_msg = msg
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
                self._policy.fold(msg.sets, msg.chains, msg.interfaces)
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
        upserts: list[Route] = []
        removes: list[Route] = []
        for dst, route in self._pending_routes.items():
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
        self._pending_routes.clear()
        return upserts, removes

    def _run_fast(self) -> None:
        with self._lock:
            fast, self._fast = self._fast, []
        if not fast:
            return
        assert self.programmer is not None
        for updates, policies, force, future in fast:
            for pol in policies:
                self._policy.fold(pol.sets, pol.chains, pol.interfaces)
            # also what the throttled buffer holds: the pod's endpoint may have reached the graph through
            # the watch echo first (the allocation transaction wrote it), its update then waits there
            if (policies or self._policy_dirty) and self._in_sync:
                self._policy_dirty = False
                try:
                    self._policy_apply()
                except Exception as exc:
                    self._log.exception("dataplane.fast_policy_failed")
                    self._policy_dirty = True
                    self._retry_needed = True
                    future.set_exception(exc)
                    continue
            for upd in updates:
                self._pending_routes.pop(upd.dst, None)  # the fast update is the graph's latest for dst
            upserts, removes = [], []
            for upd in updates:
                old = self._routes.get(upd.dst)
                if upd.route is None:
                    if old is not None:
                        removes.append(old)
                        del self._routes[upd.dst]
                else:
                    if old is not None and old.key != upd.route.key:
                        removes.append(old)
                    self._routes[upd.dst] = upd.route
                    upserts.append(upd.route)
            try:
                if not self._in_sync:
                    result = ApplyResult("changes")  # not in sync yet: the first resync will carry it
                else:
                    result = self.programmer.apply_changes(upserts, removes, force=force)
                    self.stats.fast_applies += 1
                    self._after(result)
                future.set_result(result)
            except Exception as exc:
                self._log.exception("dataplane.fast_apply_failed")
                future.set_exception(exc)

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

    def _policy_apply(self) -> None:
        assert self.policy is not None
        start = time.monotonic()
        n = self.policy.apply(self._policy.view(), self._policy.take_touched())
        self.stats.policy_applies += 1
        if n:
            self._log.debug("dataplane.policy_applied", commands=n, ms=round((time.monotonic() - start) * 1000, 2))

    def _policy_resync(self, reason: str) -> None:
        """The whole policy table in one transaction (adopts a predecessor's table atomically)."""
        assert self.policy is not None
        self._policy_dirty = False
        try:
            self._policy.take_touched()
            n = self.policy.resync(self._policy.view())
            self._log.info("dataplane.policy_resync", reason=reason, commands=n)
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
        self._after(result)
        return not result.failures

    def _after(self, result: ApplyResult) -> None:
        self.stats.last_result = result
        for observe in self.observers:
            try:
                observe(result)
            except Exception:
                self._log.exception("dataplane.observer_failed")
        if result.failures:
            self._retry_needed = True
