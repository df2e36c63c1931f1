"""Watch health and large lists against a real etcd: a silent watch (etcd SIGSTOPped) is detected
within the progress bound and resynced after SIGCONT; an idle healthy watch stays fresh (etcd 3.4
answers progress requests); lists are paginated at one revision and skip prefixes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore import Datastore, EtcdConfig, WatchEvent, WatchHealth, WatchResync
from datastore.watch import watch_prefix
from tests.helpers.etcd import EtcdCluster, EtcdServer, private_etcd

INTERVAL = 0.5
TIMEOUT = 1.0


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd only this test uses: it gets SIGSTOPped, which must not stall anyone else's tests."""
    with private_etcd(tmp_path / "etcd") as server:
        yield server


def test_idle_watch_stays_fresh_on_progress_replies(etcd_config: EtcdConfig) -> None:
    """Nothing is written for several progress intervals: etcd answers every progress request, so the
    watch never turns stale (this fails if the server ignores WatchProgressRequest)."""

    async def go() -> None:
        health = WatchHealth()
        async with Datastore(etcd_config) as ds:
            await ds.put("idle/a", "1")

            async def consume() -> None:
                async for _item in watch_prefix(ds, "idle/", health=health, progress_interval=INTERVAL,
                                                progress_timeout=TIMEOUT):
                    pass

            task = asyncio.create_task(consume())
            try:
                await asyncio.sleep(INTERVAL * 8)
            finally:
                task.cancel()
        assert health.fresh and health.stale_count == 0, health

    run(go())


def test_silent_watch_is_detected_and_resynced(tmp_path: Path, own_etcd: EtcdServer) -> None:
    cfg = EtcdConfig(endpoints=(own_etcd.endpoint,), prefix="/silent/", rpc_timeout=1.0, connect_timeout=2.0)
    assert own_etcd.proc is not None
    pid = own_etcd.proc.pid

    async def go() -> None:
        items: list[WatchEvent | WatchResync] = []
        transitions: list[tuple[bool, float]] = []
        health = WatchHealth(on_change=lambda h: transitions.append((h.fresh, time.monotonic())))
        async with Datastore(cfg) as writer, Datastore(cfg) as reader:
            await writer.put("k/a", "1")

            async def consume() -> None:
                async for item in watch_prefix(reader, "k/", health=health, progress_interval=INTERVAL,
                                               progress_timeout=TIMEOUT):
                    items.append(item)

            task = asyncio.create_task(consume())
            try:
                await wait_for(lambda: health.fresh and items, 10)
                await writer.put("k/b", "2")
                await wait_for(lambda: len(items) == 2, 10)
                os.kill(pid, signal.SIGSTOP)
                stopped = time.monotonic()
                await wait_for(lambda: not health.fresh, 15)
                detected = time.monotonic() - stopped
                assert detected <= INTERVAL + TIMEOUT + 1.5, detected  # the bound, plus scheduling slack
                assert "silent" in health.reason, health.reason
                await asyncio.sleep(1.0)
                assert not health.fresh  # still stopped: stays stale
                os.kill(pid, signal.SIGCONT)
                await wait_for(lambda: health.fresh, 20)
                # resynced: a second full snapshot, then live events again
                resyncs = [i for i in items if isinstance(i, WatchResync)]
                assert len(resyncs) == 2, items
                assert [kv.key for kv in resyncs[1].kvs] == ["k/a", "k/b"]
                await writer.put("k/c", "3")
                await wait_for(lambda: isinstance(items[-1], WatchEvent) and items[-1].kv.key == "k/c", 10)
            finally:
                task.cancel()
        assert [f for f, _ in transitions] == [True, False, True], transitions

    run(go())


def test_list_is_paginated_at_one_revision(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            for i in range(10):
                await ds.put(f"p/{i:02d}", str(i))
            pages = []
            async for page, rev in ds.list_pages("p/", page_size=3):
                pages.append(([kv.key for kv in page], rev))
                await ds.put("p/05x", "written between pages")  # after the first page's revision: not listed
            assert [len(keys) for keys, _ in pages] == [3, 3, 3, 1]
            assert len({rev for _, rev in pages}) == 1
            assert [k for keys, _ in pages for k in keys] == [f"p/{i:02d}" for i in range(10)]
            kvs, rev = await ds.list("p/", page_size=4)
            assert len(kvs) == 11 and rev == await ds.revision()
            # an empty prefix is one empty page at the current revision
            assert await ds.list("nothing/", page_size=2) == ([], await ds.revision())

    run(go())


def test_list_and_watch_skip_prefixes(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            for key in ("ipam/v2/block/a", "ipam/v2/handle/h1", "ipam/v2/handle/h2", "ipam/v2/z", "res/x"):
                await ds.put(key, "1")
            kvs, _ = await ds.list("", page_size=1, skip=("ipam/v2/handle/",))
            assert [kv.key for kv in kvs] == ["ipam/v2/block/a", "ipam/v2/z", "res/x"]
            items: list[WatchEvent | WatchResync] = []

            async def consume() -> None:
                async for item in watch_prefix(ds, "", skip=("ipam/v2/handle/",), page_size=2):
                    items.append(item)

            task = asyncio.create_task(consume())
            try:
                await wait_for(lambda: items, 10)
                await ds.put("ipam/v2/handle/h3", "1")
                await ds.put("res/y", "1")
                await wait_for(lambda: len(items) >= 2, 10)
                await asyncio.sleep(0.2)
            finally:
                task.cancel()
            assert isinstance(items[0], WatchResync)
            assert [kv.key for kv in items[0].kvs] == ["ipam/v2/block/a", "ipam/v2/z", "res/x"]
            assert [i.kv.key for i in items[1:] if isinstance(i, WatchEvent)] == ["res/y"]

    run(go())


async def wait_for(cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_member_without_leader_ends_the_watch(tmp_path: Path) -> None:
    """etcd 3.4 answers progress requests from the member's own state, leader or not (checked: without the
    require-leader metadata this test fails): only require-leader makes a member cut off from its peers
    end the stream. Two of three members stopped -> stale with "no leader"; continued -> fresh again."""
    cluster = EtcdCluster(tmp_path / "cluster")
    cluster.start()
    try:
        cfg = EtcdConfig(endpoints=(cluster.endpoint(2),), prefix="/leader/", rpc_timeout=1.0, connect_timeout=2.0)

        async def go() -> None:
            health = WatchHealth()
            async with Datastore(cfg) as ds:
                await ds.put("k/a", "1")

                async def consume() -> None:
                    async for _item in watch_prefix(ds, "k/", health=health, progress_interval=INTERVAL,
                                                    progress_timeout=TIMEOUT):
                        pass

                task = asyncio.create_task(consume())
                try:
                    await wait_for(lambda: health.fresh, 10)
                    cluster.signal(0, signal.SIGSTOP)
                    cluster.signal(1, signal.SIGSTOP)
                    stopped = time.monotonic()
                    await wait_for(lambda: not health.fresh, 20)
                    detected = time.monotonic() - stopped
                    assert detected < 10, detected
                    assert "no leader" in health.reason, health.reason  # require-leader, not the progress bound
                    cluster.signal(0, signal.SIGCONT)
                    cluster.signal(1, signal.SIGCONT)
                    await wait_for(lambda: health.fresh, 30)
                finally:
                    task.cancel()

        run(go())
    finally:
        cluster.stop()
