"""The agent's collector settings: the start-up heap frozen after the first sync, long pauses logged."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest
import structlog

from controller.node import gc_tuning


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()
    if gc_tuning._on_gc in gc.callbacks:
        gc.callbacks.remove(gc_tuning._on_gc)


def test_freezing_takes_the_live_heap_out_of_later_collections(unfrozen: None) -> None:
    model = [{"labels": {"app": f"a{i}"}, "ips": [f"10.0.{i // 250}.{i % 250}"]} for i in range(20_000)]
    frozen = gc_tuning.freeze_startup_heap()
    assert frozen >= len(model) and gc.get_freeze_count() == frozen
    tracked_after = len(gc.get_objects())  # the collector's generations no longer hold the model
    assert tracked_after < frozen


def test_a_long_collection_is_logged_and_a_short_one_is_not(unfrozen: None, monkeypatch: pytest.MonkeyPatch) -> None:
    gc_tuning.watch_pauses()
    gc_tuning.watch_pauses()
    assert gc.callbacks.count(gc_tuning._on_gc) == 1
    with structlog.testing.capture_logs() as logs:
        gc_tuning._on_gc("start", {"generation": 2})
        gc_tuning._on_gc("stop", {"generation": 2, "collected": 0})
        gc_tuning._on_gc("start", {"generation": 2})
        monkeypatch.setattr(time, "perf_counter", lambda: gc_tuning._started[0] + 0.2)
        gc_tuning._on_gc("stop", {"generation": 2, "collected": 7})
    pauses = [e for e in logs if e["event"] == "agent.gc_pause"]
    assert len(pauses) == 1 and pauses[0]["generation"] == 2 and pauses[0]["seconds"] == 0.2


def test_the_collector_is_off_from_start_until_the_freeze(unfrozen: None) -> None:
    try:
        gc_tuning.hold_during_start()
        assert not gc.isenabled()
        gc_tuning.freeze_startup_heap()
        assert gc.isenabled() and gc_tuning._hold is None
    finally:
        gc.enable()


def test_the_collector_comes_back_if_the_first_sync_never_does(unfrozen: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_tuning, "START_HOLD_MAX_S", 0.05)
    try:
        gc_tuning.hold_during_start()
        assert not gc.isenabled()
        deadline = time.monotonic() + 5
        while not gc.isenabled() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gc.isenabled()
    finally:
        if gc_tuning._hold is not None:
            gc_tuning._hold.cancel()
        gc.enable()
