"""Watches that survive etcd restarts and compaction.

A consumer wants one thing: every change under a prefix, in order, never a gap. etcd gives
a stream that breaks when the server goes away and refuses to resume when the revision it
asked for was compacted. :func:`watch_prefix` hides both: after a break it resumes from the
last revision it delivered + 1; after compaction (or at start when no revision is given) it
lists the prefix and yields one :class:`WatchResync` holding the whole snapshot, which the
consumer treats as "replace everything you know", then continues with events.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aetcd.exceptions as aexc
import structlog

from datastore.client import KV, STATS, Datastore
from datastore.errors import DatastoreError

log = structlog.get_logger("tabby.datastore.watch")


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``kind`` is "put" or "delete"; a delete's ``kv.value`` is empty."""

    kind: str
    kv: KV


@dataclass(frozen=True)
class WatchResync:
    """The complete state under the prefix at ``revision``: replace, do not merge."""

    kvs: list[KV]
    revision: int


async def watch_prefix(
    ds: Datastore,
    prefix: str,
    start_revision: int | None = None,
    *,
    max_backoff: float = 2.0,
) -> AsyncIterator[WatchEvent | WatchResync]:
    """Yield changes under ``prefix`` forever, reconnecting and resyncing as needed.

    With ``start_revision`` None the first item is a :class:`WatchResync`. Otherwise events
    start at ``start_revision`` (inclusive). Errors while etcd is away are retried with
    backoff; the consumer keeps its last known state meanwhile.
    """
    next_rev = start_revision
    backoff = 0.1
    while True:
        try:
            if next_rev is None:
                kvs, rev = await ds.list(prefix)
                STATS["watch_resyncs"] += 1
                yield WatchResync(kvs, rev)
                next_rev = rev + 1
            watch, it = await ds._raw_watch(prefix, next_rev)
            try:
                async for ev in it:
                    backoff = 0.1
                    kv = ds._kv(ev.kv)
                    next_rev = kv.mod_revision + 1
                    yield WatchEvent("put" if ev.kind == "PUT" else "delete", kv)
                # The iterator ends only when the stream was shut down: reconnect.
            finally:
                try:
                    await watch.cancel()
                except Exception:
                    log.debug("watch.cancel_failed", exc_info=True)
        except aexc.RevisionCompactedError as exc:
            log.info("watch.compacted", prefix=prefix, compacted_revision=exc.compacted_revision)
            next_rev = None
            continue
        except (aexc.ClientError, DatastoreError, OSError) as exc:
            log.warning("watch.broken", prefix=prefix, error=str(exc)[:200], retry_in=round(backoff, 2))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # grpc raises a zoo of types on a dropped stream
            log.warning("watch.broken", prefix=prefix, error=repr(exc)[:200], retry_in=round(backoff, 2))
        STATS["watch_breaks"] += 1
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, max_backoff)
        # The stream may have failed because the endpoint went away: start afresh.
        await ds.close()
