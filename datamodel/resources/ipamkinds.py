"""IPReservation and BlockAffinity: the two IPAM-facing kinds of projectcalico.org/v3 beside IPPool.

IPReservation (cluster-scoped): addresses IPAM never hands out automatically. Calico's IPAM skips
them in auto-assign (CNI ADDs, tunnel addresses) but still lets a caller assign one by name
(``ipam assign --ip``, Calico's ``cni.projectcalico.org/ipAddrs``), so does Tabby's.

BlockAffinity: a node's claim on an IPAM block. Calico's IPAM writes these itself; the kind here is
a read-only *view* of Tabby's ``ipam/v2/affinity/<node>/<cidr>`` records, shaped as Calico's
BlockAffinity (name ``<node>-<cidr with . : / as ->``, spec.state/node/cidr/deleted/type), so
``tabbyctl get blockaffinities`` shows what ``kubectl get blockaffinities`` shows on a Calico
cluster. Writing one is refused (``READ_ONLY``): only IPAM changes affinities.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar, Literal

from pydantic import Field

from datamodel.resources.common import CIDR, CalicoModel, Resource, name_problem


class IPReservationSpec(CalicoModel):
    """reservedCIDRs: addresses or CIDRs (host bits allowed, as Calico's `cidr` validator), v4 or v6."""

    reservedCIDRs: list[CIDR] | None = None


class IPReservation(Resource):
    """projectcalico.org/v3 IPReservation."""

    KIND: ClassVar[str] = "IPReservation"
    PLURAL: ClassVar[str] = "ipreservations"
    ALIASES: ClassVar[tuple[str, ...]] = ("ipreservation", "ipreservations", "reservation", "reservations")

    spec: IPReservationSpec = Field(default_factory=IPReservationSpec)

    def wide_row(self) -> dict[str, str]:
        cidrs = ",".join(self.spec.reservedCIDRs or [])
        if len(cidrs) > 80:  # calicoctl's joinAndTruncate ... 80
            cidrs = cidrs[:77] + "..."
        return {"NAME": self.name, "CIDRS": cidrs}

    def reserved_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The reserved addresses as networks (a bare address is its /32 or /128)."""
        return [ipaddress.ip_network(c, strict=False) for c in self.spec.reservedCIDRs or []]


class BlockAffinitySpec(CalicoModel):
    """Calico's BlockAffinitySpec (deleted is a string "true"/"false" there, as here)."""

    state: Literal["confirmed", "pending", "pendingDeletion"]
    node: str
    cidr: CIDR
    deleted: Literal["true", "false"] = "false"
    type: str | None = None


def block_affinity_name(node: str, cidr: str) -> str:
    """Calico's name for the affinity of ``node`` on ``cidr``: ``<node>-<cidr>`` with ``.``, ``:`` and
    ``/`` as ``-`` (what kubectl shows as the BlockAffinity name)."""
    return f"{node}-{cidr.replace('.', '-').replace(':', '-').replace('/', '-')}"


class BlockAffinity(Resource):
    """projectcalico.org/v3 BlockAffinity: read-only view of IPAM's affinity records."""

    KIND: ClassVar[str] = "BlockAffinity"
    PLURAL: ClassVar[str] = "blockaffinities"
    ALIASES: ClassVar[tuple[str, ...]] = ("blockaffinity", "blockaffinities", "affinity", "affinities")
    #: Writes (create/apply/replace/delete/label/patch) are refused: IPAM owns these records.
    READ_ONLY: ClassVar[str] = "block affinities are managed by Tabby's IPAM (see tabbyctl ipam show --show-blocks)"

    spec: BlockAffinitySpec

    @classmethod
    def check_name(cls, name: str) -> str | None:
        return name_problem(name)

    def ps_row(self) -> dict[str, str]:
        return {"NAME": self.name, "NODE": self.spec.node, "CIDR": self.spec.cidr, "STATE": self.spec.state}
