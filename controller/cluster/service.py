"""The controller's main loop: win the election, then reconcile every ``interval`` while leading.

Why polling cycles and not a watch: every action here waits for a grace period measured in
seconds to minutes, and each cycle reads the few prefixes it needs at once, so a periodic full
read is simpler than a watch-fed cache and is always right after an etcd outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import structlog

from controller.cluster.config import ControllerConfig
from controller.cluster.ipam_gc import IpamGC
from controller.cluster.leader import LeaderElection, LeadershipLost
from controller.cluster.nodes import NodeLifecycle, read_view
from controller.metrics import MetricsServer
from datastore import Datastore, DatastoreError
from ipam import IPAMClient

log = structlog.get_logger("tabby.controller")


class Controller:
    """One controller process. ``await Controller(config).run(stop)``."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        # A bounded wait per call, so one cycle cannot hang while etcd is away.
        self.ds = Datastore(replace(config.etcd, connect_timeout=min(config.etcd.connect_timeout, 5.0)))
        self.ipam = IPAMClient(self.ds, cache_ttl=0.0)
        self.actions: Counter[str] = Counter()
        self.election = LeaderElection(self.ds, config.identity, ttl=config.leader_ttl)
        self.nodes = NodeLifecycle(self.ds, self.ipam, node_grace=config.node_grace,
                                   cleanup_delay=config.cleanup_delay, count=self._count)
        self.gc = IpamGC(self.ds, self.ipam, grace=config.gc_grace, count=self._count)
        self.cycles = 0
        self.cycle_errors = 0
        self.last_cycle_at = 0.0
        self.last_cycle_seconds = 0.0
        self.log = log.bind(identity=self.election.identity)
        self.metrics_settings = config.metrics
        self.metrics_server: MetricsServer | None = None

    def _count(self, action: str, n: int) -> None:
        if n:
            self.actions[action] += n

    @property
    def leading(self) -> bool:
        return self.election.holding

    def status(self) -> dict[str, Any]:
        return {
            "identity": self.election.identity, "leading": self.leading, "terms": self.election.terms,
            "cycles": self.cycles, "cycle_errors": self.cycle_errors, "gc_pending": self.gc.pending,
            "actions": dict(self.actions),
        }

    async def cycle(self) -> None:
        start = time.monotonic()
        view = await read_view(self.ds)
        await self.nodes.reconcile(view, time.monotonic())
        if not self.election.holding:
            return
        result = await self.gc.run_once(view)
        self.cycles += 1
        self.last_cycle_at = time.time()
        self.last_cycle_seconds = time.monotonic() - start
        if result.released_handles or result.skipped:
            self.log.info("controller.gc_cycle", candidates=result.candidates, confirmed=result.confirmed,
                          released=len(result.released_handles), skipped=len(result.skipped))

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready = leading, or standing by with etcd answering (the last campaign poll worked)."""
        if self.leading or self.election.polled_ok:
            return True, []
        return False, ["etcd not reachable (no successful leader election poll)"]

    async def run(self, stop: asyncio.Event) -> None:
        if self.metrics_settings.enabled:
            from controller.cluster.metrics import controller_registry

            self.metrics_server = MetricsServer(controller_registry(self), healthz=lambda: (True, []),
                                                readyz=self.readiness)
            await self.metrics_server.start(MetricsServer.listening_socket(self.metrics_settings.host,
                                                                           self.metrics_settings.port))
        self.log.info("controller.starting", interval=self.config.interval, leader_ttl=self.config.leader_ttl,
                      gc_grace=self.config.gc_grace, node_grace=self.config.node_grace,
                      cleanup_delay=self.config.cleanup_delay)
        try:
            while not stop.is_set():
                if not await _until(stop, self.election.acquire()):
                    break
                holder = asyncio.create_task(self.election.hold(), name="leader-hold")
                try:
                    while not stop.is_set() and not holder.done():
                        if self.election.holding:
                            try:
                                await self.cycle()
                            except DatastoreError as exc:
                                self.cycle_errors += 1
                                self.log.warning("controller.cycle_failed", error=str(exc)[:200])
                        await _sleep_or(stop, holder, self.config.interval)
                finally:
                    holder.cancel()
                    with contextlib.suppress(asyncio.CancelledError, LeadershipLost):
                        await holder
                if not stop.is_set():
                    self.log.warning("controller.standing_down", reason="leadership lost")
        finally:
            await self.election.resign()
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            await self.ds.close()
            self.log.info("controller.stopped")


async def _until(stop: asyncio.Event, work: Any) -> bool:
    """Run ``work`` unless ``stop`` is set first; True when the work finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _sleep_or(stop: asyncio.Event, holder: asyncio.Task[Any], seconds: float) -> None:
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, holder}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()


async def run_controller(config: ControllerConfig) -> None:
    """Run until SIGTERM/SIGINT (then resign: the standby takes over at once)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("controller.signal", signal=signal.Signals(signum).name)
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    await Controller(config).run(stop)
