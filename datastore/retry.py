"""Bounded read-modify-write retries with jitter.

Every mutation in Tabby is "read, compute, write if nobody else wrote meanwhile". When the
compare fails the whole step runs again on fresh data; the bound keeps a hot key from
spinning forever and the jitter keeps racing writers from staying in lock-step.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from datastore.errors import Conflict, TooManyConflicts

T = TypeVar("T")
log = structlog.get_logger("tabby.datastore.retry")


async def retry_on_conflict(
    step: Callable[[], Awaitable[T]],
    *,
    attempts: int = 50,
    base_delay: float = 0.002,
    max_delay: float = 0.2,
    what: str = "update",
) -> T:
    """Run ``step`` until it does not raise :class:`Conflict`, at most ``attempts`` times."""
    delay = base_delay
    for attempt in range(1, attempts + 1):
        try:
            return await step()
        except Conflict:
            if attempt == attempts:
                break
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, max_delay)
    log.warning("datastore.too_many_conflicts", what=what, attempts=attempts)
    raise TooManyConflicts(f"{what}: gave up after {attempts} conflicting attempts")
