"""Watches that survive etcd restarts, compaction and silent streams.

A consumer wants one thing: every change under a prefix, in order, never a gap, and to know
when it cannot have that. etcd gives a stream that breaks when the server goes away, refuses
to resume when the revision it asked for was compacted, and, worst, may stay open and silent:
a half-open TCP connection, or a member cut off from the leader that still serves its stale
copy. :func:`watch_prefix` handles all three:

- after a break it resumes from the last revision it delivered + 1;
- after compaction (or at start when no revision is given) it lists the prefix (paginated, see
  :meth:`Datastore.list`) and yields one :class:`WatchResync` holding the whole snapshot, which
  the consumer treats as "replace everything you know", then continues with events;
- a silent stream is detected: the stream carries etcd's require-leader metadata (a leaderless
  member ends it), the channel has gRPC keepalive, and whenever nothing arrived for
  ``progress_interval`` seconds a WatchProgressRequest is sent on the stream (etcd >= 3.4
  answers at once; its own progress notifications come only every 10 minutes). No reply within
  ``progress_timeout`` means stale: the connection is re-dialed and the prefix resynced (list +
  watch from the new revision), because a member that was cut off may have missed anything.

Whether the view is current is published on a :class:`WatchHealth` the caller passes in:
stale from a break or a silent stream until the stream is back (created again, or resynced).
The iterator itself only ever yields :class:`WatchEvent` and :class:`WatchResync`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import aetcd.exceptions as aexc
import structlog
from aetcd import rpc

from datastore.client import KV, STATS, Datastore, WatchStream
from datastore.errors import DatastoreError

log = structlog.get_logger("tabby.datastore.watch")

#: Seconds of silence on a watch stream before a WatchProgressRequest is sent.
PROGRESS_INTERVAL = 2.0
#: Seconds a progress request may go unanswered before the stream counts as stale.
PROGRESS_TIMEOUT = 3.0
#: Shortest wait for a reply, and how late a timer may fire before the loop counts as starved.
_GRACE = 0.2
_STARVED = 0.1


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``kind`` is "put" or "delete"; a delete's ``kv.value`` is empty."""

    kind: str
    kv: KV


@dataclass(frozen=True)
class WatchResync:
    """The complete state under the prefix (minus skipped prefixes) at ``revision``: replace, do not merge."""

    kvs: list[KV]
    revision: int


@dataclass
class WatchHealth:
    """Whether a watch's view is current, for the consumer to act on (refuse work, report why).

    ``fresh`` is False until the first resync (or, when started from a revision, the first
    stream ack), and again from the moment a stream breaks or goes silent until it is back.
    ``reason`` says why it is stale; ``since`` is the monotonic time of the last change;
    ``stale_count`` counts fresh -> stale transitions. ``on_change`` (optional) is called on
    every transition with this object. :meth:`wait_fresh` lets a request wait, bounded, for a
    stale view to come back.
    """

    fresh: bool = False
    reason: str = "watch not started"
    since: float = field(default_factory=time.monotonic)
    stale_count: int = 0
    on_change: Callable[[WatchHealth], None] | None = None
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False)

    def mark_fresh(self) -> None:
        if self.fresh:
            return
        self.fresh, self.reason, self.since = True, "", time.monotonic()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        if self.on_change is not None:
            self.on_change(self)

    def mark_stale(self, reason: str) -> None:
        if not self.fresh:
            self.reason = reason  # keep the first "since", but say what is wrong now
            return
        self.fresh, self.reason, self.since = False, reason, time.monotonic()
        self.stale_count += 1
        if self.on_change is not None:
            self.on_change(self)

    async def wait_fresh(self, timeout: float) -> bool:
        """True once fresh; False when still stale after ``timeout`` seconds."""
        if self.fresh:
            return True
        if timeout <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return self.fresh
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
        return True


class WatchSilent(DatastoreError):
    """A watch stream stayed open but did not answer a progress request in time."""


