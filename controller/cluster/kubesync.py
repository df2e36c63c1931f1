"""Kubernetes sync: mirror what policy and IPAM need from the Kubernetes API into etcd.

This is what calico-kube-controllers does in etcd mode. Without it a DaemonSet deployment would
silently ignore every NetworkPolicy applied with kubectl, and pods would carry no labels (CNI_ARGS
hold only the pod's name and namespace). Four controllers, each fed by a :class:`Reflector`:

* **Namespaces** -> ``Namespace`` resources (name and labels only: namespaceSelector reads labels).
* **NetworkPolicies** -> ``networking.k8s.io/v1`` NetworkPolicy resources, validated by Tabby's
  model exactly as a tabbyctl-applied one is, then enforced by the agents.
* **Pods** -> the labels of their WorkloadEndpoints (Calico's pod controller): the pod's labels
  plus ``projectcalico.org/namespace``, ``/orchestrator`` and ``/serviceaccount``. Endpoints are
  watched in etcd too, so a pod ADDed after its Pod event gets its labels as soon as the CNI
  plugin writes its endpoint, not a cycle later.
* **Nodes**: a deleted Kubernetes Node deletes the Tabby Node of the same name; the node lifecycle
  (controller/cluster/nodes.py) then releases its blocks, tunnel addresses and endpoints. A Tabby
  Node is deleted only if it matches a Kubernetes Node: its ``spec.orchRefs`` names it, or the
  sync saw that Node in the API earlier in its life (a lab Tabby node with no Kubernetes Node
  of that name is never touched). The sync writes the ``orchRefs`` Calico's nodes carry.

Ownership: everything the sync writes carries ``tabby.io/kube-sync: mirror``; a relist deletes only
mirrored Namespaces/NetworkPolicies that are no longer in the API, never a tabbyctl-applied one.

The list/watch protocol (:class:`Reflector`, as client-go's reflector does it): list in pages
(``limit``/``continue``), remember the list's ``resourceVersion``, watch from it with
``allowWatchBookmarks``; every event and BOOKMARK advances the version; a stream the server ends
(``timeoutSeconds``) or a dropped connection re-watches from the last version; a ``410 Gone``
(the version was compacted away: as an HTTP status or as a watch ERROR event) relists, and the
relist replaces the mirrored state, so a delete that happened while disconnected is not missed.

It has not met a real kube-apiserver (none can run on these machines): the tests serve a recorded
list/watch stream over HTTP (tests/integration/controller/test_kubesync.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from controller.cluster.kubeapi import KubeAPI, KubeAPIError
from controller.resource_store import Ref, ResourceStore, StoreError
from datamodel.resources import ResourceError, parse_resource
from datamodel.resources.kubernetes import Namespace, NetworkPolicy
from datastore import KV, Datastore, DatastoreError, Delete, Put, mod_is, staged
from datastore.keys import resource_key, resource_prefix
from datastore.watch import WatchEvent, WatchResync, watch_prefix

log = structlog.get_logger("tabby.controller.kubesync")

MIRROR_ANNOTATION = "tabby.io/kube-sync"
MIRROR_VALUE = "mirror"
#: Labels the pod controller owns on a WorkloadEndpoint besides the pod's own.
CALICO_LABEL_PREFIX = "projectcalico.org/"
LIST_PAGE = 500
#: A watch asks the server to end it after this long (client-go uses 5-10 minutes); then re-watch.
WATCH_TIMEOUT = 300

Stats = Counter  # (resource, what) -> count


class Handler(Protocol):
    async def replace(self, items: list[dict[str, Any]]) -> None: ...

    async def event(self, kind: str, obj: dict[str, Any]) -> None: ...


class Reflector:
    """List, then watch from the list's resourceVersion, forever (see the module docstring)."""

    def __init__(self, api: KubeAPI, name: str, path: str, handler: Handler, stats: Stats, *,
                 watch_timeout: int = WATCH_TIMEOUT, page: int = LIST_PAGE, max_backoff: float = 10.0,
                 on_synced: Callable[[str], None] = lambda name: None) -> None:
        self.api = api
        self.name = name
        self.path = path
        self.handler = handler
        self.stats = stats
        self.watch_timeout = watch_timeout
        self.page = page
        self.max_backoff = max_backoff
        self.on_synced = on_synced
        self.resource_version: str | None = None
        self.log = log.bind(resource=name)

    async def list(self) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            doc = await self.api.get(self.path, {"limit": self.page, "continue": cont})
            items.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
            meta = doc.get("metadata") or {}
            cont = meta.get("continue") or None
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                if self.resource_version is None:
                    items, rv = await self.list()
                    await self.handler.replace(items)
                    self.resource_version = rv
                    self.stats[(self.name, "lists")] += 1
                    self.log.info("kubesync.listed", items=len(items), resource_version=rv)
                    self.on_synced(self.name)
                await self._watch()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except KubeAPIError as exc:
                if exc.status == 410:
                    self.stats[(self.name, "relists")] += 1
                    self.log.info("kubesync.gone", resource_version=self.resource_version, action="relist")
                    self.resource_version = None
                    continue
                self._failed(exc, backoff)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError, ValueError,
                    DatastoreError, StoreError) as exc:
                self._failed(exc, backoff)
            else:
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _failed(self, exc: Exception, backoff: float) -> None:
        self.stats[(self.name, "errors")] += 1
        self.log.warning("kubesync.error", error=str(exc)[:200], retry_in=round(backoff, 2),
                         resource_version=self.resource_version)

    async def _watch(self) -> None:
        params = {"watch": "1", "resourceVersion": self.resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": self.watch_timeout}
        self.stats[(self.name, "watches")] += 1
        async for ev in self.api.stream(self.path, params):
            kind = ev.get("type")
            obj = ev.get("object") if isinstance(ev.get("object"), dict) else {}
            if kind == "ERROR":
                raise KubeAPIError(int(obj.get("code") or 500), f"{obj.get('reason')}: {obj.get('message')}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if kind == "BOOKMARK":
                self.stats[(self.name, "bookmarks")] += 1
            elif kind in ("ADDED", "MODIFIED", "DELETED"):
                self.stats[(self.name, "events")] += 1
                await self.handler.event(kind, obj)
            else:
                self.log.warning("kubesync.unknown_event", type=kind)
                continue
            if rv:
                self.resource_version = str(rv)


def _mirror_meta(obj: dict[str, Any], namespaced: bool) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {"name": meta.get("name"), "annotations": {MIRROR_ANNOTATION: MIRROR_VALUE}}
    if namespaced:
        out["namespace"] = meta.get("namespace") or "default"
    if meta.get("labels"):
        out["labels"] = dict(meta["labels"])
    return out


def _is_mirror(kv: KV) -> bool:
    try:
        ann = ((kv.json().get("metadata") or {}).get("annotations")) or {}
    except (ValueError, AttributeError):
        return False
    return ann.get(MIRROR_ANNOTATION) == MIRROR_VALUE


def _content(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document without what the store adds (uid, creationTimestamp, resourceVersion)."""
    meta = {k: v for k, v in (doc.get("metadata") or {}).items()
            if k not in ("uid", "creationTimestamp", "resourceVersion", "generation")}
    return {**doc, "metadata": meta}


class _Mirror:
    """Namespaces or NetworkPolicies: the API's objects as Tabby resources (validated, marked)."""

    def __init__(self, ds: Datastore, store: ResourceStore, cls: type[NetworkPolicy] | type[Namespace],
                 stats: Stats, name: str) -> None:
        self.ds = ds
        self.store = store
        self.cls = cls
        self.stats = stats
        self.name = name

    def _doc(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.cls is Namespace:
            return {"apiVersion": "v1", "kind": "Namespace", "metadata": _mirror_meta(obj, False)}
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": _mirror_meta(obj, True), "spec": obj.get("spec") or {}}

    def _ref(self, obj: dict[str, Any]) -> Ref:
        meta = obj.get("metadata") or {}
        return Ref(self.cls, str(meta.get("name")), (meta.get("namespace") or "default") if self.cls.NAMESPACED
                   else None)

    async def _upsert(self, obj: dict[str, Any], current: KV | None) -> None:
        doc = self._doc(obj)
        ref = self._ref(obj)
        try:
            res = parse_resource(doc, f"Kubernetes {self.cls.KIND} {ref.label}", 1)
        except ResourceError as exc:
            self.stats[(self.name, "refused")] += 1
            log.warning("kubesync.refused", resource=self.name, name=ref.label, problems=exc.problems[:3])
            return
        if current is not None:
            try:
                if _content(current.json()) == _content(res.to_dict()):
                    return
            except ValueError:
                pass
        await self.store.apply([res])
        self.stats[(self.name, "writes")] += 1

    async def _delete(self, ref: Ref) -> None:
        kv = await self.ds.get(ref.key)
        if kv is None or not _is_mirror(kv):
            return
        await self.store.delete([ref], skip_not_exists=True)
        self.stats[(self.name, "deletes")] += 1

    async def event(self, kind: str, obj: dict[str, Any]) -> None:
        ref = self._ref(obj)
        if kind == "DELETED":
            await self._delete(ref)
        else:
            await self._upsert(obj, await self.ds.get(ref.key))

    async def replace(self, items: list[dict[str, Any]]) -> None:
        stored, _ = await self.ds.list(resource_prefix(self.cls.PLURAL))
        by_key = {kv.key: kv for kv in stored}
        wanted = set()
        for obj in items:
            ref = self._ref(obj)
            wanted.add(ref.key)
            await self._upsert(obj, by_key.get(ref.key))
        for key, kv in by_key.items():
            if key not in wanted and _is_mirror(kv):
                await self.ds.txn([mod_is(key, kv.mod_revision)], [Delete(key)])
                self.stats[(self.name, "deletes")] += 1
                log.info("kubesync.deleted_on_relist", resource=self.name, key=key)


class PodLabels:
    """Calico's pod controller: a pod's labels onto its WorkloadEndpoints (matched by namespace and
    ``spec.pod``, orchestrator k8s), fed by Pod events and by the endpoints' own etcd watch."""

    def __init__(self, ds: Datastore, stats: Stats) -> None:
        self.ds = ds
        self.stats = stats
        #: (namespace, pod) -> the labels its endpoints should carry
        self.pods: dict[tuple[str, str], dict[str, str]] = {}
        #: endpoint key -> (namespace, pod), from the etcd watch
        self.endpoints: dict[str, tuple[str, str]] = {}
        self._by_pod: dict[tuple[str, str], set[str]] = {}
        self.endpoints_synced = asyncio.Event()

    @staticmethod
    def wanted_labels(obj: dict[str, Any]) -> dict[str, str]:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()
                  if not str(k).startswith(CALICO_LABEL_PREFIX)}
        labels[CALICO_LABEL_PREFIX + "namespace"] = ns
        labels[CALICO_LABEL_PREFIX + "orchestrator"] = "k8s"
        sa = (obj.get("spec") or {}).get("serviceAccountName")
        if sa:
            labels[CALICO_LABEL_PREFIX + "serviceaccount"] = str(sa)
        return labels

    @staticmethod
    def _pod_id(obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return str(meta.get("namespace") or "default"), str(meta.get("name"))

    async def event(self, kind: str, obj: dict[str, Any]) -> None:
        pod = self._pod_id(obj)
        if kind == "DELETED":
            # The CNI DEL removes the endpoint; a leaked one is the IPAM GC's. Labels stay as they were.
            self.pods.pop(pod, None)
            return
        labels = self.wanted_labels(obj)
        if self.pods.get(pod) == labels:
            return
        self.pods[pod] = labels
        for key in sorted(self._by_pod.get(pod, ())):
            await self._relabel(key)

    async def replace(self, items: list[dict[str, Any]]) -> None:
        self.pods = {self._pod_id(obj): self.wanted_labels(obj) for obj in items}
        for key in sorted(self.endpoints):
            await self._relabel(key)

    def _index(self, kv: KV) -> str | None:
        if staged.kv_is_staged(kv):  # a large apply in flight: index the plain value its clean-up writes
            return None
        try:
            doc = kv.json()
        except ValueError:
            return None
        spec = doc.get("spec") or {}
        meta = doc.get("metadata") or {}
        self._forget(kv.key)
        if spec.get("orchestrator") != "k8s" or not spec.get("pod"):
            return None
        pod = (str(meta.get("namespace") or "default"), str(spec["pod"]))
        self.endpoints[kv.key] = pod
        self._by_pod.setdefault(pod, set()).add(kv.key)
        return kv.key

    def _forget(self, key: str) -> None:
        pod = self.endpoints.pop(key, None)
        if pod is not None:
            keys = self._by_pod.get(pod, set())
            keys.discard(key)
            if not keys:
                self._by_pod.pop(pod, None)

    async def _relabel(self, key: str, kv: KV | None = None) -> None:
        """Set the endpoint's labels to its pod's (compare-and-swap; a lost race is seen again on the watch)."""
        pod = self.endpoints.get(key)
        if pod is None or pod not in self.pods:
            return
        kv = kv or await self.ds.get(key)
        if kv is None or staged.kv_is_staged(kv):  # staged: relabelled when its plain value lands
            return
        doc = kv.json()
        meta = doc.setdefault("metadata", {})
        if (meta.get("labels") or {}) == self.pods[pod]:
            return
        meta["labels"] = dict(self.pods[pod])
        res = await self.ds.txn([mod_is(key, kv.mod_revision)], [Put(key, doc)])
        if res.succeeded:
            self.stats[("pods", "endpoint_writes")] += 1
            log.info("kubesync.endpoint_labelled", key=key, pod="/".join(pod))

    async def watch_endpoints(self) -> None:
        async for item in watch_prefix(self.ds, resource_prefix("workloadendpoints")):
            if isinstance(item, WatchResync):
                for key in list(self.endpoints):
                    self._forget(key)
                indexed = [(k, kv) for kv in item.kvs if (k := self._index(kv))]
                self.endpoints_synced.set()
                for key, kv in indexed:
                    with contextlib.suppress(DatastoreError, ValueError):
                        await self._relabel(key, kv)
            elif isinstance(item, WatchEvent):
                if item.kind == "delete":
                    self._forget(item.kv.key)
                elif (key := self._index(item.kv)) is not None:
                    with contextlib.suppress(DatastoreError, ValueError):
                        await self._relabel(key, item.kv)


class NodeSync:
    """A deleted Kubernetes Node deletes its Tabby Node (see the module docstring for which ones)."""

    def __init__(self, ds: Datastore, stats: Stats) -> None:
        self.ds = ds
        self.stats = stats
        self.seen: set[str] = set()

    async def event(self, kind: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        if kind == "DELETED":
            await self._delete(name)
            self.seen.discard(name)
        else:
            self.seen.add(name)
            await self._mark(name)

    async def replace(self, items: list[dict[str, Any]]) -> None:
        names = {str((obj.get("metadata") or {}).get("name")) for obj in items}
        stored, _ = await self.ds.list(resource_prefix("nodes"))
        for kv in stored:
            name = kv.key[len(resource_prefix("nodes")):]
            if name in names:
                await self._mark(name, kv)
            elif name in self.seen or _orch_ref(kv):
                await self._delete(name, kv)
        self.seen = names

    async def _mark(self, name: str, kv: KV | None = None) -> None:
        """Write Calico's ``orchRefs`` (k8s, nodeName) on the Tabby Node of this name, if there is one."""
        kv = kv or await self.ds.get(resource_key("nodes", name))
        # A Node staged by a large apply is left to it: writing orchRefs into the envelope would corrupt
        # the staged value (the intent's own clean-up then restores it and the mark is lost anyway).
        if kv is None or _orch_ref(kv) or staged.kv_is_staged(kv):
            return
        doc = kv.json()
        spec = doc.setdefault("spec", {})
        spec["orchRefs"] = [*(spec.get("orchRefs") or []), {"orchestrator": "k8s", "nodeName": name}]
        res = await self.ds.txn([mod_is(kv.key, kv.mod_revision)], [Put(kv.key, doc)])
        if res.succeeded:
            self.stats[("nodes", "marked")] += 1

    async def _delete(self, name: str, kv: KV | None = None) -> None:
        kv = kv or await self.ds.get(resource_key("nodes", name))
        if kv is None or not (name in self.seen or _orch_ref(kv)):
            return
        res = await self.ds.txn([mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
        if res.succeeded:
            self.stats[("nodes", "deletes")] += 1
            log.warning("kubesync.node_deleted", node=name, reason="its Kubernetes Node is gone")


def _orch_ref(kv: KV) -> bool:
    try:
        refs = (kv.json().get("spec") or {}).get("orchRefs") or []
    except (ValueError, AttributeError):
        return False
    return any(isinstance(r, dict) and r.get("orchestrator") == "k8s" for r in refs)


RESOURCES = {
    "namespaces": "/api/v1/namespaces",
    "networkpolicies": "/apis/networking.k8s.io/v1/networkpolicies",
    "pods": "/api/v1/pods",
    "nodes": "/api/v1/nodes",
}


class KubeSync:
    """The four reflectors plus the endpoint watch; ``await run()`` until cancelled."""

    def __init__(self, ds: Datastore, api: KubeAPI, *, watch_timeout: int = WATCH_TIMEOUT,
                 page: int = LIST_PAGE, max_backoff: float = 10.0) -> None:
        self.ds = ds
        self.api = api
        self.stats: Stats = Counter()
        store = ResourceStore(ds)
        self.pods = PodLabels(ds, self.stats)
        self.nodes = NodeSync(ds, self.stats)
        handlers: dict[str, Handler] = {
            "namespaces": _Mirror(ds, store, Namespace, self.stats, "namespaces"),
            "networkpolicies": _Mirror(ds, store, NetworkPolicy, self.stats, "networkpolicies"),
            "pods": self.pods,
            "nodes": self.nodes,
        }
        self.synced: set[str] = set()
        self.reflectors = [Reflector(api, name, RESOURCES[name], handlers[name], self.stats,
                                     watch_timeout=watch_timeout, page=page, max_backoff=max_backoff,
                                     on_synced=self.synced.add) for name in RESOURCES]

    @property
    def in_sync(self) -> bool:
        return len(self.synced) == len(self.reflectors) and self.pods.endpoints_synced.is_set()

    async def run(self) -> None:
        """Until cancelled; a part that fails unexpectedly is logged, counted and started again."""
        tasks = [asyncio.create_task(_forever("endpoints", self.pods.watch_endpoints, self.stats),
                                     name="kubesync-endpoints")]
        try:
            await self.pods.endpoints_synced.wait()  # the pod list relabels the indexed endpoints
            tasks += [asyncio.create_task(_forever(r.name, r.run, self.stats), name=f"kubesync-{r.name}")
                      for r in self.reflectors]
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _forever(name: str, work: Callable[[], Any], stats: Stats, delay: float = 1.0) -> None:
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stats[(name, "crashes")] += 1
            log.error("kubesync.crashed", part=name, error=repr(exc)[:300], restart_in=delay)
        await asyncio.sleep(delay)


def stats_rows(stats: Stats) -> list[tuple[str, str, int]]:
    return sorted((res, what, n) for (res, what), n in stats.items())

