"""Controller-side readers and writers of resources while a large apply holds keys staged (real etcd).

A ``tabbyctl apply`` larger than one transaction writes staging envelopes under the final keys
(datastore/staged.py) and makes them visible with one commit. Readers must see the previous value
until the commit and the new one after it; a compare-and-swap writer must not touch a staged key
(its compare on mod_revision would succeed and corrupt the envelope). Checked here for the node
lifecycle's view, ``ipam check``'s live allocations, the Kubernetes sync's endpoint labels and Node
``orchRefs``, and the agent's own read-modify-writes of its Node (``staged.get_for_update``, the
liveness mark).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import pytest

from controller.cluster.kubesync import NodeSync, PodLabels
from controller.cluster.nodes import NodeLifecycle, read_view
from controller.node.inuse import live_allocations
from controller.node.liveness import ANNOTATION_LIVENESS, LeaseKeeper
from datastore import Conflict, Datastore, EtcdConfig, staged
from datastore.keys import resource_key
from ipam import IPAMClient

from .helpers import INTENT, add_node, stage, wep_key, write_wep

pytestmark = pytest.mark.slow


def _node_doc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name}, "spec": spec}


async def _staged_node(ds: Datastore, name: str, **spec: Any) -> tuple[str, bytes]:
    """A plain Node ``name``, then a pending intent staging a new value of it: (key, envelope)."""
    await add_node(ds, name)
    key = resource_key("nodes", name)
    return key, await stage(ds, key, _node_doc(name, **spec), staged.PENDING)


def _wep_doc(node: str, container: str, ip: str, pod: str = "") -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{node}-cni-{container}-eth0", "namespace": "default"},
        "spec": {"node": node, "orchestrator": "k8s" if pod else "cni", "pod": pod, "endpoint": "eth0",
                 "containerID": container, "interfaceName": f"tab{container[:11]}", "ipNetworks": [f"{ip}/32"]},
    }


def test_node_lifecycle_view_resolves_staged_values_and_never_deletes_them(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            # An endpoint of node "gone" exists; a large apply stages a second one (pending) and an
            # update of the first that moves it to node "other".
            await write_wep(ds, "gone", "c1", "10.65.0.1")
            moved = _wep_doc("other", "c1", "10.65.0.1")
            await stage(ds, wep_key("gone", "c1"), moved, staged.PENDING)
            await stage(ds, wep_key("gone", "c2"), _wep_doc("gone", "c2", "10.65.0.2"), staged.PENDING)
            view = await read_view(ds)
            assert view.busy == {wep_key("gone", "c1"), wep_key("gone", "c2")}
            # Pending: the first endpoint reads as before the apply, the staged create as absent.
            assert [(kv.key, doc["spec"]["node"]) for kv, doc in view.weps] == [(wep_key("gone", "c1"), "gone")]
            # Cleaning up node "gone" deletes none of its endpoints: the intent holds them.
            ipam = IPAMClient(ds)
            await NodeLifecycle(ds, ipam).cleanup("gone", view)
            assert (await ds.get(wep_key("gone", "c1"))) is not None
            assert staged.kv_is_staged(await ds.get(wep_key("gone", "c1")))  # type: ignore[arg-type]
            # Committed (not yet cleaned up): the new values.
            await ds.put(staged.RECORDS + INTENT, {"intent": INTENT, "state": staged.COMMITTED, "keys": 2})
            view = await read_view(ds)
            assert sorted((kv.key, doc["spec"]["node"]) for kv, doc in view.weps) == [
                (wep_key("gone", "c1"), "other"), (wep_key("gone", "c2"), "gone")]
            assert view.referenced_nodes() >= {"other", "gone"}

    asyncio.run(go())


def test_ipam_check_live_allocations_follow_the_intent_state(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            await stage(ds, wep_key("n1", "c9"), _wep_doc("n1", "c9", "10.65.0.9"), staged.PENDING)
            assert "10.65.0.9" not in await live_allocations(ds)  # not visible yet
            await ds.put(staged.RECORDS + INTENT, {"intent": INTENT, "state": staged.COMMITTED, "keys": 1})
            assert "10.65.0.9" in await live_allocations(ds)  # committed: a live pod holds it

    asyncio.run(go())


def test_kube_sync_leaves_staged_endpoints_and_nodes_alone(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            key = wep_key("n1", "c3")
            envelope = await stage(ds, key, _wep_doc("n1", "c3", "10.65.0.3", pod="web"), staged.PENDING)
            labels = PodLabels(ds, Counter())
            labels.pods[("default", "web")] = {"app": "web"}
            kv = await ds.get(key)
            assert kv is not None
            assert labels._index(kv) is None  # indexed once its plain value lands, not now
            labels.endpoints[key] = ("default", "web")
            await labels._relabel(key)
            assert (await ds.get(key)).value == envelope  # type: ignore[union-attr]

            await add_node(ds, "n1")
            node_env = await stage(ds, resource_key("nodes", "n1"),
                                    _node_doc("n1", bgp={"ipv4Address": "10.0.0.1/24"}), staged.PENDING)
            nodes = NodeSync(ds, Counter())
            await nodes.replace([{"metadata": {"name": "n1"}}])
            assert (await ds.get(resource_key("nodes", "n1"))).value == node_env  # type: ignore[union-attr]

            # The intent rolls back: the plain previous value is written, and now the sync acts on it.
            await staged._roll_back(ds, INTENT, [resource_key("nodes", "n1")])
            await nodes.replace([{"metadata": {"name": "n1"}}])
            node = (await ds.get(resource_key("nodes", "n1"))).json()  # type: ignore[union-attr]
            assert node["spec"]["orchRefs"] == [{"orchestrator": "k8s", "nodeName": "n1"}]

    asyncio.run(go())


def test_get_for_update_refuses_a_live_intents_key_and_recovers_a_dead_ones(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            assert await staged.get_for_update(ds, resource_key("nodes", "n2")) is None
            key, _ = await _staged_node(ds, "n2", asNumber=65001)
            plain = staged.resolve_kv(await ds.get(key), {})  # type: ignore[arg-type]
            await ds.put(staged.KEY_CHUNKS + INTENT + "/000000", [key])
            await ds.put(staged.OWNERS + INTENT, {"intent": INTENT})  # its writer is alive
            with pytest.raises(Conflict):
                await staged.get_for_update(ds, key)
            await ds.delete(staged.OWNERS + INTENT)  # the writer died (its lease expired)
            back = await staged.get_for_update(ds, key)  # rolled back, as the next writer would
            assert back is not None and back.value == plain.value  # type: ignore[union-attr]
            assert (await ds.list(staged.INTENTS))[0] == []

    asyncio.run(go())


def test_liveness_mark_waits_for_a_staged_node_and_lands_at_a_renewal(etcd_config: EtcdConfig) -> None:
    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            key, envelope = await _staged_node(ds, "n3")
            await ds.put(staged.OWNERS + INTENT, {"intent": INTENT})
            keeper = LeaseKeeper(etcd_config, "n3", ttl=2)
            task = asyncio.create_task(keeper.run())
            try:
                for _ in range(100):
                    if keeper.grants:
                        break
                    await asyncio.sleep(0.05)
                assert keeper.grants == 1 and not keeper.marked
                assert (await ds.get(key)).value == envelope  # type: ignore[union-attr]
                await staged._roll_back(ds, INTENT, [key])  # the apply gives up: the plain Node is back
                await ds.delete(staged.OWNERS + INTENT)
                for _ in range(100):
                    if keeper.marked:
                        break
                    await asyncio.sleep(0.05)
                assert keeper.marked
                node = (await ds.get(key)).json()  # type: ignore[union-attr]
                assert node["metadata"]["annotations"][ANNOTATION_LIVENESS] == "2"
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(go())


def test_node_status_report_skips_a_staged_calico_node_status(etcd_config: EtcdConfig) -> None:
    """The agent writes CalicoNodeStatus ``status`` against the model's revision; while a large apply
    holds the object staged, that revision is the envelope's, and the write would replace the
    envelope (the apply's new spec lost). The reporter skips it until the clean-up's plain value."""
    from types import SimpleNamespace

    from controller.node.model import Model
    from controller.node.nodestatus import NodeStatusReporter
    from datastore import WatchEvent, WatchResync

    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            key = resource_key("caliconodestatuses", "status-n4")
            doc = {"apiVersion": "projectcalico.org/v3", "kind": "CalicoNodeStatus",
                   "metadata": {"name": "status-n4"},
                   "spec": {"node": "n4", "classes": ["Agent"], "updatePeriodSeconds": 1}}
            await ds.put(key, doc)
            model = Model("n4")
            model.apply(WatchResync([await ds.get(key)], 1))  # type: ignore[list-item]
            agent = SimpleNamespace(config=SimpleNamespace(nodename="n4"), model=model, ds=ds, interface="eth0",
                                    bgp_status=lambda: {"ready": True})
            reporter = NodeStatusReporter(agent)  # type: ignore[arg-type]
            assert await reporter.once() == 1
            model.apply(WatchEvent("put", await ds.get(key)))  # type: ignore[arg-type]
            envelope = await stage(ds, key, {**doc, "spec": {**doc["spec"], "classes": ["Agent", "BGP"]}},
                                   staged.PENDING)
            model.apply(WatchEvent("put", await ds.get(key)))  # type: ignore[arg-type]
            reporter._last.clear()  # due again
            assert await reporter.once() == 0
            assert (await ds.get(key)).value == envelope  # type: ignore[union-attr]
            # The apply lands: its clean-up writes the new value plainly, and the report resumes on it.
            await ds.put(key, {**doc, "spec": {**doc["spec"], "classes": ["Agent", "BGP"]}})
            await ds.delete(staged.RECORDS + INTENT)
            model.apply(WatchEvent("put", await ds.get(key)))  # type: ignore[arg-type]
            assert await reporter.once() == 1
            stored = (await ds.get(key)).json()  # type: ignore[union-attr]
            assert stored["spec"]["classes"] == ["Agent", "BGP"] and stored["status"]["agent"]

    asyncio.run(go())
