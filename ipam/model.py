"""IPAM's view of its inputs (IPPool, Node labels, IPAMConfiguration) and its result types.

IPAM reads the stored resources as plain JSON rather than through the resource models: the
resource API has already validated and defaulted them, and the allocation hot path should not
pay for model construction. Missing fields still fall back to Calico's defaults, so a pool
written by hand (or by an older writer) behaves as Calico would treat it.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any

from datamodel.resources import IPPool
from datamodel.selector import SelectorError, parse_selector
from ipam.block import IPNetwork

USE_WORKLOAD = "Workload"
USE_TUNNEL = "Tunnel"
DEFAULT_ALLOWED_USES = (USE_WORKLOAD, USE_TUNNEL)

AFFINITY_PENDING = "pending"
AFFINITY_CONFIRMED = "confirmed"

#: Secondary ``type`` values of tunnel addresses (Calico's names).
TUNNEL_TYPES = {"ipip": "ipipTunnelAddress", "vxlan": "vxlanTunnelAddress"}


@dataclass(frozen=True)
class Pool:
    """The fields of an IPPool that IPAM acts on."""

    name: str
    cidr: str
    block_size: int
    node_selector: str = "all()"
    disabled: bool = False
    allowed_uses: tuple[str, ...] = DEFAULT_ALLOWED_USES
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"

    @cached_property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)

    @property
    def version(self) -> int:
        return self.network.version

    def matches(self, labels: dict[str, str]) -> bool:
        """Does the pool's nodeSelector pick a node with these labels? A broken selector picks none."""
        try:
            return parse_selector(self.node_selector or "all()").matches(labels)
        except SelectorError:
            return False

    def contains(self, cidr_or_ip: str) -> bool:
        return _contains(self.cidr, cidr_or_ip)

    @classmethod
    def from_ippool(cls, pool: IPPool) -> Pool:
        """From a validated, defaulted IPPool (the node agent's model): no second set of defaults."""
        spec = pool.spec
        return cls(
            name=pool.name, cidr=spec.cidr, block_size=int(spec.blockSize or (26 if pool.ip_version == 4 else 122)),
            node_selector=spec.nodeSelector or "all()", disabled=spec.disabled,
            allowed_uses=tuple(spec.allowedUses) or DEFAULT_ALLOWED_USES, ipip_mode=spec.ipipMode,
            vxlan_mode=spec.vxlanMode,
        )

    @classmethod
    def from_resource(cls, doc: dict[str, Any]) -> Pool:
        spec = doc.get("spec") or {}
        net = ipaddress.ip_network(spec["cidr"], strict=False)
        default_bs = 26 if net.version == 4 else 122
        uses = spec.get("allowedUses")
        return cls(
            name=str((doc.get("metadata") or {}).get("name") or str(net)),
            cidr=str(net),
            block_size=int(spec.get("blockSize") or default_bs),
            node_selector=spec.get("nodeSelector") or "all()",
            disabled=bool(spec.get("disabled", False)),
            allowed_uses=tuple(uses) if uses else DEFAULT_ALLOWED_USES,
            ipip_mode=spec.get("ipipMode") or "Never",
            vxlan_mode=spec.get("vxlanMode") or "Never",
        )


@lru_cache(maxsize=65536)
def _contains(pool_cidr: str, cidr_or_ip: str) -> bool:
    """Cached: the allocation path asks the same few pool/block questions over and over."""
    pool = ipaddress.ip_network(pool_cidr)
    net = ipaddress.ip_network(cidr_or_ip, strict=False)
    return net.version == pool.version and net.subnet_of(pool)  # type: ignore[arg-type]


@dataclass(frozen=True)
class IPAMConfig:
    """IPAMConfiguration ``default`` spec, with Calico's defaults."""

    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    max_blocks_per_host: int = 0

    @classmethod
    def from_resource(cls, doc: dict[str, Any] | None) -> IPAMConfig:
        spec = (doc or {}).get("spec") or {}
        return cls(
            strict_affinity=bool(spec.get("strictAffinity", False)),
            auto_allocate_blocks=bool(spec.get("autoAllocateBlocks", True)),
            max_blocks_per_host=int(spec.get("maxBlocksPerHost", 0) or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "strictAffinity": self.strict_affinity,
            "autoAllocateBlocks": self.auto_allocate_blocks,
            "maxBlocksPerHost": self.max_blocks_per_host,
        }


def new_ipam_config_resource(config: IPAMConfig) -> dict[str, Any]:
    """A complete projectcalico.org/v3 IPAMConfiguration document, as the resource API stores it."""
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPAMConfiguration",
        "metadata": {
            "name": "default",
            "uid": str(uuid.uuid4()),
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": config.to_spec(),
    }


# -- handles ---------------------------------------------------------------------------------
def handle_doc(handle_id: str, blocks: dict[str, int]) -> dict[str, Any]:
    """Stored handle: which blocks hold how many of the handle's addresses (Calico's IPAMHandle)."""
    return {"handleID": handle_id, "block": dict(sorted(blocks.items())), "deleted": False}


def handle_blocks(doc: dict[str, Any] | None) -> dict[str, int]:
    if not doc:
        return {}
    blocks = doc.get("block") or {}
    return {str(k): int(v) for k, v in blocks.items()}


def affinity_doc(state: str) -> dict[str, Any]:
    return {"state": state, "deleted": False}


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AssignResult:
    """Addresses handed out, plain (``10.0.0.5``, ``fd00::5``), in allocation order."""

    v4: list[str] = field(default_factory=list)
    v6: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BlockUtilisation:
    cidr: str
    node: str | None
    total: int
    in_use: int
    free: int


@dataclass(frozen=True)
class PoolUtilisation:
    """One row group of ``ipam show``: GROUPING | CIDR | IPS TOTAL | IPS IN USE | IPS FREE."""

    name: str
    cidr: str
    total: int
    in_use: int
    free: int
    blocks: list[BlockUtilisation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IPInfo:
    """What IPAM knows about one address (``ipam show --ip``)."""

    ip: str
    pool: str | None
    block: str | None
    affinity: str | None
    allocated: bool
    handle_id: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    sequence_number: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReleasedAffinities:
    """What releasing a deleted node's affinities did."""

    #: Empty blocks deleted together with their affinity.
    released: list[str] = field(default_factory=list)
    #: Blocks that still hold addresses: kept, but no longer affine to any node.
    unaffined: list[str] = field(default_factory=list)
