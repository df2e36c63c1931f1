"""ResourceStore used directly (as the node agent and controller will): the async API's contract."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from controller.resource_store import NotFound, Ref, ResourceStore, StoreError, UpdateConflict
from datamodel.resources import IPPool, parse_documents
from datastore import Datastore, EtcdConfig
from datastore.keys import GUARDS


def pool(name: str, cidr: str, **spec: Any) -> IPPool:
    extra = "".join(f"\n  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in spec.items())
    text = f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {name}\nspec:\n  cidr: {cidr}{extra}\n"
    (res,) = parse_documents(text, "test")
    assert isinstance(res, IPPool)
    return res


def run(etcd_config: EtcdConfig, body: Any) -> Any:
    async def main() -> Any:
        async with Datastore(etcd_config) as ds:
            return await body(ds)

    return asyncio.run(main())


def test_write_returns_stored_resources_with_revision(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore) -> None:
        store = ResourceStore(ds)
        out = await store.create([pool("a", "10.1.0.0/16"), pool("b", "10.2.0.0/16")])
        assert [r.name for r in out.done] == ["a", "b"]
        assert {r.metadata.resourceVersion for r in out.done} == {str(out.revision)}
        got = await store.get(IPPool, "a")
        assert got.metadata.resourceVersion == str(out.revision)
        assert got.metadata.uid == out.done[0].metadata.uid
        items, rev = await store.list(IPPool)
        assert [i.name for i in items] == ["a", "b"] and rev >= out.revision
        # The guard key lives outside every resource prefix: listings never see it.
        assert (await ds.get(GUARDS + "ippools")) is not None
        with pytest.raises(NotFound) as missing:
            await store.get(IPPool, "zzz")
        assert missing.value.problems == ["resource does not exist: IPPool zzz"]

    run(etcd_config, body)


def test_replace_with_resource_version(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore) -> None:
        store = ResourceStore(ds)
        created = (await store.create([pool("a", "10.1.0.0/16")])).done[0]
        doc = created.to_dict()
        doc["spec"]["natOutgoing"] = True
        (fresh,) = parse_documents(json.dumps(doc), "t")
        replaced = (await store.replace([fresh])).done[0]
        assert replaced.spec.natOutgoing is True
        assert replaced.metadata.creationTimestamp == created.metadata.creationTimestamp
        with pytest.raises(UpdateConflict):
            await store.replace([fresh])  # carries the old resourceVersion

    run(etcd_config, body)


def test_concurrent_modifies_all_land(etcd_config: EtcdConfig) -> None:
    """Twenty label changes racing on one resource: compare-on-revision + retry keeps every one."""

    async def body(ds: Datastore) -> None:
        store = ResourceStore(ds)
        await store.create([pool("a", "10.1.0.0/16")])

        def add(i: int) -> Any:
            def mutate(doc: dict[str, Any]) -> dict[str, Any]:
                doc["metadata"].setdefault("labels", {})[f"k{i}"] = str(i)
                return doc

            return mutate

        await asyncio.gather(*(store.modify(IPPool, "a", None, add(i)) for i in range(20)))
        labels = (await store.get(IPPool, "a")).metadata.labels
        assert labels == {f"k{i}": str(i) for i in range(20)}

    run(etcd_config, body)


def test_delete_uses_the_allocation_counter(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore) -> None:
        counts = {"10.1.0.0/16": 1}

        async def count(cidr: str) -> int:
            return counts.get(cidr, 0)

        store = ResourceStore(ds, allocation_count=count)
        await store.create([pool("a", "10.1.0.0/16"), pool("b", "10.2.0.0/16")])
        with pytest.raises(StoreError) as refused:
            await store.delete([Ref(IPPool, "a"), Ref(IPPool, "b")])
        assert refused.value.problems == [
            "IPPool a still has 1 allocated address: disable it (spec.disabled: true) and release them first"
        ]
        assert len((await store.list(IPPool))[0]) == 2  # nothing deleted, not even b
        counts.clear()
        out = await store.delete([Ref(IPPool, "a"), Ref(IPPool, "b")])
        assert sorted(r.name for r in out.done) == ["a", "b"]

    run(etcd_config, body)


def test_duplicate_names_in_one_input_refused(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore) -> None:
        with pytest.raises(StoreError) as dup:
            await ResourceStore(ds).apply([pool("a", "10.1.0.0/16"), pool("a", "10.1.0.0/16", natOutgoing=True)])
        assert dup.value.problems == ["IPPool a: appears twice in the input (documents 1 and 2)"]

    run(etcd_config, body)


def test_a_tier_delete_racing_a_policy_created_in_it_never_orphans_the_policy(etcd_config: EtcdConfig) -> None:
    """The delete's check finds the tier empty; a policy is created in it before the delete commits (the
    policy's own check found the tier present). The tiers' guard makes the delete's commit fail, and the
    delete, planned again, sees the policy and is refused."""
    (tier,) = parse_documents("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\n"
                              "spec: {order: 100}\n", "t")
    (policy,) = parse_documents("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n"
                                "metadata: {name: security.deny-all}\nspec: {tier: security, selector: all()}\n",
                                "t")

    async def body(ds: Datastore) -> None:
        deleter, writer = ResourceStore(ds), ResourceStore(ds)
        await writer.create([tier])
        checks = 0
        real = deleter._tier_delete_problems

        async def racing(tiers: Any, deleting: set[str]) -> list[str]:
            nonlocal checks
            checks += 1
            problems = await real(tiers, deleting)
            if checks == 1:
                assert problems == []  # empty when checked...
                await writer.create([policy])  # ...and a policy lands in it before the delete commits
            return problems

        deleter._tier_delete_problems = racing  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="Cannot delete a non-empty tier"):
            await deleter.delete([Ref.of(tier)])
        assert checks == 2
        assert (await writer.get(type(tier), "security")).name == "security"
        assert (await writer.get(type(policy), "security.deny-all")).name == "security.deny-all"

    run(etcd_config, body)
