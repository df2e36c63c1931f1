"""ClusterInformation: the singleton `default` recording which version set the cluster up.

Written at first datastore initialisation by whichever of tabbyctl or the node agent finds none
(as calico-node does), so `tabbyctl version` prints the Cluster Version and `datastoreReady`
(false while `datastore migrate lock` holds) has a home.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from datamodel.resources.common import CalicoModel, Resource


class ClusterInformationSpec(CalicoModel):
    """Calico's ClusterInformationSpec fields."""

    clusterGUID: str | None = None
    clusterType: str | None = None
    calicoVersion: str | None = None
    datastoreReady: bool | None = None
    variant: str | None = None


class ClusterInformation(Resource):
    """projectcalico.org/v3 ClusterInformation (cluster-scoped singleton `default`)."""

    KIND: ClassVar[str] = "ClusterInformation"
    PLURAL: ClassVar[str] = "clusterinformations"
    ALIASES: ClassVar[tuple[str, ...]] = ("clusterinformation", "clusterinformations", "clusterinfo", "clusterinfos")

    spec: ClusterInformationSpec = Field(default_factory=ClusterInformationSpec)

    @classmethod
    def check_name(cls, name: str) -> str | None:
        if name != "default":
            return f"must be 'default' (ClusterInformation is a singleton), got {name!r}"
        return None

    def ps_row(self) -> dict[str, str]:
        s = self.spec
        ready = "" if s.datastoreReady is None else str(s.datastoreReady).lower()
        return {"NAME": self.name, "CALICOVERSION": s.calicoVersion or "", "DATASTOREREADY": ready}
