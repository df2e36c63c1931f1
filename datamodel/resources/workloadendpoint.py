"""WorkloadEndpoint: one pod interface on one node, written by the node agent on CNI ADD.

Field names are Calico's (spec.orchestrator, node, containerID, pod, endpoint, workload,
ipNetworks, profiles, interfaceName, mac, ports) so calicoctl-style tooling reads them unchanged.
Names follow Calico: ``<node>-k8s-<pod>-<endpoint>`` or ``<node>-cni-<containerID>-<endpoint>``
with every dash inside a part doubled, so the name can be split back into its parts.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from datamodel.resources.common import CIDR, CalicoModel, IPAddr, MACAddr, Resource

#: Annotations Tabby puts on the WorkloadEndpoints it writes: the IPAM handle holding the pod's
#: addresses (so ``ipam check`` can tell live allocations from leaks) and the CNI network name.
ANNOTATION_HANDLE = "tabby.io/handle"
ANNOTATION_NETWORK = "tabby.io/network"


class EndpointPort(CalicoModel):
    """A named port of the workload (Calico: used by policy; kept for compatibility)."""

    name: str
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int = Field(ge=1, le=65535)
    hostPort: int | None = Field(default=None, ge=0, le=65535)
    hostIP: IPAddr | None = None


class WorkloadEndpointSpec(CalicoModel):
    """spec of a WorkloadEndpoint."""

    orchestrator: str | None = None
    workload: str | None = None
    node: str | None = None
    containerID: str | None = None
    pod: str | None = None
    endpoint: str | None = None
    serviceAccountName: str | None = None
    ipNetworks: list[CIDR] = Field(default_factory=list)
    ipv4Gateway: IPAddr | None = None
    ipv6Gateway: IPAddr | None = None
    profiles: list[str] | None = None
    interfaceName: str | None = None
    mac: MACAddr | None = None
    ports: list[EndpointPort] | None = None


class WorkloadEndpoint(Resource):
    """projectcalico.org/v3 WorkloadEndpoint (namespaced)."""

    KIND: ClassVar[str] = "WorkloadEndpoint"
    PLURAL: ClassVar[str] = "workloadendpoints"
    NAMESPACED: ClassVar[bool] = True
    ALIASES: ClassVar[tuple[str, ...]] = ("workloadendpoint", "workloadendpoints", "wep", "weps")

    spec: WorkloadEndpointSpec = Field(default_factory=WorkloadEndpointSpec)

    @classmethod
    def check_name(cls, name: str) -> str | None:
        # Container IDs may carry upper case and underscores (CNI allows them), so Calico's
        # generated names are not always DNS names: only refuse what breaks the key layout.
        if not name or len(name) > 253 or "/" in name or name.strip() != name:
            return f"must be 1-253 characters without '/' or surrounding spaces, got {name!r}"
        return None

    def ps_row(self) -> dict[str, str]:
        return {
            "NAMESPACE": self.namespace or "",
            "WORKLOAD": self.spec.workload or self.spec.pod or "",
            "NODE": self.spec.node or "",
            "NETWORKS": ",".join(self.spec.ipNetworks),
            "INTERFACE": self.spec.interfaceName or "",
        }

    def wide_row(self) -> dict[str, str]:
        return {
            "NAMESPACE": self.namespace or "",
            "NAME": self.name,
            **{k: v for k, v in self.ps_row().items() if k != "NAMESPACE"},
            "PROFILES": ",".join(self.spec.profiles or []),
            "MAC": self.spec.mac or "",
        }


def escape_part(part: str) -> str:
    """Calico doubles dashes inside each name part so ``-`` stays a separator."""
    return part.replace("-", "--")


def workload_endpoint_name(
    node: str, *, orchestrator: str, endpoint: str, pod: str | None = None, container_id: str | None = None
) -> str:
    """Calico's WEP name: ``<node>-k8s-<pod>-<endpoint>`` or ``<node>-cni-<containerID>-<endpoint>``."""
    if orchestrator == "k8s":
        if not pod:
            raise ValueError("a k8s workload endpoint needs the pod name")
        parts = [node, "k8s", pod, endpoint]
    else:
        if not container_id:
            raise ValueError("a cni workload endpoint needs the container ID")
        parts = [node, "cni", container_id, endpoint]
    return "-".join(escape_part(p) for p in parts)
