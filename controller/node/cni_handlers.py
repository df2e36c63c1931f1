"""CNI ADD / DEL / CHECK / GC / STATUS as the node agent performs them.

Why here and not in the plugin: the plugin is a short-lived process that must start in a few
milliseconds; the agent already holds the datastore connection, the IPAM caches, the validated
model and the dataplane. A pod created here is an input of the agent's calculation graph like any
WorkloadEndpoint (``Agent.local_workload_added``/``local_workload_removed``, before etcd echoes it);
its routes take the dataplane's fast lane, so ADD returns once its /32 is in the kernel. The plugin
validates what it can without help and forwards; this
module does the work and answers with a CNI result or a :class:`CNIError` (the spec's codes).

Rules (docs/cni.md): handle ``<network>.<containerID>``; every etcd step is bounded by
``TABBY_CNI_TIMEOUT`` (5 s) and answers code 11 "try again later" when etcd does not answer;
ADD cleans up leftovers of an earlier half-done ADD first; DEL is idempotent and succeeds when
the pod's namespace is already gone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from datamodel.resources.workloadendpoint import (
    ANNOTATION_HANDLE,
    ANNOTATION_NETWORK,
    WorkloadEndpoint,
    workload_endpoint_name,
)
from datastore import KV, Conflict, DatastoreError, Delete, Put, mod_is, staged
from datastore.client import Compare
from datastore.keys import resource_key
from felix_like.workload import (
    GATEWAY_V4,
    HOST_MAC,
    NetnsGone,
    WorkloadError,
    WorkloadResult,
    WorkloadSpec,
    check_workload,
    host_veth_name,
)
from ipam.errors import HandleInUse, IPAMError, NoPoolsError, PoolsExhausted

if TYPE_CHECKING:
    from controller.node.agent import Agent

log = structlog.get_logger("tabby.node.cni")
T = TypeVar("T")

# CNI spec error codes
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
CLUSTER_INFO_KEY = resource_key("clusterinformations", "default")
NOT_AVAILABLE = 50
# plugin-specific (100+)
IPAM_FAILURE = 100
CHECK_FAILED = 101
INTERNAL = 199



#: How long CHECK waits for the watch to deliver an endpoint ADD has just written.
CHECK_ECHO_WAIT_S = 3.0


class Phases:
    """Where one ADD/DEL spends its time (ms per phase), logged with ``cni.added``/``cni.deleted``.

    Why: the CNI benchmark (tests/bench/cni.py) and an operator both need to see whether a slow
    pod start is etcd, netlink or the dataplane; the agent's own clock is the only one that can tell.
    """

    def __init__(self) -> None:
        self._t = self.start = time.monotonic()
        self.ms: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """Charge the time since the previous mark to ``phase``."""
        now = time.monotonic()
        self.ms[phase] = round(self.ms.get(phase, 0.0) + (now - self._t) * 1000, 2)
        self._t = now

    def total(self) -> float:
        return round((time.monotonic() - self.start) * 1000, 1)


class CNIError(Exception):
    """A CNI error result: ``code`` from the spec, ``msg`` one line, ``details`` more context."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        self.code = code
        self.msg = msg
        self.details = details
        super().__init__(msg)

    def to_json(self, cni_version: str) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}


@dataclass(frozen=True)
class Request:
    """One parsed request: the command, CNI_* variables and the network configuration."""

    command: str
    env: Mapping[str, str]
    config: Mapping[str, Any]
    mode: str  # "tabby" (full plugin) or "tabby-ipam" (IPAM only)

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion") or "1.0.0")

    @property
    def network(self) -> str:
        return str(self.config.get("name") or "")

    @property
    def container_id(self) -> str:
        return self.env.get("CNI_CONTAINERID", "")

    @property
    def ifname(self) -> str:
        return self.env.get("CNI_IFNAME", "")

    @property
    def netns(self) -> str:
        return self.env.get("CNI_NETNS", "")

    @property
    def handle(self) -> str:
        return f"{self.network}.{self.container_id}"

    def args(self) -> dict[str, str]:
        return parse_cni_args(self.env.get("CNI_ARGS", ""))


