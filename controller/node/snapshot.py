"""The agent's cache of the datastore, and the plain inputs the dataplane calculation reads.

Why a cache fed by one watch over the whole prefix: the agent must keep working on its last
known state while etcd is away, and must not act on half a picture. ``watch_prefix`` starts with
a :class:`~datastore.WatchResync` (the complete state at one revision); the cache is REPLACED by
it (never merged, so keys deleted while we were away disappear), then updated by events.
``synced`` is set once the first full snapshot is in: no dataplane change happens before that.

Everything below :meth:`Snapshot.route_inputs` is pure: dicts in, frozen dataclasses out.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from datastore import KV, WatchEvent, WatchResync, staged
from datastore.keys import BLOCKS, GUARDS, HANDLES, key_to_cidr, resource_prefix
from felix_like.routes import (
    BlockInfo,
    BorrowedIP,
    EncapMode,
    LocalNodeInfo,
    PoolInfo,
    RemoteNodeInfo,
    RouteInputs,
    WorkloadInfo,
)

POOLS = resource_prefix("ippools")
NODES = resource_prefix("nodes")
WEPS = resource_prefix("workloadendpoints")
IPAM_CONFIG = resource_prefix("ipamconfigurations")
FELIX_CONFIG = resource_prefix("felixconfigurations")

#: Encapsulation overheads (field notes: IPIP -20, VXLAN -50 IPv4 / -70 IPv6).
IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50
VXLAN_V6_OVERHEAD = 70


def _mode(value: Any) -> EncapMode:
    try:
        return EncapMode(value or "Never")
    except ValueError:
        return EncapMode.NEVER


@dataclass(frozen=True)
class Change:
    """What an update touched, so the agent only recalculates what depends on it."""

    routes: bool = False
    pools: bool = False
    own_node: bool = False
    resync: bool = False


class Snapshot:
    """Key -> decoded JSON value for every key under the prefix this node cares about."""

    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self.values: dict[str, Any] = {}
        self.revisions: dict[str, int] = {}
        self.revision = 0
        self.synced = False

    # -- feeding ------------------------------------------------------------------------------
    def _interesting(self, key: str) -> bool:
        # Handles are many and the dataplane never needs them; everything else is small.
        return not key.startswith((HANDLES, GUARDS, staged.INTENTS))

    def _decode(self, kv: KV) -> Any:
        """The JSON value; a value staged by a large apply reads as its previous value (None:
        ignore the event) until the apply's cleanup writes the plain value (datastore/staged.py)."""
        try:
            value = json.loads(kv.value)
        except ValueError:
            return None
        return staged.resolve(value, {}) if staged.is_staged(value) else value

    def apply(self, item: WatchEvent | WatchResync) -> Change:
        """Fold one watch item into the cache; a resync replaces everything."""
        if isinstance(item, WatchResync):
            self.values = {}
            self.revisions = {}
            for kv in item.kvs:
                if self._interesting(kv.key):
                    value = self._decode(kv)
                    if value is not None:
                        self.values[kv.key] = value
                        self.revisions[kv.key] = kv.mod_revision
            self.revision = item.revision
            self.synced = True
            return Change(routes=True, pools=True, own_node=True, resync=True)
        key = item.kv.key
        self.revision = max(self.revision, item.kv.mod_revision)
        if not self._interesting(key):
            return Change()
        if item.kind == "delete":
            existed = self.values.pop(key, None) is not None
            self.revisions.pop(key, None)
            if not existed:
                return Change()
        else:
            value = self._decode(item.kv)
            if value is None:
                return Change()
            if self.values.get(key) == value:
                self.revisions[key] = item.kv.mod_revision
                return Change()
            self.values[key] = value
            self.revisions[key] = item.kv.mod_revision
        return classify(key, self.nodename)

    # -- views --------------------------------------------------------------------------------
    def _under(self, prefix: str) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]

    def pools(self) -> list[dict[str, Any]]:
        return [v for _, v in sorted(self._under(POOLS))]

    def node(self, name: str) -> dict[str, Any] | None:
        return self.values.get(NODES + name)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {k[len(NODES) :]: v for k, v in self._under(NODES)}

    def blocks(self) -> dict[str, dict[str, Any]]:
        return {key_to_cidr(k[len(BLOCKS) :]): v for k, v in self._under(BLOCKS)}

    def local_weps(self) -> dict[str, dict[str, Any]]:
        """This node's WorkloadEndpoints, by key (``resources/v3/workloadendpoints/<ns>/<name>``)."""
        return {k: v for k, v in self._under(WEPS) if ((v.get("spec") or {}).get("node")) == self.nodename}

    def find_wep(self, container_id: str, endpoint: str | None = None) -> tuple[str, dict[str, Any]] | None:
        for key, wep in self.local_weps().items():
            spec = wep.get("spec") or {}
            if spec.get("containerID") == container_id and (endpoint is None or spec.get("endpoint") == endpoint):
                return key, wep
        return None

    # -- calculation inputs --------------------------------------------------------------------
    def route_inputs(
        self, local_ip: str | None, interface: str, extra_workloads: dict[str, WorkloadInfo] | None = None
    ) -> RouteInputs:
        return route_inputs(self.values, self.nodename, local_ip, interface, extra_workloads or {})

    def encapsulations(self) -> set[str]:
        return encapsulations(self.pools())


