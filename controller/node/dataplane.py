"""Make the node's kernel match the desired state calculated from the snapshot.

Why a coalescing reconciler: datastore events arrive in bursts (a block claim is several keys,
an etcd reconnect replays many). Each event only marks the dataplane dirty; one task waits a
few milliseconds, recalculates the desired routes once from the whole snapshot (pure) and
applies the difference as one netlink batch. Nothing is written before the first full snapshot
(:meth:`Dataplane.start`, a full resync), then deltas; full resyncs again after a failure, on a
timer (Felix's routeRefreshInterval, ``TABBY_RESYNC_INTERVAL``) and whenever the kernel diverges
from what we wrote (the route programmer's netlink monitor: a route deleted by hand comes back).

The dataplane is never flushed: not when etcd goes away, not on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from felix_like.netlink import Route
from felix_like.route_programmer import ApplyResult, RouteProgrammer
from felix_like.routes import RouteInputs, WorkloadInfo, calculate_routes

log = structlog.get_logger("tabby.node.dataplane")

DEBOUNCE = 0.02
RETRY_AFTER_FAILURE = 1.0


class Dataplane:
    """Routes (and, when present, tunnel and NAT managers) of one node namespace."""

    def __init__(
        self,
        netns: str | None,
        inputs: Callable[[dict[str, WorkloadInfo], set[str]], RouteInputs],
        *,
        resync_interval: float = 90.0,
        node: str = "",
    ) -> None:
        self.netns = netns
        self._inputs = inputs
        self.resync_interval = resync_interval
        self.programmer = RouteProgrammer(netns)
        #: Local workloads created by CNI ADD whose WorkloadEndpoint the watch has not delivered yet.
        self.extra_workloads: dict[str, WorkloadInfo] = {}
        #: Host interfaces deleted by CNI DEL whose WorkloadEndpoint may still be in the snapshot.
        self.gone_interfaces: set[str] = set()
        self.started = False
        #: Async callables run on each coalesced pass (tunnels, NAT); True asks for a route resync.
        self.managers: list[Callable[[], Awaitable[bool]]] = []
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._log = log.bind(node=node)
        self.last_result: ApplyResult | None = None
        #: Called with every ApplyResult (the metrics' apply histograms).
        self.observers: list[Callable[[ApplyResult], None]] = []

    # -- calculation ---------------------------------------------------------------------------
    def desired(self) -> frozenset[Route]:
        return calculate_routes(self._inputs(self.extra_workloads, self.gone_interfaces))

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """First full resync (call only once the first full snapshot is in), then the loops."""
        for manager in self.managers:  # tunnel devices first: routes through them need them
            with contextlib.suppress(Exception):
                await manager()
        result = self.programmer.full_resync(self.desired())
        self._after(result)
        self.started = True
        self._tasks.append(asyncio.create_task(self._coalesce(), name="dataplane-coalesce"))
        self._tasks.append(
            asyncio.create_task(
                self.programmer.watch_kernel(self._after_watch, interval=self.resync_interval, stop=self._stop),
                name="dataplane-kernel-watch",
            )
        )

    async def stop(self) -> None:
        """Stop reconciling; every route stays in the kernel (the next agent adopts them)."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.programmer.close()

    # -- changes -------------------------------------------------------------------------------
    def mark_dirty(self) -> None:
        """Something in the snapshot changed: recalculate soon (coalesced)."""
        if self.started:
            self._dirty.set()

    def apply_now(self) -> ApplyResult | None:
        """Recalculate and apply at once (CNI ADD/DEL: the pod is reachable when ADD returns)."""
        if not self.started:
            return None
        result = self.programmer.apply_delta(self.desired())
        self._after(result)
        return result

    def has_route(self, dst: str) -> bool:
        return any(key[0] == dst for key in self.programmer.actual)

    def _prune(self) -> None:
        """Forget overlay entries the snapshot has caught up with."""
        inputs = self._inputs({}, set())
        known = {(w.ip, w.interface) for w in inputs.workloads}
        for ip, wl in list(self.extra_workloads.items()):
            if (ip, wl.interface) in known:
                del self.extra_workloads[ip]
        interfaces = {w.interface for w in inputs.workloads}
        self.gone_interfaces &= interfaces

    async def _coalesce(self) -> None:
        while not self._stop.is_set():
            await self._dirty.wait()
            await asyncio.sleep(DEBOUNCE)
            self._dirty.clear()
            try:
                self._prune()
                result = self.programmer.apply_delta(self.desired())
                self._after(result)
                for manager in self.managers:
                    if await manager():
                        self._after(self.programmer.full_resync(self.desired()))
            except Exception:
                self._log.exception("dataplane.apply_failed")
                await asyncio.sleep(RETRY_AFTER_FAILURE)
                self._schedule_resync()

    def _after(self, result: ApplyResult) -> None:
        self.last_result = result
        for observe in self.observers:
            observe(result)
        if result.failures:
            self._schedule_resync()

    def _schedule_resync(self) -> None:
        async def later() -> None:
            await asyncio.sleep(RETRY_AFTER_FAILURE)
            if self._stop.is_set():
                return
            try:
                self._after(self.programmer.full_resync(self.desired()))
            except Exception:
                self._log.exception("dataplane.retry_failed")
                self._schedule_resync()

        self._tasks.append(asyncio.create_task(later(), name="dataplane-retry"))
        self._tasks[:] = [t for t in self._tasks if not t.done()]

    async def _after_watch(self, result: ApplyResult) -> None:
        # watch_kernel resynced against the last desired set; recalculate in case the snapshot moved.
        self.last_result = result
        for observe in self.observers:
            observe(result)
        self._dirty.set()
