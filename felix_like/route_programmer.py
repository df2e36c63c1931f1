"""Make one namespace's kernel routes of Tabby's protocol match a desired set.

Why a reconciler and not a route writer: the kernel is shared with people and other daemons.
Tabby owns exactly the routes carrying :data:`TABBY_RT_PROTO` in its table; it diffs what it
wants against what it owns and writes only the difference, in one batch:

* ``full_resync(desired)`` dumps our routes from the kernel, so hand deletions, reboots of a
  link (which silently drop its routes) and our own earlier failures are all repaired;
* ``apply_delta(desired)`` diffs against the view cached from the last write and dump: cheap
  enough to run on every datastore event;
* ``watch_kernel(...)`` listens to route notifications and resyncs when the kernel diverges
  from the cached view (someone deleted or changed one of our routes), plus a periodic resync
  like Felix's routeRefreshInterval.

Multipath (ECMP) routes are one route per key like any other: written with RTA_MULTIPATH, read
back as one message, compared with hops in canonical order; changing the hop set is a replace.

Never flushed on shutdown: routes keep forwarding while the agent restarts, and the next
resync adopts them. Foreign routes are never touched: adds use NLM_F_EXCL (a foreign route
with the same key is reported as a conflict, not overwritten) and deletes carry our protocol.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

import structlog

from felix_like.netlink import (
    IPV6_DEFAULT_METRIC,
    RT_TABLE_MAIN,
    TABBY_RT_PROTO,
    Route,
    RouteEvent,
    RouteFailure,
    RouteMonitor,
    RouteOp,
    RouteSocket,
)

log = structlog.get_logger("tabby.felix_like.route_programmer")

Key = tuple[str, int]


@dataclass
class ApplyResult:
    """What one resync or delta did. ``writes`` counts netlink messages sent (0 for a no-op)."""

    kind: str
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    writes: int = 0
    seconds: float = 0.0
    failures: list[RouteFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _normalise(routes: Iterable[Route]) -> dict[Key, Route]:
    """Index desired routes by kernel key, in the form a dump decodes to, so ``==`` means "no write".

    IPv6 metric 0 means the kernel's 1024, so store it that way; multipath hops are put in canonical
    order (the dump sorts them too), so a resync never rewrites an ECMP route for hop order alone.
    """
    out: dict[Key, Route] = {}
    for route in routes:
        if route.nexthops:
            route = route.canonical()
        if route.metric == 0 and route.ipv6:
            route = replace(route, metric=IPV6_DEFAULT_METRIC)
        out[(route.dst, route.metric)] = route  # == route.key, inlined: hot for 10k routes
    return out


def diff(desired: dict[Key, Route], actual: dict[Key, Route]) -> list[tuple[RouteOp, Route]]:
    """Operations turning ``actual`` into ``desired``: adds and replaces first (no gap), then deletes."""
    ops: list[tuple[RouteOp, Route]] = []
    for key, route in desired.items():
        have = actual.get(key)
        if have is None:
            ops.append((RouteOp.ADD, route))
        elif have != route:
            ops.append((RouteOp.REPLACE, route))
    for key, route in actual.items():
        if key not in desired:
            ops.append((RouteOp.DELETE, route))
    return ops


class RouteProgrammer:
    """The route reconciler of one network namespace (None: the caller's own namespace)."""

    def __init__(self, netns: str | None = None, *, table: int = RT_TABLE_MAIN, protocol: int = TABBY_RT_PROTO):
        self.netns = netns
        self.table = table
        self.protocol = protocol
        self._nl = RouteSocket(netns, protocol=protocol, table=table)
        self._actual: dict[Key, Route] = {}
        self._desired: dict[Key, Route] = {}
        self._cache_unknown = True  # nothing dumped yet: the first delta does a full resync
        self._log = log.bind(netns=netns or "", table=table, protocol=protocol)

    @property
    def writes(self) -> int:
        """Netlink messages written since creation (tests prove no-op resyncs with it)."""
        return self._nl.writes

    @property
    def actual(self) -> dict[Key, Route]:
        """The cached view of our routes in the kernel (a copy)."""
        return dict(self._actual)

    def monitor(self) -> RouteMonitor:
        """A route monitor of this namespace that leaves out the kernel's echoes of our own writes
        (we know what we wrote); everyone else's changes, and the kernel's own, come through."""
        return RouteMonitor(self.netns, ignore=self._nl)

    @property
    def ifnames(self) -> dict[int, str]:
        """The writer's index -> name cache (route monitors decode events with it)."""
        return self._nl.ifnames

    def has_key(self, dst: str) -> bool:
        """Is a route of ours for ``dst`` (either family's default metric) in the cached view? O(1)."""
        return (dst, 0) in self._actual or (dst, IPV6_DEFAULT_METRIC) in self._actual

    def close(self) -> None:
        """Release the netlink socket. Deliberately leaves every route in place."""
        self._nl.close()

    def __enter__(self) -> RouteProgrammer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def full_resync(self, desired: Iterable[Route] | None = None) -> ApplyResult:
        """Dump our routes, diff against ``desired`` (default: the last desired set) and apply in one batch."""
        start = time.perf_counter()
        if desired is not None:
            self._desired = _normalise(desired)
        self._actual = {(r.dst, r.metric): r for r in self._nl.dump_routes()}
        return self._apply("resync", start)

    def apply_delta(self, desired_new: Iterable[Route]) -> ApplyResult:
        """Move from the cached view to ``desired_new`` (the complete new set), writing only changes."""
        start = time.perf_counter()
        self._desired = _normalise(desired_new)
        if self._cache_unknown:
            self._log.info("routes.delta_needs_resync")
            return self.full_resync()
        return self._apply("delta", start)

    def apply_changes(self, upserts: Iterable[Route] = (), removes: Iterable[Route] = (), *,
                      force: bool = False) -> ApplyResult:
        """Apply a change set (routes now wanted, routes no longer wanted), writing only those keys.

        The incremental path: the cost is O(changes), not O(desired routes), so a CNI ADD's /32 (the
        fast lane) or one remote block costs the same in a 5,000-node cluster as in a 2-node one. The
        complete desired set is kept up to date too, so a later full resync uses it.

        ``force``: write the upserts even where the cache says the kernel has them (a CNI ADD's own
        routes: the kernel drops a device's routes without a netlink event when the device is
        deleted, as a re-ADD does with a half-done ADD's veth, so the cache can be wrong there).
        """
        start = time.perf_counter()
        touched: set[Key] = set()
        for route in removes:
            for key in _normalise((route,)):
                self._desired.pop(key, None)
                touched.add(key)
        for key, route in _normalise(upserts).items():
            self._desired[key] = route
            touched.add(key)
        if self._cache_unknown:
            self._log.info("routes.delta_needs_resync")
            return self.full_resync()
        ops: list[tuple[RouteOp, Route]] = []
        deletes: list[tuple[RouteOp, Route]] = []
        for key in touched:
            want, have = self._desired.get(key), self._actual.get(key)
            if want is not None and have is None:
                ops.append((RouteOp.ADD, want))
            elif want is not None and (have != want or force):
                ops.append((RouteOp.REPLACE, want))
            elif want is None and have is not None:
                deletes.append((RouteOp.DELETE, have))
        return self._apply("changes", start, ops + deletes)

    def desired_routes(self) -> list[Route]:
        """The complete desired set as last given (a copy)."""
        return list(self._desired.values())

    def _apply(self, kind: str, start: float, ops: list[tuple[RouteOp, Route]] | None = None) -> ApplyResult:
        if ops is None:
            ops = diff(self._desired, self._actual)
        result = ApplyResult(kind)
        writes_before = self._nl.writes
        try:
            failures = self._nl.apply(ops) if ops else []
        except OSError:
            # Lost ACKs or a broken socket: what landed is unknown, so the next delta dumps first.
            self._cache_unknown = True
            raise
        self._cache_unknown = False
        failed = {(f.op, f.route.key) for f in failures}
        actual = self._actual
        for op, route in ops:
            key = (route.dst, route.metric)
            if failed and (op, key) in failed:
                continue
            if op == RouteOp.DELETE:
                actual.pop(key, None)
                result.deleted += 1
            else:
                actual[key] = route
                if op == RouteOp.ADD:
                    result.added += 1
                else:
                    result.replaced += 1
        for failure in failures:
            if failure.op == RouteOp.DELETE and failure.errno == errno_mod.ESRCH:
                self._actual.pop(failure.route.key, None)  # already gone: the goal is met
                continue
            result.failures.append(failure)
            self._log.warning(
                "routes.failed",
                op=str(failure.op),
                route=failure.route.describe(),
                errno=failure.errno,
                error=failure.message or None,
            )
        result.writes = self._nl.writes - writes_before
        result.seconds = time.perf_counter() - start
        self._log.info(
            "routes.applied",
            kind=kind,
            desired=len(self._desired),
            added=result.added,
            replaced=result.replaced,
            deleted=result.deleted,
            failed=len(result.failures),
            writes=result.writes,
            seconds=round(result.seconds, 4),
        )
        return result

    def diverges(self, event: RouteEvent) -> bool:
        """True when a kernel notification contradicts the cached view (someone else touched our routes).

        Our own writes arrive as events matching the cache and are ignored; a stale event that
        no longer matches only causes a harmless no-op resync. Any deletion under the key of one of
        our multipath routes counts: the kernel may report an IPv6 sibling (one hop) on its own, which
        never equals the cached whole set.
        """
        if event.protocol != self.protocol or event.table != self.table:
            return False
        have = self._actual.get(event.route.key)
        if event.kind == "del":
            return have is not None and (have == event.route or bool(have.nexthops))
        return have != event.route

    async def watch_kernel(
        self,
        on_change: Callable[[ApplyResult], Awaitable[None] | None] | None = None,
        *,
        interval: float = 90.0,
        debounce: float = 0.05,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Restore our routes when the kernel diverges, and resync every ``interval`` seconds anyway.

        Runs until ``stop`` is set (or the task is cancelled). Each resync uses the last desired set
        and its result is passed to ``on_change``. The periodic pass catches what produces no event
        (routes dropped with their link) and event overflow.
        """
        monitor = self.monitor()
        loop = asyncio.get_running_loop()
        dirty = asyncio.Event()
        stop = stop or asyncio.Event()

        def readable() -> None:
            monitor.set_ifnames(self._nl.ifnames)
            events, overflowed = monitor.read_events()
            if overflowed or any(self.diverges(e) for e in events):
                dirty.set()

        loop.add_reader(monitor.fileno(), readable)
        try:
            while not stop.is_set():
                waiters = {asyncio.ensure_future(dirty.wait()), asyncio.ensure_future(stop.wait())}
                try:
                    await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if stop.is_set():
                    break
                reason = "kernel_changed" if dirty.is_set() else "periodic"
                await asyncio.sleep(debounce)  # let a burst of hand edits settle into one resync
                readable()  # consume what queued meanwhile so our own writes' echoes stay harmless
                dirty.clear()
                try:
                    result = self.full_resync()
                except OSError as exc:
                    # One failed netlink exchange must not end the watch: the periodic resync and the
                    # repair of hand-deleted routes would stop silently until the agent restarts.
                    self._log.warning("routes.watch_resync_failed", reason=reason, error=str(exc)[:200])
                    await asyncio.sleep(1.0)
                    dirty.set()  # and try again
                    continue
                self._log.info("routes.watch_resync", reason=reason, added=result.added, deleted=result.deleted)
                if on_change is not None:
                    maybe = on_change(result)
                    if maybe is not None:
                        await maybe
                readable()  # echoes of our own writes match the cache; a fresh hand edit sets dirty again
        finally:
            loop.remove_reader(monitor.fileno())
            monitor.close()
