"""Silence detection of datastore.watch without etcd: a fake stream stands in for the gRPC call, so the
timing rules (progress request after the interval, stale after the timeout, no false alarm when the
event loop was starved) are checked exactly; plus WatchHealth and the list's key ranges."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from datastore import Datastore, EtcdConfig, WatchHealth, WatchSilent
from datastore.watch import _responses


class FakeStream:
    """Answers each progress request after ``hops`` loop iterations (like grpc's reader chain), or never."""

    def __init__(self, answer: bool = True, hops: int = 6) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.answer = answer
        self.hops = hops
        self.requests: list[float] = []

    async def next(self, timeout: float) -> Any:
        if not self.queue.empty():
            return self.queue.get_nowait()
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def request_progress(self, timeout: float) -> None:
        self.requests.append(time.monotonic())
        if self.answer:
            loop = asyncio.get_running_loop()

            def hop(left: int) -> None:
                if left:
                    loop.call_soon(hop, left - 1)
                else:
                    self.queue.put_nowait("progress")

            loop.call_later(0.05, hop, self.hops)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_unanswered_progress_request_means_silent_within_the_bound() -> None:
    async def go() -> float:
        stream = FakeStream(answer=False)
        start = time.monotonic()
        with pytest.raises(WatchSilent, match=r"no reply to a progress request within 0\.3s"):
            async for _ in _responses(stream, 0.2, 0.3):  # type: ignore[arg-type]
                pass
        assert len(stream.requests) == 1
        return time.monotonic() - start

    elapsed = run(go())
    assert 0.45 <= elapsed <= 1.0, elapsed


def test_answered_progress_requests_keep_the_stream_alive() -> None:
    async def go() -> int:
        stream = FakeStream()
        got = 0

        async def consume() -> None:
            nonlocal got
            async for _ in _responses(stream, 0.1, 0.3):  # type: ignore[arg-type]
                got += 1

        task = asyncio.create_task(consume())
        await asyncio.sleep(1.2)
        assert not task.done(), task
        task.cancel()
        return got

    assert run(go()) >= 4


def test_a_starved_event_loop_is_not_taken_for_a_silent_stream() -> None:
    """The consumer blocks the loop past the timeout right after a progress request went out; the reply
    needs a few loop iterations to reach the queue. The wait that timed out late must not count."""

    async def go() -> None:
        stream = FakeStream(hops=8)
        seen: list[Any] = []

        async def consume() -> None:
            async for item in _responses(stream, 0.1, 0.3):  # type: ignore[arg-type]
                seen.append(item)

        task = asyncio.create_task(consume())
        while not stream.requests:
            await asyncio.sleep(0.01)
        time.sleep(0.8)  # starve the loop: the reply's timer and the timeout both fire late
        await asyncio.sleep(0.3)
        assert not task.done(), task.exception()
        assert seen, "the reply was never read"
        task.cancel()

    run(go())


def test_health_transitions_and_bounded_wait() -> None:
    async def go() -> None:
        changes: list[bool] = []
        health = WatchHealth(on_change=lambda h: changes.append(h.fresh))
        assert not health.fresh and await health.wait_fresh(0.05) is False
        health.mark_fresh()
        health.mark_fresh()
        health.mark_stale("a")
        health.mark_stale("b")  # already stale: reason updated, no new transition
        assert (health.reason, health.stale_count) == ("b", 1)
        asyncio.get_running_loop().call_later(0.05, health.mark_fresh)
        assert await health.wait_fresh(2.0) is True
        assert changes == [True, False, True]

    run(go())


def test_list_ranges_leave_out_skipped_prefixes() -> None:
    ds = Datastore(EtcdConfig(prefix="/p/"))
    assert ds._ranges("", ()) == [(b"/p/", b"/p0")]
    assert ds._ranges("", ("ipam/v2/handle/", "resources/guards/")) == [
        (b"/p/", b"/p/ipam/v2/handle/"),
        (b"/p/ipam/v2/handle0", b"/p/resources/guards/"),
        (b"/p/resources/guards0", b"/p0"),
    ]
    assert ds._ranges("ipam/", ("resources/guards/",)) == [(b"/p/ipam/", b"/p/ipam0")]  # skip outside: no hole
