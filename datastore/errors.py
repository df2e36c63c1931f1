"""Datastore exceptions: the few outcomes callers have to tell apart."""

from __future__ import annotations


class DatastoreError(Exception):
    """Any failure talking to etcd that is not a plain conflict."""


class DatastoreUnavailable(DatastoreError):
    """No endpoint answered within the bounded wait.

    The message names the endpoints so an operator sees at once which address is wrong.
    """

    def __init__(self, endpoints: list[str], reason: str = "") -> None:
        self.endpoints = list(endpoints)
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"etcd unreachable at {', '.join(endpoints)}{detail}")


class Conflict(Exception):
    """A transaction's compare failed: someone else wrote first. Retry with fresh data."""


class TooManyConflicts(DatastoreError):
    """A read-modify-write lost the race more often than the retry bound allows."""
