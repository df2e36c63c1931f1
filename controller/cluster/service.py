"""The controller's main loop: win the election, then reconcile every ``interval`` while leading.

Why polling cycles and not a watch: every action here waits for a grace period measured in
seconds to minutes, and each cycle reads the few prefixes it needs at once, so a periodic full
read is simpler than a watch-fed cache and is always right after an etcd outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import structlog

from common import logs
from controller.cluster import kcc
from controller.cluster.config import ControllerConfig
from controller.cluster.ipam_gc import IpamGC
from controller.cluster.kubeapi import KubeAPI
from controller.cluster.kubesync import KubeSync
from controller.cluster.leader import LeaderElection, LeadershipLost
from controller.cluster.nodes import NodeLifecycle, read_view
from controller.metrics import MetricsServer
from datastore import Datastore, DatastoreError
from ipam import IPAMClient

log = structlog.get_logger("tabby.controller")


class Controller:
    """One controller process. ``await Controller(config).run(stop)``."""

    def __init__(self, config: ControllerConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.environ = os.environ if environ is None else environ
        #: The settings as run (KubeControllersConfiguration `default` under the environment).
        self.settings = kcc.Effective(config.interval, config.gc_grace, config.log_level)
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
        self.kube_sync: KubeSync | None = None
        if config.kube is not None:
            self.kube_sync = KubeSync(self.ds, KubeAPI(config.kube))

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
            "settings": {"interval": self.settings.interval, "gc_grace": self.settings.gc_grace,
                         "log_level": self.settings.log_level, "sources": dict(self.settings.sources)},
            "kube_sync": None if self.kube_sync is None else {
                "in_sync": self.kube_sync.in_sync,
                "counts": {f"{res}.{what}": n for (res, what), n in sorted(self.kube_sync.stats.items())}},
        }

    async def _settings(self) -> None:
        """Re-read KubeControllersConfiguration `default`; apply what changed; report it in its status."""
        try:
            doc, kv = await kcc.read(self.ds)
        except kcc.Unreadable:
            return  # invalid: what runs stays (logged by kcc.read)
        eff = kcc.effective(doc, interval=self.config.interval, gc_grace=self.config.gc_grace,
                            log_level=self.config.log_level, environ=self.environ)
        if eff != self.settings:
            if eff.log_level != self.settings.log_level:
                logs.set_level(eff.log_level)
            self.settings = eff
            if eff.gc_grace is not None:
                self.gc.grace = eff.gc_grace
            self.log.info("controller.settings", interval=eff.interval, gc_grace=eff.gc_grace,
                          log_level=eff.log_level, sources=eff.sources)
        if doc is not None and kv is not None and self.election.holding:
            await kcc.write_status(self.ds, kv, doc, eff)

    async def cycle(self) -> None:
        start = time.monotonic()
        await self._settings()
        view = await read_view(self.ds)
        await self.nodes.reconcile(view, time.monotonic())
        if not self.election.holding:
            return
        result = None
        if self.settings.gc_grace is None:  # leakGracePeriod 0: IPAM garbage collection off
            self.gc.forget()  # candidates seen before start their grace anew when GC comes back
        else:
            result = await self.gc.run_once(view)
        self.cycles += 1
        self.last_cycle_at = time.time()
        self.last_cycle_seconds = time.monotonic() - start
        if result is not None and (result.released_handles or result.skipped):
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
                # The Kubernetes sync runs only while leading (as calico-kube-controllers' leader does).
                syncer = (asyncio.create_task(self.kube_sync.run(), name="kube-sync")
                          if self.kube_sync is not None else None)
                try:
                    while not stop.is_set() and not holder.done():
                        if self.election.holding:
                            try:
                                await self.cycle()
                            except DatastoreError as exc:
                                self.cycle_errors += 1
                                self.log.warning("controller.cycle_failed", error=str(exc)[:200])
                        await _sleep_or(stop, holder, self.settings.interval)
                finally:
                    holder.cancel()
                    with contextlib.suppress(asyncio.CancelledError, LeadershipLost):
                        await holder
                    if syncer is not None:
                        syncer.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await syncer
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
