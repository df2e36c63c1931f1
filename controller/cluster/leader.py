"""Leader election on an etcd lease: several controllers may run, exactly one acts.

Why a lease: the leader key ``controller/leader`` is created only if absent (compare
mod_revision 0) and attached to the candidate's lease. A leader that dies (SIGKILL, power
loss) stops renewing; etcd deletes the key when the lease expires (at most ``ttl`` seconds
later) and a standby, which polls the key every ``poll`` seconds, creates it again.

A leader acts only while :meth:`LeaderElection.holding` is true: its last successful renewal
is less than two thirds of the TTL old. So a leader cut off from etcd stops acting before
etcd can hand the key to somebody else, and two controllers never act at the same time.
On a clean stop the lease is revoked: the standby takes over at its next poll.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import structlog

from datastore import Datastore, DatastoreError, Put, mod_is
from datastore.keys import CONTROLLER_LEADER

log = structlog.get_logger("tabby.controller.leader")


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class LeadershipLost(Exception):
    """The lease could not be renewed in time (etcd away) or expired: stop acting."""


class LeaderElection:
    """Campaign for, hold and give up the leader key."""

    def __init__(self, ds: Datastore, identity: str | None = None, ttl: int = 15, poll: float | None = None) -> None:
        if ttl < 2:
            raise ValueError("leader lease TTL must be at least 2 s (etcd's shortest lease)")
        self.ds = ds
        self.identity = identity or default_identity()
        self.ttl = ttl
        self.poll = poll if poll is not None else min(1.0, ttl / 8)
        self.lease: int | None = None
        self.renewed_at = 0.0
        self.terms = 0
        #: The last campaign poll reached etcd (readiness of a standby).
        self.polled_ok = False
        self.log = log.bind(identity=self.identity)

    @property
    def holding(self) -> bool:
        """True while our lease is certainly still alive in etcd."""
        return self.lease is not None and time.monotonic() - self.renewed_at < self.ttl * 2 / 3

    async def current_leader(self) -> dict[str, Any] | None:
        kv = await self.ds.get(CONTROLLER_LEADER)
        return kv.json() if kv is not None else None

    async def acquire(self) -> None:
        """Return once we are the leader (polls while someone else is)."""
        last_seen: str | None = None
        while True:
            try:
                acquired = await self._try_acquire()
                self.polled_ok = True
                if acquired:
                    return
                holder = await self.current_leader()
                name = (holder or {}).get("identity")
                if name and name != last_seen:
                    self.log.info("leader.standby", leader=name)
                    last_seen = name
            except DatastoreError as exc:
                self.polled_ok = False
                self.log.warning("leader.campaign_failed", error=str(exc)[:200])
            await asyncio.sleep(self.poll)

    async def _try_acquire(self) -> bool:
        start = time.monotonic()  # the lease lives at least ttl from here (granted or renewed below)
        if self.lease is not None and await self.ds.lease_keepalive(self.lease) <= 0:
            self.lease = None
        if self.lease is None:
            start = time.monotonic()
            self.lease = await self.ds.lease_grant(self.ttl)
        doc = {"identity": self.identity, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "ttl": self.ttl}
        res = await self.ds.txn([mod_is(CONTROLLER_LEADER, 0)], [Put(CONTROLLER_LEADER, doc, lease=self.lease)])
        if not res.succeeded:
            return False  # someone else leads; our lease is kept (renewed) for the next try
        self.renewed_at = start
        self.terms += 1
        self.log.info("leader.acquired", lease=self.lease, ttl=self.ttl, term=self.terms)
        return True

    async def hold(self) -> None:
        """Renew the lease every ttl/4 until it cannot be renewed; then raise LeadershipLost."""
        assert self.lease is not None
        while True:
            await asyncio.sleep(self.ttl / 4)
            try:
                left = await self.ds.lease_keepalive(self.lease)
            except DatastoreError as exc:
                if not self.holding:
                    self.lease = None
                    self.log.warning("leader.lost", reason=f"lease not renewed in time: {str(exc)[:120]}")
                    raise LeadershipLost(str(exc)) from exc
                continue
            if left <= 0:
                self.lease = None
                self.log.warning("leader.lost", reason="lease expired")
                raise LeadershipLost("lease expired")
            self.renewed_at = time.monotonic()

    async def resign(self) -> None:
        """Give up at once (clean stop): revoking the lease deletes the key."""
        lease, self.lease = self.lease, None
        if lease is None:
            return
        try:
            await self.ds.lease_revoke(lease)
            self.log.info("leader.resigned")
        except DatastoreError as exc:
            self.log.warning("leader.resign_failed", error=str(exc)[:200])