def classify(key: str, nodename: str) -> Change:
    """Which parts of the agent's state a changed key feeds."""
    if key.startswith(POOLS):
        return Change(routes=True, pools=True)
    if key.startswith(NODES):
        return Change(routes=True, own_node=key == NODES + nodename)
    if key.startswith(BLOCKS) or key.startswith(WEPS):
        return Change(routes=True)
    return Change()


def encapsulations(pools: list[dict[str, Any]]) -> set[str]:
    """``{"ipip", "vxlan", "vxlan6"}`` subset enabled by any enabled pool."""
    out: set[str] = set()
    for pool in pools:
        spec = pool.get("spec") or {}
        if spec.get("disabled"):
            continue
        v6 = ":" in str(spec.get("cidr", ""))
        if _mode(spec.get("ipipMode")) != EncapMode.NEVER and not v6:
            out.add("ipip")
        if _mode(spec.get("vxlanMode")) != EncapMode.NEVER:
            out.add("vxlan6" if v6 else "vxlan")
    return out


def pod_mtu(nic_mtu: int, encaps: set[str], override: int | None = None) -> int:
    """NIC MTU minus the largest overhead of the enabled encapsulations (or the override)."""
    if override:
        return override
    overhead = max(
        [0]
        + ([IPIP_OVERHEAD] if "ipip" in encaps else [])
        + ([VXLAN_OVERHEAD] if "vxlan" in encaps else [])
        + ([VXLAN_V6_OVERHEAD] if "vxlan6" in encaps else [])
    )
    return nic_mtu - overhead


def _affinity_node(affinity: Any) -> str | None:
    if isinstance(affinity, str) and affinity.startswith("host:"):
        return affinity[len("host:") :]
    return None


def route_inputs(
    values: dict[str, Any],
    nodename: str,
    local_ip: str | None,
    interface: str,
    extra_workloads: dict[str, WorkloadInfo],
) -> RouteInputs:
    """Datastore values -> felix_like.routes inputs. Pure.

    ``extra_workloads`` are local workloads the agent created whose WorkloadEndpoint is not in the
    cache yet (ADD applies its /32 at once; the watch event follows).
    """
    pools: list[PoolInfo] = []
    blocks: list[BlockInfo] = []
    remote: list[RemoteNodeInfo] = []
    workloads: dict[str, WorkloadInfo] = {}
    borrowed: list[BorrowedIP] = []
    for key, value in values.items():
        if not isinstance(value, dict):
            continue
        spec = value.get("spec") or {}
        if key.startswith(POOLS) and spec.get("cidr"):
            pools.append(
                PoolInfo(
                    cidr=str(ipaddress.ip_network(spec["cidr"], strict=False)),
                    ipip_mode=_mode(spec.get("ipipMode")),
                    vxlan_mode=_mode(spec.get("vxlanMode")),
                    disabled=bool(spec.get("disabled")),
                )
            )
        elif key.startswith(NODES):
            name = key[len(NODES) :]
            if name == nodename:
                continue
            bgp = spec.get("bgp") or {}
            remote.append(
                RemoteNodeInfo(
                    name=name,
                    ipv4_address=bgp.get("ipv4Address"),
                    ipv6_address=bgp.get("ipv6Address"),
                    vxlan_tunnel_address=spec.get("ipv4VXLANTunnelAddr"),
                    vxlan_tunnel_address_v6=spec.get("ipv6VXLANTunnelAddr"),
                )
            )
        elif key.startswith(BLOCKS):
            try:
                cidr = key_to_cidr(key[len(BLOCKS) :])
            except ValueError:
                continue
            owner = _affinity_node(value.get("affinity"))
            blocks.append(BlockInfo(cidr=cidr, affinity=owner))
            borrowed.extend(_borrowed(cidr, value, owner))
        elif key.startswith(WEPS) and spec.get("node") == nodename and spec.get("interfaceName"):
            for net in spec.get("ipNetworks") or []:
                ip = str(ipaddress.ip_interface(net).ip)
                workloads[ip] = WorkloadInfo(ip=ip, interface=spec["interfaceName"])
    for ip, wl in extra_workloads.items():
        workloads.setdefault(ip, wl)
    local = LocalNodeInfo(name=nodename, ipv4_address=local_ip, interface=interface)
    return RouteInputs(
        local_node=local,
        pools=tuple(sorted(pools, key=lambda p: p.cidr)),
        blocks=tuple(sorted(blocks, key=lambda b: b.cidr)),
        remote_nodes=tuple(sorted(remote, key=lambda n: n.name)),
        workloads=tuple(sorted(workloads.values(), key=lambda w: w.ip)),
        borrowed=tuple(sorted(borrowed, key=lambda b: (b.ip, b.node))),
    )


def _borrowed(cidr: str, block: dict[str, Any], owner: str | None) -> list[BorrowedIP]:
    """Allocations in ``block`` whose workload runs on another node than the block's owner."""
    attrs = block.get("attributes") or []
    allocations = block.get("allocations") or []
    net = ipaddress.ip_network(cidr)
    out: list[BorrowedIP] = []
    for ordinal, idx in enumerate(allocations):
        if idx is None or not isinstance(idx, int) or idx >= len(attrs):
            continue
        node = ((attrs[idx] or {}).get("secondary") or {}).get("node")
        if node and node != owner:
            out.append(BorrowedIP(ip=str(net.network_address + ordinal), node=node))
    return out