async def _responses(stream: WatchStream, interval: float, timeout: float) -> AsyncIterator[rpc.WatchResponse]:
    """Every WatchResponse of ``stream`` until it ends; raises WatchSilent when it goes quiet.

    A progress request goes out after ``interval`` seconds without any response; anything the
    server sends (events, progress, acks) counts as an answer. Silence is only concluded from a
    wait that ended on time: when the event loop was starved (a consumer computing for seconds)
    or this generator was suspended past the deadline, the reader task may not have had a chance
    to pick up a reply that did arrive, so it is given a short unstarved look first.
    """
    last_heard = time.monotonic()
    asked_at: float | None = None
    while True:
        now = time.monotonic()
        wait = (asked_at + timeout - now) if asked_at is not None else (last_heard + interval - now)
        wait = max(wait, _GRACE)
        started = time.monotonic()
        try:
            resp = await stream.next(wait)
        except TimeoutError:
            now = time.monotonic()
            if now - (started + wait) > _STARVED:
                continue  # the loop was busy elsewhere: look again before judging
            if asked_at is not None:
                if now - asked_at < timeout:
                    continue
                raise WatchSilent(
                    f"etcd watch silent: no reply to a progress request within {timeout:g}s"
                ) from None
            try:
                await stream.request_progress(timeout)
            except TimeoutError:
                raise WatchSilent(f"etcd watch silent: a progress request could not be sent in {timeout:g}s") from None
            asked_at = time.monotonic()
            continue
        if resp is None:
            return
        last_heard, asked_at = time.monotonic(), None
        yield resp


async def watch_prefix(
    ds: Datastore,
    prefix: str,
    start_revision: int | None = None,
    *,
    max_backoff: float = 2.0,
    health: WatchHealth | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
    progress_timeout: float = PROGRESS_TIMEOUT,
    page_size: int | None = None,
    skip: Sequence[str] = (),
) -> AsyncIterator[WatchEvent | WatchResync]:
    """Yield changes under ``prefix`` forever, reconnecting and resyncing as needed.

    With ``start_revision`` None the first item is a :class:`WatchResync`. Otherwise events
    start at ``start_revision`` (inclusive). Errors while etcd is away are retried with
    backoff; the consumer keeps its last known state meanwhile, and ``health`` says it is stale.
    Keys under a ``skip`` prefix (relative, like ``prefix``) are neither listed nor yielded.
    ``page_size`` is the list's page (default :data:`datastore.client.LIST_PAGE_SIZE`).
    """
    health = health if health is not None else WatchHealth()
    skip_abs = tuple(ds.prefix + s.lstrip("/") for s in skip)
    next_rev = start_revision
    backoff = 0.1
    while True:
        try:
            if next_rev is None:
                kvs, rev = await ds.list(prefix, page_size=page_size, skip=skip)
                STATS["watch_resyncs"] += 1
                health.mark_fresh()
                yield WatchResync(kvs, rev)
                next_rev = rev + 1
            stream = await ds._open_watch(prefix, next_rev)
            try:
                async for resp in _responses(stream, progress_interval, progress_timeout):
                    if resp.compact_revision:
                        raise aexc.RevisionCompactedError(resp.compact_revision)
                    if resp.canceled:
                        raise DatastoreError(f"etcd canceled the watch: {resp.cancel_reason or 'no reason given'}")
                    health.mark_fresh()  # an ack, a progress reply or events: the stream is live
                    backoff = 0.1
                    for ev in resp.events:
                        next_rev = ev.kv.mod_revision + 1
                        if skip_abs and ev.kv.key.decode().startswith(skip_abs):
                            continue
                        kind = "delete" if ev.type == rpc.Event.DELETE else "put"
                        yield WatchEvent(kind, ds._kv(ev.kv))
                # The stream ends only when the server shut it down: reconnect.
                health.mark_stale("etcd ended the watch stream; reconnecting")
            finally:
                await stream.close()
        except aexc.RevisionCompactedError as exc:
            log.info("watch.compacted", prefix=prefix, compacted_revision=exc.compacted_revision)
            next_rev = None
            continue
        except WatchSilent as exc:
            # Re-dial (the connection may be half-open) and resync: a member that was cut off
            # may have missed anything, so resuming from our revision could miss deletes.
            log.warning("watch.stale", prefix=prefix, error=str(exc), action="re-dial and resync")
            health.mark_stale(f"{exc}; re-dialing and resyncing")
            STATS["watch_breaks"] += 1
            next_rev = None
            await ds.close()
            continue
        except asyncio.CancelledError:
            raise
        except (aexc.ClientError, DatastoreError, OSError) as exc:
            health.mark_stale(f"etcd watch broken: {str(exc)[:200]}")
            log.warning("watch.broken", prefix=prefix, error=str(exc)[:200], retry_in=round(backoff, 2))
        except Exception as exc:  # grpc raises a zoo of types on a dropped stream
            health.mark_stale(f"etcd watch broken: {exc!r}"[:200])
            log.warning("watch.broken", prefix=prefix, error=repr(exc)[:200], retry_in=round(backoff, 2))
        STATS["watch_breaks"] += 1
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, max_backoff)
        # The stream may have failed because the endpoint went away: start afresh.
        await ds.close()
