"""IPAM errors: each says what happened and what the user can do about it."""

from __future__ import annotations


class IPAMError(Exception):
    """Base of every IPAM failure the caller may want to tell apart from datastore trouble."""


class NoPoolsError(IPAMError):
    """No enabled IP pool fits the request (family, allowed use, node selector, requested names)."""


class PoolsExhausted(IPAMError):
    """The fitting pools have no free address this node may use (or may claim a block for)."""


class IPAlreadyAllocated(IPAMError):
    """A specific address was requested but someone already holds it."""


class IPNotInPool(IPAMError):
    """A specific address lies outside every enabled IP pool."""


class InvalidHandle(IPAMError):
    """A handle id is empty, malformed, or its stored record cannot be read."""


class HandleInUse(IPAMError):
    """An allocation asked for a new handle (``new_handle=True``) but the handle already holds addresses."""
