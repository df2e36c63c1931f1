"""The Kubernetes sync against a recorded Kubernetes API served over real HTTP, and a real etcd.

The API side is kube_api_server.RecordedKubeAPI replaying kube_api_recording/ (list bodies and
watch lines in the API's shapes). The sync is the real one (controller/cluster/kubesync.py over
controller/cluster/kubeapi.py): nothing of it is replaced. What is checked, in one run:

* the lists land: Namespaces (labels), NetworkPolicies, pod labels on their WorkloadEndpoints,
  ``orchRefs`` on the Tabby Nodes that are Kubernetes Nodes;
* paging: the lists are read in pages (``limit``/``continue``);
* watch events from the list's resourceVersion: a pod relabelled, a pod added (its endpoint,
  written later as the CNI plugin would, gets its labels at once), a namespace relabelled, a
  policy added;
* BOOKMARKs advance the version: the next watch starts at the bookmark's version;
* 410 Gone: history compacted while a policy was deleted with no event -> the sync relists and
  the mirrored policy goes; a tabbyctl-applied policy of the same namespace stays;
* a Kubernetes Node deleted -> its Tabby Node deleted; a lab-only Tabby Node never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from controller.cluster.kubeapi import KubeAPI, KubeAPIConfig, KubeAPIError
from controller.cluster.kubesync import MIRROR_ANNOTATION, KubeSync
from datastore import Datastore, EtcdConfig
from datastore.keys import resource_key

from .kube_api_server import RecordedKubeAPI

pytestmark = pytest.mark.slow

TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.recorded.token"


async def _wait(cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _wep(node: str, ns: str, pod: str, labels: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    name = f"{node.replace('-', '--')}-k8s-{pod.replace('-', '--')}-eth0"
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
           "metadata": {"name": name, "namespace": ns,
                        "labels": {"projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s",
                                   **(labels or {})}},
           "spec": {"orchestrator": "k8s", "node": node, "pod": pod, "workload": pod, "endpoint": "eth0",
                    "containerID": f"c-{pod}", "interfaceName": f"tab{pod[:8]}", "ipNetworks": ["10.65.0.9/32"]}}
    return resource_key("workloadendpoints", name, ns), doc


async def _doc(ds: Datastore, key: str) -> dict[str, Any] | None:
    kv = await ds.get(key)
    return None if kv is None else kv.json()


async def _labels(ds: Datastore, key: str) -> dict[str, str] | None:
    doc = await _doc(ds, key)
    return None if doc is None else (doc["metadata"].get("labels") or {})


@pytest.fixture
def kube_api(tmp_path: Path) -> Any:
    api = RecordedKubeAPI(TOKEN).start()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    try:
        yield api, KubeAPIConfig(url=api.url, token_file=token, timeout=5.0)
    finally:
        api.stop()


def test_sync_mirrors_lists_watches_bookmarks_and_relists_on_410(etcd_config: EtcdConfig, kube_api: Any) -> None:
    server, config = kube_api

    async def go() -> None:
        async with Datastore(etcd_config) as ds:
            for node in ("node-a", "node-b", "lab-only"):
                await ds.put(resource_key("nodes", node), {"apiVersion": "projectcalico.org/v3", "kind": "Node",
                                                          "metadata": {"name": node}, "spec": {}})
            web1_key, web1 = _wep("node-a", "shop", "web-1", {"stale": "label"})
            db0_key, db0 = _wep("node-b", "shop", "db-0")
            await ds.put(web1_key, web1)
            await ds.put(db0_key, db0)
            # A policy applied with tabbyctl (no mirror annotation): the sync must never delete it.
            user_np = resource_key("kubernetesnetworkpolicies", "by-hand", "shop")
            await ds.put(user_np, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                   "metadata": {"name": "by-hand", "namespace": "shop"},
                                   "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})

            sync = KubeSync(ds, KubeAPI(config), watch_timeout=2, page=2, max_backoff=0.5)
            task = asyncio.create_task(sync.run())
            try:
                await _wait(lambda: asyncio.sleep(0, sync.in_sync), 10, "the first lists")
                # Lists: pages of 2 -> the three namespaces and three pods took two requests each.
                assert len(server.list_requests("pods")) == 2
                assert server.list_requests("pods")[1]["continue"] == "pods:1000:2"
                ns = await _doc(ds, resource_key("namespaces", "shop"))
                assert ns is not None and ns["metadata"]["labels"]["team"] == "shop"
                assert ns["metadata"]["annotations"][MIRROR_ANNOTATION] == "mirror"
                assert await _doc(ds, resource_key("namespaces", "kube-system")) is not None
                np = await _doc(ds, resource_key("kubernetesnetworkpolicies", "db-allow-web", "shop"))
                assert np is not None and np["spec"]["podSelector"] == {"matchLabels": {"app": "db"}}
                assert np["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 5432}]
                # Pod labels replace what the endpoint carried (the stale label goes), plus Calico's own.
                assert await _labels(ds, web1_key) == {
                    "app": "web", "tier": "front", "projectcalico.org/namespace": "shop",
                    "projectcalico.org/orchestrator": "k8s", "projectcalico.org/serviceaccount": "web"}
                assert (await _labels(ds, db0_key) or {})["app"] == "db"
                node_a = await _doc(ds, resource_key("nodes", "node-a"))
                assert node_a is not None and node_a["spec"]["orchRefs"] == [{"orchestrator": "k8s",
                                                                               "nodeName": "node-a"}]
                lab_only = await _doc(ds, resource_key("nodes", "lab-only"))
                assert lab_only is not None and "orchRefs" not in lab_only["spec"]
                # The first watch starts at the list's version, with bookmarks asked for.
                first = server.watch_requests("pods")[0]
                assert first["resourceVersion"] == "1000" and first["allowWatchBookmarks"] == "true"

                # Watch events.
                server.play("changes")
                await _wait(lambda: _has_label(ds, web1_key, "version", "v2"), 5, "web-1 relabelled")
                await _wait(lambda: _has_label(ds, resource_key("namespaces", "shop"), "env", "prod"), 5,
                            "namespace shop relabelled")
                await _wait(lambda: _exists(ds, resource_key("kubernetesnetworkpolicies", "default-deny", "shop")),
                            5, "the new policy")
                # web-2 was ADDED before its endpoint exists; the CNI ADD writes it unlabelled.
                web2_key, web2 = _wep("node-b", "shop", "web-2")
                await ds.put(web2_key, web2)
                await _wait(lambda: _has_label(ds, web2_key, "app", "web"), 5, "web-2's endpoint labelled")

                # Bookmarks: the next watch (after the 2 s timeout ends this one) starts at 1100.
                server.play("bookmarks")
                await _wait(lambda: asyncio.sleep(0, any(r["resourceVersion"] == "1100"
                                                         for r in server.watch_requests("networkpolicies"))),
                            6, "a watch from the bookmark's version")
                assert sync.stats[("networkpolicies", "bookmarks")] >= 1
                assert all(r["resourceVersion"] != "1000" for r in server.watch_requests("networkpolicies")[1:])

                # 410 Gone: a policy deleted while the history is compacted and the watch dropped.
                lists_before = len(server.list_requests("networkpolicies"))
                server.silently("networkpolicies", "shop/db-allow-web")
                await _wait(lambda: _absent(ds, resource_key("kubernetesnetworkpolicies", "db-allow-web", "shop")),
                            8, "the silently deleted policy removed by the relist")
                assert sync.stats[("networkpolicies", "relists")] >= 1
                assert len(server.list_requests("networkpolicies")) > lists_before
                assert await _exists(ds, user_np), "a tabbyctl-applied policy was deleted by the relist"
                assert await _exists(ds, resource_key("kubernetesnetworkpolicies", "default-deny", "shop"))

                # A Kubernetes Node deleted: its Tabby Node goes; the lab-only one stays.
                server.play("node-deleted")
                await _wait(lambda: _absent(ds, resource_key("nodes", "node-b")), 8, "Tabby Node node-b deleted")
                assert await _exists(ds, resource_key("nodes", "lab-only"))
                assert await _exists(ds, resource_key("nodes", "node-a"))
                assert sync.stats[("nodes", "deletes")] == 1
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(go())


async def _has_label(ds: Datastore, key: str, label: str, value: str) -> bool:
    return ((await _labels(ds, key)) or {}).get(label) == value


async def _exists(ds: Datastore, key: str) -> bool:
    return await ds.get(key) is not None


async def _absent(ds: Datastore, key: str) -> bool:
    return await ds.get(key) is None


def test_wrong_token_is_one_clear_error(kube_api: Any, tmp_path: Path) -> None:
    _server, config = kube_api
    bad = tmp_path / "bad-token"
    bad.write_text("nope")
    api = KubeAPI(KubeAPIConfig(url=config.url, token_file=bad, timeout=5.0))
    with pytest.raises(KubeAPIError) as err:
        asyncio.run(api.get("/api/v1/nodes", {"limit": 1}))
    assert err.value.status == 401 and "Unauthorized" in str(err.value)


def test_controller_runs_the_sync_while_leading(etcd_config: EtcdConfig, kube_api: Any) -> None:
    """tabby-controller with TABBY_KUBE_API set: the leader mirrors the API; its metrics say so; a
    Kubernetes Node deleted ends in the node cleanup (its Tabby Node, then its block affinity)."""
    from controller.cluster.config import ControllerConfig
    from controller.cluster.service import Controller
    from datastore.keys import affinity_prefix
    from ipam import IPAMClient

    from .helpers import add_node, add_pool, allocate_pod

    server, config = kube_api

    async def go() -> None:
        env = {"ETCD_ENDPOINTS": ",".join(etcd_config.endpoints), "TABBY_ETCD_PREFIX": etcd_config.prefix,
               "TABBY_KUBE_API": server.url, "TABBY_KUBE_TOKEN_FILE": str(config.token_file),
               "TABBY_CONTROLLER_INTERVAL": "0.5", "TABBY_LEADER_TTL": "3", "TABBY_CONTROLLER_ID": "c1",
               "TABBY_CONTROLLER_PROMETHEUSMETRICSPORT": "0", "TABBY_NODE_CLEANUP_DELAY": "0.5"}
        async with Datastore(etcd_config) as ds:
            await add_pool(ds, "pool1", "10.65.0.0/16")
            for node in ("node-a", "node-b"):
                await add_node(ds, node)
                await allocate_pod(IPAMClient(ds), node, f"c-{node}")
        controller = Controller(ControllerConfig.from_env(env))
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        try:
            async with Datastore(etcd_config) as ds:
                await _wait(lambda: _exists(ds, resource_key("kubernetesnetworkpolicies", "db-allow-web", "shop")),
                            10, "the leader's sync")
                server.play("node-deleted")

                async def b_gone() -> bool:
                    return (await ds.get(resource_key("nodes", "node-b")) is None
                            and not (await ds.list(affinity_prefix("node-b")))[0])

                await _wait(b_gone, 15, "node-b's Tabby Node and block affinity gone")
                assert (await ds.list(affinity_prefix("node-a")))[0], "node-a's affinity must stay"
                assert controller.actions["blocks_unaffined"] + controller.actions["blocks_released"] >= 1
            assert controller.status()["kube_sync"]["counts"]["networkpolicies.lists"] == 1
            from prometheus_client import generate_latest

            from controller.cluster.metrics import controller_registry

            text = generate_latest(controller_registry(controller)).decode()
            assert 'tabby_controller_kube_sync_total{resource="networkpolicies",what="lists"} 1.0' in text
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(go())