def parse_cni_args(raw: str) -> dict[str, str]:
    """``K=V;K=V`` -> dict; a part without ``=`` is an error (code 4)."""
    out: dict[str, str] = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise CNIError(INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE", f"CNI_ARGS={raw!r}")
        out[key] = value
    return out


@dataclass(frozen=True)
class Identity:
    """Who the workload is: names and labels derived from CNI_ARGS and the configuration."""

    orchestrator: str
    namespace: str
    pod: str | None
    host_ifname: str
    wep_name: str
    labels: dict[str, str]

    @property
    def wep_key(self) -> str:
        return resource_key("workloadendpoints", self.wep_name, self.namespace)


def identity(req: Request, node: str) -> Identity:
    """Calico's naming: k8s pods by namespace/pod, other containers by container ID."""
    args = req.args()
    pod = args.get("K8S_POD_NAME") or None
    namespace = args.get("K8S_POD_NAMESPACE") or "default"
    orchestrator = "k8s" if pod else "cni"
    labels: dict[str, str] = {}
    for source in (req.config.get("labels"), (req.config.get("runtimeConfig") or {}).get("labels"),
                   (req.config.get("args") or {}).get("labels") if isinstance(req.config.get("args"), dict)
                   else None):
        if isinstance(source, dict):
            labels.update({str(k): str(v) for k, v in source.items()})
        elif isinstance(source, list):  # [{"key": k, "value": v}] as CNI's labels convention
            for item in source:
                if isinstance(item, dict) and "key" in item:
                    labels[str(item["key"])] = str(item.get("value", ""))
    labels["projectcalico.org/namespace"] = namespace
    labels["projectcalico.org/orchestrator"] = orchestrator
    host_ifname = host_veth_name(namespace=namespace, pod=pod, container_id=req.container_id)
    wep_name = workload_endpoint_name(
        node, orchestrator=orchestrator, endpoint=req.ifname or "eth0", pod=pod, container_id=req.container_id
    )
    return Identity(orchestrator, namespace, pod, host_ifname, wep_name, labels)


class CNIHandlers:
    """The CNI commands against one agent's state."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.node = agent.config.nodename
        self.timeout = agent.config.cni_timeout
        # One request at a time per container: a runtime retrying ADD while DEL runs must not interleave.
        self._locks: dict[str, asyncio.Lock] = {}

    # -- helpers -----------------------------------------------------------------------------
    async def bounded(self, what: str, coro: Awaitable[T], deadline: float) -> T:
        """Run an etcd step within what is left of the request's time; code 11 when etcd is away."""
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(coro, left)
        except TimeoutError:
            raise CNIError(
                TRY_AGAIN_LATER,
                f"etcd did not answer within {self.timeout:.0f}s while trying to {what}; try again later",
                f"endpoints: {', '.join(self.agent.config.etcd.endpoints)}",
            ) from None
        except (NoPoolsError, PoolsExhausted) as exc:
            raise CNIError(IPAM_FAILURE, f"could not {what}: {exc}") from None
        except IPAMError as exc:
            raise CNIError(IPAM_FAILURE, f"could not {what}: {exc}") from None
        except DatastoreError as exc:
            raise CNIError(TRY_AGAIN_LATER, f"could not {what}: {exc}; try again later") from None
        finally:
            if asyncio.iscoroutine(coro):
                coro.close()

    async def ready(self, deadline: float) -> None:
        """The first full snapshot, the node address and a current (not stale) datastore view are
        needed before any ADD; a stale view is waited for within the request's time, then code 11."""
        agent = self.agent
        if not (agent.dataplane is not None and agent.dataplane.started):
            try:
                await asyncio.wait_for(agent.ready.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                why = agent.not_ready_reason()
                raise CNIError(TRY_AGAIN_LATER, f"the tabby node agent of {self.node} is not ready: {why}") from None
        if not await agent.watch_health.wait_fresh(deadline - time.monotonic()):
            raise CNIError(
                TRY_AGAIN_LATER,
                f"the tabby node agent of {self.node} is not ready: {agent.not_ready_reason()}; try again later",
                f"endpoints: {', '.join(agent.config.etcd.endpoints)}",
            )

    def lock(self, container_id: str) -> asyncio.Lock:
        lock = self._locks.get(container_id)
        if lock is None:
            lock = self._locks[container_id] = asyncio.Lock()
        return lock

    async def handle(self, req: Request) -> dict[str, Any]:
        if req.command == "STATUS":
            return await self.status(req)
        if req.command == "GC":
            return await self.gc(req)
        if not req.network:
            raise CNIError(INVALID_CONFIG, "network configuration has no 'name'")
        if req.command not in ("ADD", "DEL", "CHECK"):
            raise CNIError(INVALID_ENV, f"CNI_COMMAND: unknown command {req.command!r}")
        async with self.lock(req.container_id):
            if req.mode == "tabby-ipam":
                return await self.ipam_only(req)
            if req.command == "ADD":
                return await self.add(req)
            if req.command == "DEL":
                return await self.delete(req)
            return await self.check(req)

    # -- ADD ---------------------------------------------------------------------------------
    def _families(self, req: Request) -> tuple[int, int]:
        ipam = req.config.get("ipam") or {}
        v4 = str(ipam.get("assign_ipv4", "true")).lower() != "false"
        v6 = str(ipam.get("assign_ipv6", "false")).lower() == "true"
        if not v4 and not v6:
            raise CNIError(INVALID_CONFIG, "ipam: assign_ipv4 and assign_ipv6 are both false: nothing to assign")
        return int(v4), int(v6)

    def _pools(self, req: Request) -> list[str] | None:
        ipam = req.config.get("ipam") or {}
        wanted = [*(ipam.get("ipv4_pools") or []), *(ipam.get("ipv6_pools") or [])]
        return [str(p) for p in wanted] or None

    async def _assign(self, req: Request, ident: Identity | None, deadline: float) -> tuple[list[str], list[str]]:
        """Release leftovers of an earlier attempt under the same handle, then allocate."""
        ipam = self.agent.ipam
        self._refuse_if_locked()
        num_v4, num_v6 = self._families(req)
        stale = await self.bounded("release leftovers of an earlier ADD", ipam.release_by_handle(req.handle), deadline)
        if stale:
            log.info("cni.leftover_released", node=self.node, handle=req.handle, ips=stale)
        attrs = {"node": self.node}
        if ident is not None:
            attrs.update({"namespace": ident.namespace, "pod": ident.pod or "", "container": req.container_id})
        result = await self.bounded(
            "allocate an address",
            ipam.auto_assign(
                node=self.node, handle_id=req.handle, num_v4=num_v4, num_v6=num_v6, attrs=attrs,
                pools=self._pools(req),
            ),
            deadline,
        )
        return list(result.v4), list(result.v6)

    def _refuse_if_locked(self) -> None:
        """``tabbyctl datastore migrate lock`` (ClusterInformation datastoreReady false): no new
        addresses until unlock, so an IPAM-leak report stays true while it is acted on."""
        info = self.agent.model.get(CLUSTER_INFO_KEY)
        if info is not None and info.spec.datastoreReady is False:
            raise CNIError(
                TRY_AGAIN_LATER,
                "the datastore is locked (tabbyctl datastore migrate lock): no address is assigned until unlock",
            )

    async def ipam_only(self, req: Request) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        if req.command == "ADD":
            await self.ready(deadline)
            v4, v6 = await self._assign(req, None, deadline)
            ips = [{"address": _host_cidr(ip)} for ip in (*v4, *v6)]
            routes = ([{"dst": "0.0.0.0/0"}] if v4 else []) + ([{"dst": "::/0"}] if v6 else [])
            log.info("cni.ipam_add", node=self.node, handle=req.handle, ips=[i["address"] for i in ips])
            return {"cniVersion": req.cni_version, "ips": ips, "routes": routes, "dns": {}}
        if req.command == "DEL":
            released = await self.bounded("release addresses", self.agent.ipam.release_by_handle(req.handle), deadline)
            log.info("cni.ipam_del", node=self.node, handle=req.handle, ips=released)
            return {}
        have = await self.bounded("read addresses", self.agent.ipam.ips_by_handle(req.handle), deadline)
        if not have:
            raise CNIError(CHECK_FAILED, f"handle {req.handle} holds no address")
        return {}

    async def add(self, req: Request) -> dict[str, Any]:
        ph = Phases()
        deadline = ph.start + self.timeout
        agent = self.agent
        await self.ready(deadline)
        ident = identity(req, self.node)
        ph.mark("parse")
        bound = log.bind(node=self.node, pod=ident.pod or req.container_id, handle=req.handle)
        # A different sandbox of the same pod (the runtime re-created it): free its handle too.
        old = agent.model.get(ident.wep_key)
        if isinstance(old, WorkloadEndpoint):
            old_handle = (old.metadata.annotations or {}).get(ANNOTATION_HANDLE)
            if old_handle and old_handle != req.handle:
                await self.bounded("release the previous sandbox's addresses",
                                   agent.ipam.release_by_handle(old_handle), deadline)
        pod_mac = _pod_mac()
        written: dict[str, Any] = {}  # the endpoint document the allocation transaction wrote
        v4, v6 = await self._assign_with_wep(req, ident, pod_mac, deadline, written)
        ph.mark("ipam_wep")
        try:
            mtu = agent.pod_mtu()
            spec = WorkloadSpec(
                host_ifname=ident.host_ifname, pod_netns=req.netns, pod_ifname=req.ifname, mtu=mtu,
                ipv4=[_host_cidr(ip) for ip in v4], ipv6=[_host_cidr(ip) for ip in v6], pod_mac=pod_mac,
            )
            wep = WorkloadEndpoint.model_validate(written["doc"]) if "doc" in written else None
            try:
                # The device, the policy and the routes: one pass of the dataplane's fast lane (the
                # workload manager makes the veth on the dataplane thread, not this handler).
                await agent.local_workload_added(ident.wep_key, req.container_id, [_bare(ip) for ip in (*v4, *v6)],
                                                 ident.host_ifname, wep, device=spec)
            except NetnsGone as exc:
                raise CNIError(UNKNOWN_CONTAINER, f"CNI_NETNS: {exc.strerror}", str(req.netns)) from None
            except OSError as exc:
                raise CNIError(IO_FAILURE, f"could not create the pod interface: {exc}") from None
            except WorkloadError as exc:
                raise CNIError(IO_FAILURE, f"could not create the pod interface: {exc}") from None
            ph.mark("dataplane")  # device, policy and routes (the fast lane)
        except BaseException:
            await self._undo_add(req, ident, v4 + v6)
            raise
        bound.info("cni.added", ips=[*v4, *v6], interface=ident.host_ifname, ms=ph.total(), phases_ms=ph.ms)
        made = WorkloadResult(ident.host_ifname, HOST_MAC, req.ifname, pod_mac)
        ips = [{"address": _host_cidr(ip), "gateway": GATEWAY_V4, "interface": 1} for ip in v4]
        ips += [{"address": _host_cidr(ip), "interface": 1} for ip in v6]
        routes = ([{"dst": "0.0.0.0/0", "gw": GATEWAY_V4}] if v4 else []) + ([{"dst": "::/0"}] if v6 else [])
        return {
            "cniVersion": req.cni_version,
            "interfaces": [
                {"name": ident.host_ifname, "mac": made.host_mac},
                {"name": req.ifname, "mac": made.pod_mac, "sandbox": req.netns},
            ],
            "ips": ips,
            "routes": routes,
            "dns": req.config.get("dns") or {},
        }

    # -- IPAM + WorkloadEndpoint in ONE etcd transaction (issue 15) -----------------------------
    # Why one transaction: an allocation without its endpoint is what IPAM GC and `ipam check` call
    # a leak, and other nodes learn the pod's IP and labels only from the endpoint. The endpoint is
    # written with the block and the handle, compared against the revision the watch-fed snapshot
    # holds (a fresh read only after that compare failed), so an update never overwrites labels
    # someone set meanwhile (`tabbyctl label`). The handle is assumed new (no read): when it is not
    # (leftovers of an earlier half-done ADD of this container), IPAM says so and they are released.
    async def _assign_with_wep(
        self, req: Request, ident: Identity, mac: str, deadline: float, written: dict[str, Any] | None = None
    ) -> tuple[list[str], list[str]]:
        agent = self.agent
        ipam = agent.ipam
        self._refuse_if_locked()
        num_v4, num_v6 = self._families(req)
        attrs = {"node": self.node, "namespace": ident.namespace, "pod": ident.pod or "",
                 "container": req.container_id}
        key = ident.wep_key

        async def wep_ops(ips: list[str], fresh: bool) -> tuple[list[Compare], list[Put | Delete]]:
            if fresh:  # a staged key raises Conflict (retried) until its apply has landed
                kv = await staged.get_for_update(agent.ds, key)
                current, rev = (kv.json(), kv.mod_revision) if kv is not None else (None, 0)
            else:  # a staged key reads as (None, 0): the compare fails, and the retry is fresh
                current, rev = agent.model.document(key)
            doc = self._wep(req, ident, [i for i in ips if ":" not in i], [i for i in ips if ":" in i], mac,
                            existing=current if isinstance(current, dict) else None)
            if written is not None:
                written["doc"] = doc  # the last attempt's is the one committed
            return [mod_is(key, rev)], [Put(key, doc)]

        async def allocate() -> Any:
            kwargs: dict[str, Any] = {"node": self.node, "handle_id": req.handle, "num_v4": num_v4,
                                      "num_v6": num_v6, "attrs": attrs, "pools": self._pools(req),
                                      "extra_ops": wep_ops}
            try:
                return await ipam.auto_assign(**kwargs, new_handle=True)
            except HandleInUse:
                stale = await ipam.release_by_handle(req.handle)
                log.info("cni.leftover_released", node=self.node, handle=req.handle, ips=stale)
                return await ipam.auto_assign(**kwargs)

        if key in agent.model.held:  # before allocating: the group commit of other ADDs is not failed by it
            await self._read_for_update(key, deadline)
        result = await self.bounded("allocate an address and record the WorkloadEndpoint", allocate(), deadline)
        return list(result.v4), list(result.v6)

    async def _read_for_update(self, key: str, deadline: float) -> KV | None:
        """``key`` for a compare-and-swap, waiting (within ``deadline``) while a large apply holds it staged.

        A compare on such a key would land inside the staging envelope (datastore/staged.py); the apply
        takes a second or two, and an abandoned one is recovered by ``get_for_update``.
        """
        delay = 0.02
        while True:
            try:
                return await self.bounded("read the WorkloadEndpoint", staged.get_for_update(self.agent.ds, key),
                                          deadline)
            except Conflict:
                if time.monotonic() + delay >= deadline:
                    raise CNIError(TRY_AGAIN_LATER, f"WorkloadEndpoint {key} is held by a large apply in flight "
                                   "(tabbyctl apply/create/replace/delete); try again later") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def _undo_add(self, req: Request, ident: Identity, ips: list[str]) -> None:
        """A failed ADD leaves nothing behind (veth, route, addresses) as far as it can."""
        agent = self.agent
        try:
            await agent.local_workload_removed([ident.wep_key], [ident.host_ifname], devices=[ident.host_ifname])
        except Exception:
            log.warning("cni.undo_failed", node=self.node, step="veth+route", interface=ident.host_ifname,
                        exc_info=True)
        try:
            await asyncio.wait_for(agent.ipam.release_by_handle(req.handle), self.timeout)
        except Exception:
            log.warning("cni.undo_failed", node=self.node, step="release", handle=req.handle)
        try:
            await asyncio.wait_for(self._delete_wep(ident.wep_key, req.container_id), self.timeout)
        except Exception:
            log.warning("cni.undo_failed", node=self.node, step="endpoint", key=ident.wep_key)

    def _wep(self, req: Request, ident: Identity, v4: list[str], v6: list[str], mac: str,
             existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The endpoint document; over an ``existing`` one, its labels are kept (never overwritten)."""
        labels = dict(ident.labels)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if existing is not None:
            meta = existing.get("metadata") or {}
            for k, v in (meta.get("labels") or {}).items():
                if not str(k).startswith("projectcalico.org/"):
                    labels[str(k)] = str(v)
            created = str(meta.get("creationTimestamp") or created)
        spec: dict[str, Any] = {
            "orchestrator": ident.orchestrator,
            "node": self.node,
            "containerID": req.container_id,
            "endpoint": req.ifname,
            "ipNetworks": [_host_cidr(ip) for ip in (*v4, *v6)],
            "interfaceName": ident.host_ifname,
            "mac": mac,
            "profiles": [f"kns.{ident.namespace}"] if ident.orchestrator == "k8s" else [],
        }
        ports = (req.config.get("runtimeConfig") or {}).get("ports") if isinstance(req.config.get("runtimeConfig"),
                                                                                 dict) else None
        if isinstance(ports, list) and ports:  # named container ports (NetworkPolicy's named ports)
            spec["ports"] = ports
        if ident.pod:
            spec["pod"] = ident.pod
            spec["workload"] = ident.pod
        else:
            spec["workload"] = req.container_id
        doc = {
            "apiVersion": "projectcalico.org/v3",
            "kind": "WorkloadEndpoint",
            "metadata": {
                "name": ident.wep_name,
                "namespace": ident.namespace,
                "labels": labels,
                "annotations": {ANNOTATION_HANDLE: req.handle, ANNOTATION_NETWORK: req.network},
                "creationTimestamp": created,
            },
            "spec": spec,
        }
        try:
            return WorkloadEndpoint.model_validate(doc).to_dict()
        except Exception as exc:
            raise CNIError(INVALID_CONFIG, f"workload endpoint would be invalid: {str(exc).splitlines()[0]}",
                           str(exc)) from None

    async def _delete_wep(self, key: str, container_id: str) -> bool:
        """Delete the WEP only while it still belongs to this container (a new sandbox may own it).

        First against the revision the watch-fed snapshot holds (no read); a failed compare (the
        snapshot lags our own write, or someone changed it) falls back to reading it. A key a large
        apply holds staged is waited out (``staged.get_for_update``), never deleted under it.
        """
        ds = self.agent.ds
        cached, rev = self.agent.model.document(key)
        if cached is not None and (cached.get("spec") or {}).get("containerID") in (None, container_id):
            res = await ds.txn([mod_is(key, rev)], [Delete(key)])
            if res.succeeded:
                return True
        deadline = time.monotonic() + self.timeout
        for _ in range(10):
            current = await self._read_for_update(key, deadline)  # a staged key: what its apply leaves
            if current is None:
                return False
            spec = (current.json().get("spec") or {})
            if spec.get("containerID") not in (None, container_id):
                return False
            res = await ds.txn([mod_is(key, current.mod_revision)], [Delete(key)])
            if res.succeeded:
                return True
        raise CNIError(TRY_AGAIN_LATER, f"WorkloadEndpoint {key} kept changing while being deleted")

    # -- DEL ---------------------------------------------------------------------------------
    async def delete(self, req: Request) -> dict[str, Any]:
        ph = Phases()
        deadline = ph.start + self.timeout
        agent = self.agent
        ident = identity(req, self.node)
        found = agent.model.find_wep(req.container_id, req.ifname or None)
        ph.mark("parse")
        keys = {ident.wep_key}
        interfaces = {ident.host_ifname}
        found_ifname = found[1].spec.interfaceName if found is not None else None
        if found is not None:
            keys.add(found[0])
            if found_ifname:
                interfaces.add(found_ifname)
        # A new sandbox of the same pod may already use this veth name: only delete ours. The devices
        # go with the routes, in one pass of the dataplane's fast lane (the workload manager).
        devices = [name for name in sorted(interfaces)
                   if found is None or name == found_ifname or name == ident.host_ifname]
        await agent.local_workload_removed(keys, interfaces, devices=devices)
        ph.mark("dataplane")
        # The release and the endpoint deletes are independent writes: in flight together, not one
        # after the other (the next ADD needs neither to wait for the other).
        released, *_ = await asyncio.gather(
            self.bounded("release addresses", agent.ipam.release_by_handle(req.handle), deadline),
            *(self.bounded("delete the WorkloadEndpoint", self._delete_wep(key, req.container_id), deadline)
              for key in sorted(keys)),
        )
        ph.mark("ipam_wep")
        log.info("cni.deleted", node=self.node, pod=ident.pod or req.container_id, handle=req.handle,
                 ips=released, ms=ph.total(), phases_ms=ph.ms)
        return {}

    # -- CHECK -------------------------------------------------------------------------------
    async def check(self, req: Request) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        agent = self.agent
        await self.ready(deadline)
        ident = identity(req, self.node)
        found = agent.model.find_wep(req.container_id, req.ifname or None)
        # A CHECK right after ADD can beat the watch's echo of the endpoint ADD wrote: wait for it, bounded
        wait_until = min(deadline, time.monotonic() + CHECK_ECHO_WAIT_S)
        while found is None and time.monotonic() < wait_until:
            await asyncio.sleep(0.02)
            found = agent.model.find_wep(req.container_id, req.ifname or None)
        if found is None:
            raise CNIError(UNKNOWN_CONTAINER, f"no WorkloadEndpoint for container {req.container_id} on {self.node}")
        spec = found[1].spec
        nets = list(spec.ipNetworks)
        have = await self.bounded("read the container's addresses", agent.ipam.ips_by_handle(req.handle), deadline)
        problems: list[str] = []
        if sorted(_bare(i) for i in have) != sorted(_bare(n) for n in nets):
            problems.append(f"IPAM handle {req.handle} holds {sorted(have)}, the endpoint says {nets}")
        wl = WorkloadSpec(
            host_ifname=spec.interfaceName or ident.host_ifname, pod_netns=req.netns, pod_ifname=req.ifname,
            mtu=0, ipv4=[n for n in nets if ":" not in n], ipv6=[n for n in nets if ":" in n],
        )
        problems += await asyncio.to_thread(check_workload, agent.config.netns, wl)
        if agent.dataplane is not None:
            for net in nets:
                if not agent.dataplane.has_route(_host_cidr(net)):
                    problems.append(f"route {_host_cidr(net)} dev {wl.host_ifname} is missing")
        prev = req.config.get("prevResult") or {}
        prev_ips = sorted(str(i.get("address")) for i in prev.get("ips") or [] if isinstance(i, dict))
        if prev_ips and prev_ips != sorted(_host_cidr(n) for n in nets):
            problems.append(f"prevResult has {prev_ips}, the endpoint has {nets}")
        if problems:
            raise CNIError(CHECK_FAILED, problems[0], "; ".join(problems))
        return {}

    # -- GC / STATUS (CNI 1.1) ----------------------------------------------------------------
    async def gc(self, req: Request) -> dict[str, Any]:
        """Remove this network's attachments on this node that the runtime no longer lists."""
        deadline = time.monotonic() + self.timeout
        await self.ready(deadline)
        valid = {
            (str(a.get("containerID")), str(a.get("ifname")))
            for a in req.config.get("cni.dev/valid-attachments") or []
            if isinstance(a, dict)
        }
        removed = []
        for _key, wep in list(self.agent.model.local_weps().items()):
            ann = wep.metadata.annotations or {}
            spec = wep.spec
            if ann.get(ANNOTATION_NETWORK) != req.network:
                continue
            if (str(spec.containerID), str(spec.endpoint)) in valid:
                continue
            env = {"CNI_CONTAINERID": str(spec.containerID), "CNI_IFNAME": str(spec.endpoint), "CNI_NETNS": ""}
            async with self.lock(str(spec.containerID)):  # never interleave with an ADD/DEL of it
                await self.delete(Request("DEL", env, req.config, req.mode))
            removed.append(spec.containerID)
        log.info("cni.gc", node=self.node, removed=removed)
        return {}

    async def status(self, req: Request) -> dict[str, Any]:
        reason = self.agent.not_ready_reason()
        if reason:
            raise CNIError(NOT_AVAILABLE, f"the tabby node agent of {self.node} is not ready: {reason}")
        return {}


def _pod_mac() -> str:
    """A random locally administered unicast MAC for the pod side, chosen before the endpoint is written."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _bare(ip: str) -> str:
    return str(ipaddress.ip_interface(ip).ip)


def _host_cidr(ip: str) -> str:
    addr = ipaddress.ip_interface(ip).ip
    return f"{addr}/{addr.max_prefixlen}"
