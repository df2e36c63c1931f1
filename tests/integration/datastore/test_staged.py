"""datastore/staged.py against a real etcd: bundles larger than one transaction are all or nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from datastore import Conflict, Datastore, EtcdConfig, staged

N = 300  # three staging batches


def ops(prev: dict[str, Any] | None = None) -> list[staged.StagedOp]:
    return [staged.StagedOp(f"things/k{i:04d}", {"n": i}, 0, None) for i in range(N)]


def test_readers_see_nothing_until_the_commit_then_everything(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds, Datastore(etcd_config) as reader:
            await ds.put("things/k0000", {"n": "old"})
            seen_mid: list[int] = []

            def progress(done: int, total: int) -> None:
                seen_mid.append(done)

            writer = staged.IntentWriter(ds, progress=progress)
            bundle = [
                staged.StagedOp("things/k0000", {"n": 0}, (await ds.get("things/k0000")).mod_revision, {"n": "old"})
            ]
            bundle += ops()[1:]

            async def watch_mid() -> list[int]:
                counts = []
                while len(counts) < 50:
                    kvs, _ = await staged.read_resolved(reader, "things/")
                    counts.append(len(kvs))
                    values = {kv.key: kv.json() for kv in kvs}
                    if len(kvs) == 1:
                        assert values["things/k0000"] == {"n": "old"}
                    await asyncio.sleep(0.005)
                return counts

            watcher = asyncio.create_task(watch_mid())
            await writer.write(bundle, {})
            counts = await watcher
            assert set(counts) <= {1, N}, counts  # the old state or the whole bundle, never a part
            assert seen_mid and seen_mid[-1] == N and len(seen_mid) >= 3
            raw, _ = await ds.list("things/")
            assert len(raw) == N and not any(staged.is_staged(kv.json()) for kv in raw)
            assert (await ds.list(staged.INTENTS))[0] == []
            assert (await ds.get("things/k0000")).json() == {"n": 0}

    asyncio.run(go())


@pytest.mark.parametrize("pipeline", [1, staged.PIPELINE])
def test_conflict_mid_staging_rolls_everything_back(
    etcd_config: EtcdConfig, pipeline: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch at a time (the last fails after two landed) and pipelined (batches in flight together,
    the others cancelled or landed): either way nothing stays staged or visible."""
    monkeypatch.setattr(staged, "PIPELINE", pipeline)

    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            # Someone else created the last key after we planned (we expect it absent): the last
            # staging batch fails after two have been staged; both must be undone.
            await ds.put(f"things/k{N - 1:04d}", {"n": "someone else"})
            batches: list[int] = []
            writer = staged.IntentWriter(ds, progress=lambda done, total: batches.append(done))
            with pytest.raises(Conflict):
                await writer.write(ops(), {})
            assert len(batches) >= 2 or pipeline > 1
            kvs, _ = await ds.list("things/")
            assert [kv.json() for kv in kvs] == [{"n": "someone else"}]
            assert (await ds.list(staged.INTENTS))[0] == []

    asyncio.run(go())


def test_dead_writer_committed_intent_is_completed_pending_one_rolled_back(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            # A writer that dies after the commit, before cleaning up.
            writer = staged.IntentWriter(ds)

            async def crash(*_: Any) -> None:
                raise SystemExit("killed")

            writer._finish = crash  # type: ignore[method-assign]
            with pytest.raises(SystemExit):
                await writer.write(ops(), {})
            await ds.lease_revoke(writer._lease)  # its lease expires
            assert len((await staged.read_resolved(ds, "things/"))[0]) == N  # committed: visible already
            assert await staged.recover(ds) == [(writer.intent, "completed")]
            raw, _ = await ds.list("things/")
            assert len(raw) == N and not any(staged.is_staged(kv.json()) for kv in raw)

            # A writer that dies while staging (pending): rolled back to the previous values.
            dead = staged.IntentWriter(ds)
            await dead._begin([staged.StagedOp("things/k0001", {"n": "new"}, 0, {"n": 1})])
            kv = await ds.get("things/k0001")
            await ds.put("things/k0001", dead._envelope(staged.StagedOp("things/k0001", {"n": "new"}, 0, kv.json())))
            await dead._end()  # revokes the lease: the owner key goes
            assert (await staged.get_resolved(ds, "things/k0001")).json() == {"n": 1}
            assert await staged.recover(ds) == [(dead.intent, "rolled back")]
            assert (await ds.get("things/k0001")).json() == {"n": 1}
            assert (await ds.list(staged.INTENTS))[0] == []

    asyncio.run(go())


def test_staged_filter_releases_a_bundle_at_once() -> None:
    f = staged.StagedFilter()
    env = {staged.ENVELOPE: {"intent": "i1", "prev": None, "delete": False}, "value": {"n": 1}}
    gone = {staged.ENVELOPE: {"intent": "i1", "prev": {"n": 9}, "delete": True}, "value": None}
    assert f.feed("things/plain", {"n": 0}) == [("things/plain", {"n": 0})]
    assert f.feed(staged.RECORDS + "i1", {"state": "pending"}) == []
    assert f.feed("things/a", env) == []
    assert f.feed("things/b", gone) == []
    assert sorted(f.feed(staged.RECORDS + "i1", {"state": "committed"})) == [("things/a", {"n": 1}), ("things/b", None)]
    assert f.feed("things/a", {"n": 1}) == [("things/a", {"n": 1})]  # cleanup rewrite: same value
    # A rolled-back intent's staged values are never released.
    f.feed(staged.RECORDS + "i2", {"state": "pending"})
    assert f.feed("things/c", {staged.ENVELOPE: {"intent": "i2", "prev": None}, "value": {"n": 3}}) == []
    assert f.feed(staged.RECORDS + "i2", None) == []
    assert f.held == {}
    assert staged.resolve(env, {"i1": "pending"}) is None
    assert staged.resolve(gone, {}) == {"n": 9}
