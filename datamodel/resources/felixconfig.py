"""FelixConfiguration: the dataplane agent's settings, `default` cluster-wide and `node.<name>` per node.

Calico users' manifests carry it (MTU, routeRefreshInterval, logSeverityScreen, Prometheus,
failsafe ports, ipipEnabled/vxlanEnabled). The fields Tabby models are checked as Calico's
validator checks them; any other field of Calico's 150-odd is kept (extra fields are allowed at
this schema layer, since Calico accepts them) and refused at apply by the support policy, so it
is never silently ignored. Only what the user set is stored; `effective()` merges Felix's
defaults (FELIX_DEFAULTS), `default` and the node's `node.<name>` as Felix does.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from datamodel.resources.common import (
    CalicoModel,
    Duration,
    IPv4Addr,
    IPv6Addr,
    Resource,
    name_problem,
    node_scoped_name_problem,
    parse_ip_or_cidr,
)
from datamodel.resources.errors import Problems

LogLevel = Literal["Trace", "Debug", "Info", "Warning", "Error", "Fatal"]
_PROMETHEUS_HOST = re.compile(r"^[a-zA-Z0-9:._+-]{1,64}$")
_INTERFACE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
Port = Annotated[int, Field(ge=1, le=65535)]


def _check_regexp(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


def _check_host(value: str) -> str:
    if not _PROMETHEUS_HOST.match(value):
        raise ValueError(f"must be an address or a host name of at most 64 characters, got {value!r}")
    return value


class ProtoPort(CalicoModel):
    """One failsafe port: protocol TCP/UDP/SCTP, port, optional net (Calico's validateProtoPort)."""

    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int = Field(ge=0, le=65535)
    net: str | None = None

    @model_validator(mode="after")
    def _net(self) -> ProtoPort:
        if self.net is not None:
            try:
                parse_ip_or_cidr(self.net)
            except ValueError as exc:
                problems = Problems()
                problems.add("net", str(exc))
                problems.raise_if_any()
        return self


#: Felix's defaults for the fields Tabby models (field-notes.md; Calico's felix/config/config_params.go).
FELIX_DEFAULTS: dict[str, Any] = {
    "logSeverityScreen": "Info",
    "routeRefreshInterval": "90s",
    "reportingInterval": "30s",
    "ipipEnabled": None,  # None: decided from the pools, as Felix does
    "vxlanEnabled": None,
    "vxlanPort": 4789,
    "vxlanVNI": 4096,
    "ipipMTU": 0,  # 0: auto-detect from the host interface
    "vxlanMTU": 0,
    "vxlanMTUV6": 0,
    "prometheusMetricsEnabled": False,
    "prometheusMetricsPort": 9091,
    "healthEnabled": False,
    "healthPort": 9099,
    "interfacePrefix": "cali",
    "defaultEndpointToHostAction": "Drop",
    "ipv6Support": True,
    "failsafeInboundHostPorts": [
        {"protocol": p, "port": n}
        for p, n in (
            ("TCP", 22),
            ("UDP", 68),
            ("TCP", 179),
            ("TCP", 2379),
            ("TCP", 2380),
            ("TCP", 5473),
            ("TCP", 6443),
            ("TCP", 6666),
            ("TCP", 6667),
        )
    ],
    "failsafeOutboundHostPorts": [
        {"protocol": p, "port": n}
        for p, n in (
            ("UDP", 53),
            ("UDP", 67),
            ("TCP", 179),
            ("TCP", 2379),
            ("TCP", 2380),
            ("TCP", 5473),
            ("TCP", 6443),
            ("TCP", 6666),
            ("TCP", 6667),
        )
    ],
}


class FelixConfigurationSpec(CalicoModel):
    """The FelixConfiguration fields Tabby models; others are kept as extras (see module docstring)."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    logSeverityScreen: LogLevel | None = None
    logSeverityFile: LogLevel | None = None
    logSeveritySys: LogLevel | None = None
    routeRefreshInterval: Duration | None = None
    reportingInterval: Duration | None = None
    ipipEnabled: bool | None = None
    ipipMTU: int | None = Field(default=None, ge=0)
    vxlanEnabled: bool | None = None
    vxlanMTU: int | None = Field(default=None, ge=0)
    vxlanMTUV6: int | None = Field(default=None, ge=0)
    vxlanPort: Port | None = None
    vxlanVNI: int | None = Field(default=None, ge=0, le=16777215)
    mtuIfacePattern: Annotated[str, AfterValidator(_check_regexp)] | None = None
    prometheusMetricsEnabled: bool | None = None
    prometheusMetricsHost: Annotated[str, AfterValidator(_check_host)] | None = None
    prometheusMetricsPort: Port | None = None
    healthEnabled: bool | None = None
    healthHost: Annotated[str, AfterValidator(_check_host)] | None = None
    healthPort: Port | None = None
    failsafeInboundHostPorts: list[ProtoPort] | None = None
    failsafeOutboundHostPorts: list[ProtoPort] | None = None
    natOutgoingAddress: IPv4Addr | None = None
    deviceRouteSourceAddress: IPv4Addr | None = None
    deviceRouteSourceAddressIPv6: IPv6Addr | None = None
    interfacePrefix: str | None = None
    defaultEndpointToHostAction: Literal["Drop", "Accept", "Return"] | None = None
    ipv6Support: bool | None = None
    wireguardEnabled: bool | None = None
    bpfEnabled: bool | None = None

    @model_validator(mode="after")
    def _rules(self) -> FelixConfigurationSpec:
        problems = Problems()
        for key in self.model_extra or {}:
            if not re.fullmatch(r"[a-z][A-Za-z0-9]*", key):
                problems.add(key, "unknown field (FelixConfiguration fields are camelCase names)")
        for attr in ("interfacePrefix",):
            value = getattr(self, attr)
            if value is not None and not all(_INTERFACE.match(p) for p in value.split(",")):
                problems.add(attr, f"must be comma-separated interface name prefixes, got {value!r}")
        problems.raise_if_any()
        return self


class FelixConfiguration(Resource):
    """projectcalico.org/v3 FelixConfiguration: `default` or `node.<nodename>`."""

    KIND: ClassVar[str] = "FelixConfiguration"
    PLURAL: ClassVar[str] = "felixconfigurations"
    ALIASES: ClassVar[tuple[str, ...]] = ("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs")

    spec: FelixConfigurationSpec = Field(default_factory=FelixConfigurationSpec)

    @classmethod
    def check_name(cls, name: str) -> str | None:
        if name == "default":
            return None
        if name.startswith("node."):
            return node_scoped_name_problem(name)
        return name_problem(name)

    def ps_row(self) -> dict[str, str]:
        return {"NAME": self.name}


def effective_felix_config(configs: list[FelixConfiguration], node: str) -> dict[str, Any]:
    """Felix's view for `node`: FELIX_DEFAULTS, then `default`, then `node.<node>` (set fields win)."""
    out = dict(FELIX_DEFAULTS)
    for wanted in ("default", f"node.{node}"):
        for cfg in configs:
            if cfg.name == wanted:
                out.update(cfg.spec.model_dump(mode="json", exclude_none=True))
    return out
