"""The agent's liveness lease: how the cluster controller knows this node's agent is alive.

Why a lease and not a heartbeat timestamp: etcd deletes a leased key by itself when nobody
renews it, so "alive" needs no clock agreement between machines and survives a controller
restart. The agent keeps ``nodestatus/live/<node>`` attached to a lease of ``ttl`` seconds and
renews it every ``ttl / 3``; after a long etcd outage the lease has expired and a new one is
granted. It also marks its Node with ``tabby.io/liveness-ttl`` once: only marked Nodes (those
whose agent keeps a lease) can ever be removed by the controller for being gone too long, so a
Node written by hand is never expired.

Kept in its own module (and started by a few lines in the agent) so it stays small and testable
without the dataplane.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import structlog

from datastore import Conflict, Datastore, DatastoreError, EtcdConfig, Put, mod_is, staged
from datastore.keys import liveness_key, resource_key

log = structlog.get_logger("tabby.node.liveness")

LIVENESS_TTL_ENV = "TABBY_LIVENESS_TTL"
DEFAULT_LIVENESS_TTL = 20
#: Annotation on the Node: its agent keeps a liveness lease of this many seconds.
ANNOTATION_LIVENESS = "tabby.io/liveness-ttl"


def liveness_ttl(env: Mapping[str, str] | None = None) -> int:
    """``TABBY_LIVENESS_TTL`` (whole seconds, at least 2: etcd's shortest lease); ValueError names the variable."""
    raw = (os.environ if env is None else env).get(LIVENESS_TTL_ENV, "").strip().removesuffix("s")
    if not raw:
        return DEFAULT_LIVENESS_TTL
    if not raw.isdigit() or int(raw) < 2:
        raise ValueError(f"{LIVENESS_TTL_ENV}: must be a whole number of seconds, at least 2, got {raw!r}")
    return int(raw)


class LeaseKeeper:
    """Keep ``nodestatus/live/<node>`` alive for as long as :meth:`run` runs."""

    def __init__(self, etcd: EtcdConfig, node: str, ttl: int = DEFAULT_LIVENESS_TTL) -> None:
        self.ds = Datastore(etcd)
        self.node = node
        self.ttl = ttl
        self.lease: int | None = None
        self.renewed_at = 0.0
        self.grants = 0
        #: whether the Node carries the liveness annotation since the last grant
        self.marked = False
        self.log = log.bind(node=node, ttl=ttl)

    @property
    def alive(self) -> bool:
        """Whether the lease was renewed recently enough that etcd still holds it."""
        return self.lease is not None and time.monotonic() - self.renewed_at < self.ttl

    async def run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    await self._step()
                    failures = 0
                    await asyncio.sleep(self.ttl / 3)
                except DatastoreError as exc:
                    failures += 1
                    if failures == 1 or failures % 30 == 0:
                        self.log.warning("liveness.renew_failed", error=str(exc)[:200], failures=failures)
                    await asyncio.sleep(min(1.0, self.ttl / 3))
        finally:
            await self.ds.close()

    async def _step(self) -> None:
        if self.lease is not None:
            left = await self.ds.lease_keepalive(self.lease)
            if left > 0:
                self.renewed_at = time.monotonic()
                if not self.marked:  # a lost race (or a staged Node) at the grant: try again now
                    self.marked = await self._mark_node()
                return
            self.log.info("liveness.lease_expired", lease=self.lease)
            self.lease = None
        lease = await self.ds.lease_grant(self.ttl)
        await self.ds.put(liveness_key(self.node), {
            "node": self.node, "host": socket.gethostname(), "pid": os.getpid(), "ttl": self.ttl,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, lease=lease)
        self.lease = lease
        self.renewed_at = time.monotonic()
        self.grants += 1
        self.log.info("liveness.lease_granted", lease=lease)
        # On every grant: the Node may have been deleted and registered again.
        self.marked = await self._mark_node()

    async def _mark_node(self) -> bool:
        """Annotate the Node (compare on mod_revision; a racing writer makes us retry at the next renewal)."""
        key = resource_key("nodes", self.node)
        try:
            kv = await staged.get_for_update(self.ds, key)
        except Conflict:  # a large apply holds the Node staged: marked on a later renewal
            return False
        if kv is None:
            return False
        doc: dict[str, Any] = kv.json()
        ann = doc.setdefault("metadata", {}).setdefault("annotations", {})
        if ann.get(ANNOTATION_LIVENESS) == str(self.ttl):
            return True
        ann[ANNOTATION_LIVENESS] = str(self.ttl)
        res = await self.ds.txn([mod_is(key, kv.mod_revision)], [Put(key, doc)])
        return res.succeeded
