"""CalicoNodeStatus: a request for one node's agent/BGP/route status, which that node's agent fills in.

As in Calico: a user creates one naming ``spec.node``, the ``classes`` to report (Agent, BGP,
Routes) and ``updatePeriodSeconds`` (0 = never refresh); the node's agent writes ``status`` every
period. ``status`` follows Calico's CalicoNodeStatusStatus field names; what Tabby's agent fills
is documented in docs/tabbyctl.md (BIRD-specific fields name the BGP speaker Tabby runs).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from datamodel.resources.common import CalicoModel, Resource, name_problem

NodeStatusClass = Literal["Agent", "BGP", "Routes"]


class CalicoNodeStatusSpec(CalicoModel):
    """Calico's CalicoNodeStatusSpec."""

    node: str | None = None
    classes: list[NodeStatusClass] | None = None
    updatePeriodSeconds: int | None = Field(default=None, ge=0, le=4294967295)


class CalicoNodeStatusStatus(CalicoModel):
    """Calico's CalicoNodeStatusStatus; nested parts are kept as written (the agent writes them)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    lastUpdated: str | None = None
    agent: dict[str, Any] | None = None
    bgp: dict[str, Any] | None = None
    routes: dict[str, Any] | None = None


class CalicoNodeStatus(Resource):
    """projectcalico.org/v3 CalicoNodeStatus (cluster-scoped)."""

    KIND: ClassVar[str] = "CalicoNodeStatus"
    PLURAL: ClassVar[str] = "caliconodestatuses"
    ALIASES: ClassVar[tuple[str, ...]] = ("caliconodestatus", "caliconodestatuses", "nodestatus", "nodestatuses")

    spec: CalicoNodeStatusSpec = Field(default_factory=CalicoNodeStatusSpec)
    status: CalicoNodeStatusStatus | None = None

    def ps_row(self) -> dict[str, str]:
        return {"NAME": self.name, "NODE": self.spec.node or ""}

    def wide_row(self) -> dict[str, str]:
        return {**self.ps_row(), "CLASSES": ",".join(self.spec.classes or [])}

    @classmethod
    def check_name(cls, name: str) -> str | None:
        return name_problem(name)
