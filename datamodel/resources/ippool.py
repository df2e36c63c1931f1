"""IPPool: a CIDR that IPAM carves into blocks, with its encapsulation and NAT settings.

Rules follow Calico's validateIPPoolSpec and clientv3 defaulting: cidr strictly masked and not
overlapping link-local space, blockSize 26/122 by default within 20-32/116-128, a pool at least one
block big (unless disabled), at most one of IPIP/VXLAN and no IPIP on IPv6.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from datamodel.resources.common import (
    CalicoModel,
    NetworkSpan,
    Resource,
    Selector,
    cidr_span,
    go_bool,
    network_span,
    parse_ip_or_cidr,
)
from datamodel.resources.errors import Problems

EncapMode = Literal["Never", "Always", "CrossSubnet"]
AllowedUse = Literal["Workload", "Tunnel", "LoadBalancer"]

_LINK_LOCAL = {4: network_span("169.254.0.0/16"), 6: network_span("fe80::/10")}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}


def _empty_is_never(value: Any) -> Any:
    """Calico treats an empty mode as Never and stores Never."""
    return "Never" if value == "" else value


def _empty_is_all(value: Any) -> Any:
    """An empty nodeSelector means every node, stored as all()."""
    return "all()" if value == "" else value


def _empty_is_default_uses(value: Any) -> Any:
    """Unset or empty allowedUses means [Workload, Tunnel] (Calico's back-compatible default)."""
    return ["Workload", "Tunnel"] if value in (None, []) else value


class IPPoolSpec(CalicoModel):
    """spec of an IPPool, with Calico's field names and defaults."""

    cidr: str
    vxlanMode: Annotated[EncapMode, BeforeValidator(_empty_is_never)] = "Never"
    ipipMode: Annotated[EncapMode, BeforeValidator(_empty_is_never)] = "Never"
    natOutgoing: bool = False
    disabled: bool = False
    disableBGPExport: bool = False
    blockSize: int | None = None
    nodeSelector: Annotated[Selector, BeforeValidator(_empty_is_all)] = "all()"
    # Calico: both namespaceSelector and nodeSelector must match for the pool to be used.
    namespaceSelector: Selector | None = None
    allowedUses: Annotated[list[AllowedUse], BeforeValidator(_empty_is_default_uses)] = Field(
        default_factory=lambda: ["Workload", "Tunnel"]
    )
    assignmentMode: Literal["Automatic", "Manual"] | None = None

    @model_validator(mode="after")
    def _rules(self) -> IPPoolSpec:
        """validateIPPoolSpec and clientv3's defaulting, every problem collected in one pass."""
        problems = Problems()
        try:
            span: NetworkSpan | None = network_span(self.cidr)
        except ValueError as exc:
            problems.add("cidr", str(exc))
            span = None
        # The version is known even for an unparsable cidr, so blockSize is still checked.
        version = span.version if span is not None else (6 if ":" in self.cidr else 4)
        if self.blockSize is None:
            self.blockSize = DEFAULT_BLOCK_SIZE[version]
        low, high = BLOCK_SIZE_RANGE[version]
        block_ok = low <= self.blockSize <= high
        if not block_ok:
            problems.add(
                "blockSize", f"must be between {low} and {high} for an IPv{version} pool, got {self.blockSize}"
            )
        if span is not None:
            self.cidr = span.text  # normalised, as Calico stores it
            link_local = _LINK_LOCAL[version]
            if span.overlaps(link_local):
                problems.add("cidr", f"{span.text} overlaps the IPv{version} link-local range {link_local.text}")
            if block_ok and span.prefix > self.blockSize and not self.disabled:
                problems.add(
                    "cidr",
                    f"pool /{span.prefix} is smaller than one block (blockSize {self.blockSize});"
                    f" use a prefix of /{self.blockSize} or shorter, or a larger blockSize",
                )
        if version == 6 and self.ipipMode != "Never":
            problems.add("ipipMode", "IPIPMode other than 'Never' is not supported on an IPv6 IP pool (use vxlanMode)")
        if self.ipipMode != "Never" and self.vxlanMode != "Never":
            problems.add(
                "ipipMode",
                f"IPIP and VXLAN cannot both be enabled on one pool (ipipMode {self.ipipMode},"
                f" vxlanMode {self.vxlanMode})",
            )
        if "LoadBalancer" in self.allowedUses:
            for use in sorted(set(self.allowedUses) - {"LoadBalancer"}):
                problems.add("allowedUses", f"LoadBalancer cannot be used at the same time as: {use}")
            if self.ipipMode != "Never" or self.vxlanMode != "Never":
                problems.add("ipipMode", "neither IPIPMode nor VXLANMode can be enabled on a LoadBalancer IP pool")
            if self.disableBGPExport:
                problems.add("disableBGPExport", "must not be true on a LoadBalancer IP pool (Calico refuses it)")
            if self.nodeSelector != "all()":
                problems.add("nodeSelector", f"must be all() on a LoadBalancer IP pool, got {self.nodeSelector!r}")
        problems.raise_if_any()
        return self


class IPPool(Resource):
    """projectcalico.org/v3 IPPool (cluster-scoped)."""

    KIND: ClassVar[str] = "IPPool"
    PLURAL: ClassVar[str] = "ippools"
    ALIASES: ClassVar[tuple[str, ...]] = ("ippool", "ippools", "ipp", "ipps", "pool", "pools")

    spec: IPPoolSpec

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The pool CIDR as an ipaddress network (already validated and normalised; parsed once per cidr)."""
        return parse_ip_or_cidr(self.spec.cidr).network

    @property
    def ip_version(self) -> int:
        return self.network.version

    def ps_row(self) -> dict[str, str]:
        return {"NAME": self.name, "CIDR": self.spec.cidr, "SELECTOR": self.spec.nodeSelector}

    def wide_row(self) -> dict[str, str]:
        s = self.spec
        return {
            "NAME": self.name,
            "CIDR": s.cidr,
            "NAT": go_bool(s.natOutgoing),
            "IPIPMODE": s.ipipMode,
            "VXLANMODE": s.vxlanMode,
            "DISABLED": go_bool(s.disabled),
            "DISABLEBGPEXPORT": go_bool(s.disableBGPExport),
            "SELECTOR": s.nodeSelector,
        }

    def check_update(self, old: Resource) -> list[str]:
        """cidr and blockSize are immutable in Calico: existing blocks were cut with them."""
        problems: list[str] = []
        if isinstance(old, IPPool):
            if old.spec.cidr != self.spec.cidr:
                problems.append(f"spec.cidr: cannot be changed (was {old.spec.cidr}, now {self.spec.cidr})")
            if old.spec.blockSize != self.spec.blockSize:
                problems.append(
                    f"spec.blockSize: cannot be changed (was {old.spec.blockSize}, now {self.spec.blockSize})"
                )
        return problems


def pool_overlaps(pools: Iterable[IPPool]) -> list[tuple[IPPool, IPPool]]:
    """Pairs of differently named pools whose CIDRs overlap (Calico refuses such a pool).

    Sorted sweep per address family: O(n log n) plus the number of clashes (two CIDRs overlap
    exactly when one contains the other, so each pool is compared only with the still-open
    supernets before it). Pairs keep input order: (earlier pool, later pool).
    """
    items = list(pools)
    order = {id(p): i for i, p in enumerate(items)}
    keyed = sorted(((*cidr_span(p.spec.cidr), i, p) for i, p in enumerate(items)), key=lambda t: t[:3] + t[4:5])
    clashes: list[tuple[IPPool, IPPool]] = []
    stack: list[tuple[int, int, IPPool]] = []  # (version, last address, pool) of open supernets
    for version, start, _, end, _, pool in keyed:
        while stack and (stack[-1][0] != version or stack[-1][1] < start):
            stack.pop()
        for _, _, other in stack:
            if other.name != pool.name:
                a, b = (other, pool) if order[id(other)] < order[id(pool)] else (pool, other)
                clashes.append((a, b))
        stack.append((version, end, pool))
    clashes.sort(key=lambda ab: (order[id(ab[1])], order[id(ab[0])]))
    return clashes
