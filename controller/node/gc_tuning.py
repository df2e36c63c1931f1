"""Garbage-collector settings for a long-running agent that holds a large, long-lived model.

Why: the agent keeps its whole model (every endpoint, policy, namespace, the compiled policy
program) for its lifetime. CPython's full (generation 2) collection walks every tracked object, and
with the heap of a 5,000-endpoint, 1,000-policy cluster that walk is a stop-the-world pause of
100 ms and more, on the event loop or on the dataplane thread, whenever it happens to land: the
policy bench saw label changes normally applied in ~16 ms take 185 ms. After the first sync the
start-up heap is moved to the permanent generation (``gc.freeze()``, which CPython's documentation
suggests for long-lived servers after start-up): later collections walk only what was allocated
since. Objects of the frozen heap that become unreachable are still freed by reference counting;
only garbage cycles among them are kept, and the model holds none by design (plain dataclasses and
dicts, replaced, not linked back).

Before that, from start until the first sync is applied, the collector is off
(:func:`hold_during_start`): building the model allocates a million objects that all stay alive,
and the collections they trigger (two full ones of 70 and 120 ms at the bench's size, plus the
young ones) only walk live objects; they are a tenth of the cold start. One collection at the
freeze takes whatever garbage the start made. If the first sync never comes (no datastore), the
collector is switched back on after ``START_HOLD_MAX_S`` regardless.

A collection longer than ``PAUSE_LOG_S`` is logged (``agent.gc_pause``) so a regression shows.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import structlog

PAUSE_LOG_S = 0.05
"""Collections longer than this are logged."""
START_HOLD_MAX_S = 120.0
"""The collector is never off longer than this at start (a first sync that does not come)."""

_log = structlog.get_logger("tabby.node.gc")
_started: list[float] = []
_hold: threading.Timer | None = None


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
        return
    if not _started:
        return
    took = time.perf_counter() - _started.pop()
    if took >= PAUSE_LOG_S:
        _log.warning("agent.gc_pause", generation=info.get("generation"), seconds=round(took, 3),
                     collected=info.get("collected"), frozen=gc.get_freeze_count())


def watch_pauses() -> None:
    """Log collections longer than PAUSE_LOG_S (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def hold_during_start() -> None:
    """Switch the collector off until :func:`freeze_startup_heap` (at most START_HOLD_MAX_S)."""
    global _hold
    gc.disable()
    if _hold is not None:
        _hold.cancel()
    _hold = threading.Timer(START_HOLD_MAX_S, _release, args=("first sync not reached",))
    _hold.daemon = True
    _hold.start()


def _release(why: str) -> None:
    if not gc.isenabled():
        gc.enable()
        _log.info("agent.gc_enabled", reason=why)


def freeze_startup_heap() -> int:
    """After the first sync: collect once, then move every surviving object out of the collector's
    reach, and switch the collector on again. Returns how many objects are now frozen."""
    global _hold
    if _hold is not None:
        _hold.cancel()
        _hold = None
    gc.collect()
    gc.freeze()
    gc.enable()
    frozen = gc.get_freeze_count()
    _log.info("agent.gc_frozen", objects=frozen)
    return frozen
