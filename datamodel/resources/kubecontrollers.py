"""KubeControllersConfiguration: calico-kube-controllers' settings, the singleton `default`.

Calico users' manifests carry it. Tabby's counterpart is the cluster controller
(``tabby-controller``: IPAM garbage collection, node expiry), which reads the node controller's
reconcilerPeriod and leakGracePeriod and logSeverityScreen from it (controller/cluster/kcc.py);
the fields are modelled and validated as Calico's validator does, stored, and the support policy
says which are honoured (see controller/support_policy.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from datamodel.resources.common import CalicoModel, Duration, Resource

EnabledDisabled = Literal["Enabled", "Disabled"]
KCCLogLevel = Literal["Trace", "Debug", "Info", "Warning", "Error", "Fatal"]


class AutoHostEndpointConfig(CalicoModel):
    autoCreate: EnabledDisabled | None = None
    createDefaultHostEndpoint: Literal["Enabled", "Disabled"] | None = None


class NodeControllerConfig(CalicoModel):
    reconcilerPeriod: Duration | None = None
    syncLabels: EnabledDisabled | None = None
    hostEndpoint: AutoHostEndpointConfig | None = None
    leakGracePeriod: Duration | None = None


class ReconcilerConfig(CalicoModel):
    """Policy / WorkloadEndpoint / ServiceAccount / Namespace controllers: a reconciler period only."""

    reconcilerPeriod: Duration | None = None


class LoadBalancerControllerConfig(CalicoModel):
    assignIPs: Literal["AllServices", "RequestedServicesOnly"] | None = None


class ControllersConfig(CalicoModel):
    node: NodeControllerConfig | None = None
    policy: ReconcilerConfig | None = None
    workloadEndpoint: ReconcilerConfig | None = None
    serviceAccount: ReconcilerConfig | None = None
    namespace: ReconcilerConfig | None = None
    loadBalancer: LoadBalancerControllerConfig | None = None


class KubeControllersConfigurationSpec(CalicoModel):
    """Calico's KubeControllersConfigurationSpec."""

    logSeverityScreen: KCCLogLevel | None = None
    healthChecks: EnabledDisabled | None = None
    etcdV3CompactionPeriod: Duration | None = None
    prometheusMetricsPort: int | None = Field(default=None, ge=0, le=65535)
    debugProfilePort: int | None = Field(default=None, ge=0, le=65535)
    controllers: ControllersConfig = Field(default_factory=ControllersConfig)


class KubeControllersConfiguration(Resource):
    """projectcalico.org/v3 KubeControllersConfiguration (cluster-scoped singleton `default`)."""

    KIND: ClassVar[str] = "KubeControllersConfiguration"
    PLURAL: ClassVar[str] = "kubecontrollersconfigurations"
    ALIASES: ClassVar[tuple[str, ...]] = (
        "kubecontrollersconfiguration",
        "kubecontrollersconfigurations",
        "kubecontrollersconfig",
        "kubecontrollersconfigs",
    )

    spec: KubeControllersConfigurationSpec = Field(default_factory=KubeControllersConfigurationSpec)
    #: Written by calico-kube-controllers (runningConfig, environmentVars); kept as written.
    status: dict[str, Any] | None = None

    @classmethod
    def check_name(cls, name: str) -> str | None:
        if name != "default":
            return f"must be 'default' (KubeControllersConfiguration is a singleton), got {name!r}"
        return None
