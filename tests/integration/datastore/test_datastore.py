"""The etcd client against a real etcd: transactions, fail-over, watches through restarts."""

from __future__ import annotations

import asyncio
import time

import pytest

from datastore import Datastore, DatastoreUnavailable, Delete, EtcdConfig, Put, mod_is
from datastore.watch import WatchEvent, WatchResync, watch_prefix
from tests.helpers.etcd import EtcdServer, free_port


def run(coro):
    return asyncio.run(coro)


def test_create_compare_and_multi_key_txn(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            first = await ds.txn([mod_is("a", 0)], [Put("a", {"n": 1})])
            assert first.succeeded
            again = await ds.txn([mod_is("a", 0)], [Put("a", {"n": 2})])
            assert not again.succeeded
            kv = await ds.get("a")
            assert kv is not None and kv.json() == {"n": 1}
            # A multi-key change lands whole or not at all.
            stale = await ds.txn(
                [mod_is("a", kv.mod_revision), mod_is("b", 123456)], [Put("a", {"n": 3}), Put("b", "x")]
            )
            assert not stale.succeeded
            assert (await ds.get("b")) is None
            assert (await ds.get("a")).json() == {"n": 1}  # type: ignore[union-attr]
            both = await ds.txn([mod_is("a", kv.mod_revision), mod_is("b", 0)], [Delete("a"), Put("b", "x")])
            assert both.succeeded
            kvs, rev = await ds.list("")
            assert [k.key for k in kvs] == ["b"] and rev >= both.revision

    run(go())


def test_keys_are_private_to_the_prefix(etcd_server: EtcdServer) -> None:
    async def go() -> None:
        a = EtcdConfig(endpoints=(etcd_server.endpoint,), prefix="/tabby-iso-a/")
        b = a.with_prefix("/tabby-iso-b/")
        async with Datastore(a) as da, Datastore(b) as db:
            await da.put("k", "a")
            assert await db.get("k") is None
            assert [kv.key for kv in (await da.list(""))[0]] == ["k"]
            await da.delete_prefix("")

    run(go())


def test_unreachable_is_one_error_naming_endpoints_within_bound() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = EtcdConfig(endpoints=(dead,), connect_timeout=1.0)

    async def go() -> None:
        async with Datastore(cfg):
            pass

    start = time.monotonic()
    with pytest.raises(DatastoreUnavailable) as info:
        run(go())
    assert time.monotonic() - start < 5
    assert dead in str(info.value)


def test_fails_over_to_a_live_endpoint(etcd_config: EtcdConfig, etcd_server: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = EtcdConfig(endpoints=(dead, etcd_server.endpoint), prefix=etcd_config.prefix, connect_timeout=5)

    async def go() -> None:
        async with Datastore(cfg) as ds:
            await ds.put("x", "1")
            assert (await ds.get("x")).value == b"1"  # type: ignore[union-attr]

    run(go())


def test_lease_expiry_removes_keys(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            lease = await ds.lease_grant(1)
            await ds.put("live", "1", lease=lease)
            assert await ds.lease_keepalive(lease) > 0
            deadline = time.monotonic() + 10
            while await ds.get("live") is not None:
                assert time.monotonic() < deadline, "leased key outlived its lease"
                await asyncio.sleep(0.2)

    run(go())


def test_watch_resumes_after_etcd_restart_without_gaps(etcd_config: EtcdConfig, etcd_server: EtcdServer) -> None:
    """Writes made while etcd restarts and the watch reconnects are all delivered, in order."""

    async def go() -> None:
        seen: list[str] = []
        async with Datastore(etcd_config) as writer, Datastore(etcd_config) as reader:
            await writer.put("w/0", "0")

            async def consume() -> None:
                async for item in watch_prefix(reader, "w/"):
                    if isinstance(item, WatchResync):
                        seen.extend(kv.key for kv in item.kvs)
                    elif isinstance(item, WatchEvent) and item.kind == "put":
                        seen.append(item.kv.key)

            task = asyncio.create_task(consume())
            try:
                for i in range(1, 4):
                    await writer.put(f"w/{i}", str(i))
                await asyncio.sleep(0.3)
                etcd_server.kill()
                etcd_server.start()
                for i in range(4, 8):
                    await writer.put(f"w/{i}", str(i))
                deadline = time.monotonic() + 20
                while len(seen) < 8 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
            finally:
                task.cancel()
        assert seen == [f"w/{i}" for i in range(8)]

    run(go())


def test_watch_falls_back_to_resync_after_compaction(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            await ds.put("c/a", "1")
            start_rev = (await ds.get("c/a")).mod_revision  # type: ignore[union-attr]
            await ds.put("c/b", "2")
            await ds.delete("c/a")
            await ds.put("c/c", "3")
            last = (await ds.get("c/c")).mod_revision  # type: ignore[union-attr]
            await ds.compact(last)
            items = []
            async for item in watch_prefix(ds, "c/", start_revision=start_rev):
                items.append(item)
                break
            assert isinstance(items[0], WatchResync)
            assert [kv.key for kv in items[0].kvs] == ["c/b", "c/c"]

    run(go())


def test_unreachable_with_credentials_is_the_same_one_error() -> None:
    """With a username the client authenticates while connecting: a dead endpoint must still fail over
    and end in DatastoreUnavailable, not a raw client error."""
    dead = (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    cfg = EtcdConfig(endpoints=dead, username="root", password="secret", connect_timeout=1.0)

    async def go() -> None:
        async with Datastore(cfg):
            pass

    with pytest.raises(DatastoreUnavailable) as info:
        run(go())
    assert all(url in str(info.value) for url in dead)
