"""Calico's policy kinds (projectcalico.org/v3): NetworkPolicy, GlobalNetworkPolicy, Tier, Profile,
NetworkSet, GlobalNetworkSet and the staged kinds, validated as Calico's validator does.

Why one module: the policy kinds share the Rule and EntityRule models and the ``types`` defaulting
(Calico's client stores ``types`` defaulted: Ingress when there are no egress rules, Egress when there
are egress rules only, both when there are both). Their meaning for traffic is the compiler's
(``felix_like/policy.py``); fields Tabby cannot honour are refused at apply by the support policy
(``controller/support_policy.py``), never here: what Calico accepts as valid parses.

Staged kinds (Calico Open Source 3.30) are validated like their enforced twins and never enforced.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from datamodel.resources.common import CIDR, CalicoModel, Resource, Selector, parse_ip_or_cidr
from datamodel.resources.errors import Problems, describe_value
from datamodel.resources.kubernetes import NetworkPolicySpec as KubernetesNetworkPolicySpec
from datamodel.resources.kubernetes import port_name_problem

#: Calico's fixed tiers (3.30): name -> (order, default action). Their order cannot be changed.
FIXED_TIERS: dict[str, tuple[float, str]] = {
    "adminnetworkpolicy": (1000.0, "Pass"),
    "default": (1_000_000.0, "Deny"),
    "baselineadminnetworkpolicy": (10_000_000.0, "Pass"),
}
DEFAULT_TIER = "default"
#: Where Kubernetes NetworkPolicies sit: the default tier, at order 1000 (as Calico converts them).
KUBERNETES_POLICY_ORDER = 1000.0

#: Protocol names Calico accepts (numorstring.Protocol), and their numbers.
PROTOCOLS: dict[str, int] = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
_PORT_PROTOCOLS = {6, 17, 132, 136}
_RANGE_RE = re.compile(r"^(\d+):(\d+)$")


def _protocol(value: Any) -> Any:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a protocol name or number, got {describe_value(value)}")
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise ValueError(f"protocol number must be between 1 and 255, got {value}")
        return value
    if value.isdigit():
        return _protocol(int(value))
    for name in PROTOCOLS:
        if value.lower() == name.lower():
            return name
    raise ValueError(f"must be one of {', '.join(PROTOCOLS)} or a number 1-255, got {value!r}")


Protocol = Annotated[int | str | None, BeforeValidator(_protocol)]


def protocol_number(value: int | str | None) -> int | None:
    if value is None:
        return None
    return value if isinstance(value, int) else PROTOCOLS[value]


def _port(value: Any) -> Any:
    """Calico's numorstring.Port: a number, a "min:max" range, or a named port."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a port number, a 'min:max' range or a port name, got {describe_value(value)}")
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {value}")
        return value
    if value.isdigit():
        return _port(int(value))
    m = _RANGE_RE.match(value)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi > 65535 or lo > hi:
            raise ValueError(f"port range must be min:max with 0 <= min <= max <= 65535, got {value!r}")
        return value
    why = port_name_problem(value)
    if why:
        raise ValueError(why)
    return value


Port = Annotated[int | str, BeforeValidator(_port)]


def port_range(port: int | str) -> tuple[int, int] | None:
    """(min, max) of a numeric port or range; None for a named port."""
    if isinstance(port, int):
        return port, port
    m = _RANGE_RE.match(port)
    return (int(m.group(1)), int(m.group(2))) if m else None


class ICMPFields(CalicoModel):
    type: int | None = Field(default=None, ge=0, le=254)
    code: int | None = Field(default=None, ge=0, le=255)

    @model_validator(mode="after")
    def _code_needs_type(self) -> ICMPFields:
        if self.code is not None and self.type is None:
            raise ValueError("icmp code may only be given with a type")
        return self


class ServiceAccountMatch(CalicoModel):
    names: list[str] | None = None
    selector: Selector | None = None


class ServiceMatch(CalicoModel):
    name: str
    namespace: str | None = None


class HTTPPath(CalicoModel):
    exact: str | None = None
    prefix: str | None = None


class HTTPMatch(CalicoModel):
    methods: list[str] | None = None
    paths: list[HTTPPath] | None = None


class RuleMetadata(CalicoModel):
    annotations: dict[str, str] | None = None


class EntityRule(CalicoModel):
    """A rule's source or destination: every given field must match (AND)."""

    nets: list[CIDR] | None = None
    notNets: list[CIDR] | None = None
    selector: Selector | None = None
    notSelector: Selector | None = None
    namespaceSelector: Selector | None = None
    ports: list[Port] | None = None
    notPorts: list[Port] | None = None
    serviceAccounts: ServiceAccountMatch | None = None
    services: ServiceMatch | None = None

    def has_ports(self) -> bool:
        return bool(self.ports or self.notPorts)


class Rule(CalicoModel):
    action: Literal["Allow", "Deny", "Log", "Pass"]
    protocol: Protocol = None
    notProtocol: Protocol = None
    icmp: ICMPFields | None = None
    notICMP: ICMPFields | None = None
    ipVersion: Literal[4, 6] | None = None
    source: EntityRule = Field(default_factory=EntityRule)
    destination: EntityRule = Field(default_factory=EntityRule)
    http: HTTPMatch | None = None
    metadata: RuleMetadata | None = None

    @model_validator(mode="after")
    def _check(self) -> Rule:
        """Calico's rule validation: ports need a protocol that has ports, ICMP fields need ICMP,
        ipVersion agrees with the protocol and every CIDR, named ports only on the destination... and
        each problem named by its field."""
        problems = Problems()
        proto = protocol_number(self.protocol)
        for side in ("source", "destination"):
            entity: EntityRule = getattr(self, side)
            if entity.has_ports() and proto not in _PORT_PROTOCOLS:
                problems.add(f"{side}.ports", "ports may only be given with protocol TCP, UDP, SCTP or UDPLite")
            for field in ("nets", "notNets"):
                for i, net in enumerate(getattr(entity, field) or []):
                    version = parse_ip_or_cidr(net).version
                    if self.ipVersion is not None and version != self.ipVersion:
                        problems.add(f"{side}.{field}[{i}]",
                                     f"is IPv{version} but the rule's ipVersion is {self.ipVersion}")
        for field in ("icmp", "notICMP"):
            if getattr(self, field) is not None and proto not in (1, 58):
                problems.add(field, "may only be given with protocol ICMP or ICMPv6")
        if self.ipVersion is not None and proto in (1, 58) and (proto == 1) != (self.ipVersion == 4):
            problems.add("ipVersion", f"does not match protocol {self.protocol}")
        if self.protocol is not None and self.notProtocol is not None and \
                protocol_number(self.protocol) == protocol_number(self.notProtocol):
            problems.add("notProtocol", "is the same protocol as protocol: the rule can never match")
        problems.raise_if_any()
        return self


def infer_types(ingress: list[Rule] | None, egress: list[Rule] | None) -> list[str]:
    """Calico's defaulting of an empty ``types``."""
    if egress and not ingress:
        return ["Egress"]
    if egress:
        return ["Ingress", "Egress"]
    return ["Ingress"]


def _selector_order(value: Any) -> Any:
    if isinstance(value, bool) or (value is not None and not isinstance(value, int | float)):
        raise ValueError(f"must be a number, got {describe_value(value)}")
    return value


Order = Annotated[float | None, BeforeValidator(_selector_order)]


class NetworkPolicySpec(CalicoModel):
    order: Order = None
    tier: str = DEFAULT_TIER
    selector: Selector = ""
    types: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None
    serviceAccountSelector: Selector | None = None
    performanceHints: list[Literal["AssumeNeededOnEveryNode"]] | None = None

    @model_validator(mode="after")
    def _types(self) -> NetworkPolicySpec:
        problems = Problems()
        why = tier_name_problem(self.tier)
        if why:
            problems.add("tier", why)
        if self.types is not None and len(set(self.types)) != len(self.types):
            problems.add("types", f"must not repeat a type, got {self.types}")
        if not self.types:
            self.types = infer_types(self.ingress, self.egress)  # type: ignore[assignment]
        else:
            if self.ingress and "Ingress" not in self.types:
                problems.add("ingress", "ingress rules are given but types does not include Ingress")
            if self.egress and "Egress" not in self.types:
                problems.add("egress", "egress rules are given but types does not include Egress")
        problems.raise_if_any()
        return self


class GlobalNetworkPolicySpec(NetworkPolicySpec):
    namespaceSelector: Selector | None = None
    doNotTrack: bool | None = None
    preDNAT: bool | None = None
    applyOnForward: bool | None = None

    @model_validator(mode="after")
    def _host_fields(self) -> GlobalNetworkPolicySpec:
        problems = Problems()
        if self.doNotTrack and self.preDNAT:
            problems.add("preDNAT", "preDNAT and doNotTrack cannot both be true")
        if (self.doNotTrack or self.preDNAT) and self.applyOnForward is False:
            problems.add("applyOnForward", "must be true when doNotTrack or preDNAT is true")
        if self.preDNAT and self.egress:
            problems.add("egress", "a preDNAT policy cannot have egress rules")
        problems.raise_if_any()
        return self


def tier_name_problem(name: str) -> str | None:
    from datamodel.resources.common import name_problem

    why = name_problem(name)
    if why is None and "." in name:
        why = f"must not contain '.', got {name!r}"
    return why


def _policy_row(res: Any, global_: bool) -> dict[str, str]:
    row = {} if global_ else {"NAMESPACE": res.namespace or ""}
    row["NAME"] = res.name
    row["TIER"] = res.spec.tier
    return row


def _policy_wide(res: Any, global_: bool) -> dict[str, str]:
    order = res.spec.order
    return {**_policy_row(res, global_), "ORDER": "" if order is None else f"{order:g}",
            "SELECTOR": res.spec.selector}


class CalicoNetworkPolicy(Resource):
    """projectcalico.org/v3 NetworkPolicy (namespaced): the policy's selector picks endpoints of its
    own namespace."""

    KIND: ClassVar[str] = "NetworkPolicy"
    PLURAL: ClassVar[str] = "networkpolicies"
    NAMESPACED: ClassVar[bool] = True
    ALIASES: ClassVar[tuple[str, ...]] = ("networkpolicy", "networkpolicies", "policy", "policies", "np", "pol",
                                          "pols")

    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)

    def ps_row(self) -> dict[str, str]:
        return _policy_row(self, False)

    def wide_row(self) -> dict[str, str]:
        return _policy_wide(self, False)


class GlobalNetworkPolicy(Resource):
    """projectcalico.org/v3 GlobalNetworkPolicy: endpoints of every namespace (``namespaceSelector``
    narrows them)."""

    KIND: ClassVar[str] = "GlobalNetworkPolicy"
    PLURAL: ClassVar[str] = "globalnetworkpolicies"
    ALIASES: ClassVar[tuple[str, ...]] = ("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps")

    spec: GlobalNetworkPolicySpec = Field(default_factory=GlobalNetworkPolicySpec)

    def ps_row(self) -> dict[str, str]:
        return _policy_row(self, True)

    def wide_row(self) -> dict[str, str]:
        return _policy_wide(self, True)


class TierSpec(CalicoModel):
    order: Order = None
    defaultAction: Literal["Deny", "Pass"] | None = None


class Tier(Resource):
    """A tier: an ordered group of policies; ``defaultAction`` (Deny when omitted) is what happens at
    the end of the tier to traffic of an endpoint some policy of the tier selected."""

    KIND: ClassVar[str] = "Tier"
    PLURAL: ClassVar[str] = "tiers"
    ALIASES: ClassVar[tuple[str, ...]] = ("tier", "tiers")

    spec: TierSpec = Field(default_factory=TierSpec)

    @classmethod
    def check_name(cls, name: str) -> str | None:
        return tier_name_problem(name)

    @model_validator(mode="after")
    def _fixed(self) -> Tier:
        fixed = FIXED_TIERS.get(self.name)
        if fixed is not None:
            problems = Problems()
            if self.spec.order is None:
                self.spec.order = fixed[0]
            elif self.spec.order != fixed[0]:
                problems.add("spec.order", f"the {self.name} tier's order is fixed at {fixed[0]:g}")
            if self.spec.defaultAction is None:
                self.spec.defaultAction = fixed[1]  # type: ignore[assignment]
            elif self.spec.defaultAction != fixed[1]:
                problems.add("spec.defaultAction", f"the {self.name} tier's default action is fixed at {fixed[1]}")
            problems.raise_if_any()
        elif self.spec.defaultAction is None:
            self.spec.defaultAction = "Deny"
        return self

    def ps_row(self) -> dict[str, str]:
        order = self.spec.order
        return {"NAME": self.name, "ORDER": "" if order is None else f"{order:g}"}


def tier_of(name: str, doc: Tier | None) -> tuple[float | None, str]:
    """(order, default action) of a tier, with or without its document (the fixed tiers exist always;
    an unknown tier sorts last and denies at its end)."""
    if doc is not None:
        return doc.spec.order, doc.spec.defaultAction or "Deny"
    return FIXED_TIERS.get(name, (None, "Deny"))


class ProfileSpec(CalicoModel):
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None
    labelsToApply: dict[str, str] | None = None


class Profile(Resource):
    """A profile: rules applied after every tier, to the endpoints that name it in ``profiles``."""

    KIND: ClassVar[str] = "Profile"
    PLURAL: ClassVar[str] = "profiles"
    ALIASES: ClassVar[tuple[str, ...]] = ("profile", "profiles", "pro", "pros")

    spec: ProfileSpec = Field(default_factory=ProfileSpec)

    @classmethod
    def check_name(cls, name: str) -> str | None:
        # Calico's profile names (kns.<namespace>, ksa.<ns>.<sa>) are DNS subdomains, no stricter.
        from datamodel.resources.common import name_problem

        return name_problem(name)

    def ps_row(self) -> dict[str, str]:
        return {"NAME": self.name}

    def wide_row(self) -> dict[str, str]:
        labels = sorted((self.spec.labelsToApply or {}).items())
        return {"NAME": self.name, "LABELS": ",".join(f"{k}={v}" for k, v in labels)}


class NetworkSetSpec(CalicoModel):
    nets: list[CIDR] | None = None


def _set_row(res: Any, namespaced: bool) -> dict[str, str]:
    row = {"NAMESPACE": res.namespace or ""} if namespaced else {}
    return {**row, "NAME": res.name}


class NetworkSet(Resource):
    """A labelled set of CIDRs in a namespace: rule selectors of that namespace match it."""

    KIND: ClassVar[str] = "NetworkSet"
    PLURAL: ClassVar[str] = "networksets"
    NAMESPACED: ClassVar[bool] = True
    ALIASES: ClassVar[tuple[str, ...]] = ("networkset", "networksets", "netsets")

    spec: NetworkSetSpec = Field(default_factory=NetworkSetSpec)

    def ps_row(self) -> dict[str, str]:
        return _set_row(self, True)

    def wide_row(self) -> dict[str, str]:
        return {**self.ps_row(), "NETS": ",".join(self.spec.nets or [])}


class GlobalNetworkSet(Resource):
    """A labelled set of CIDRs of no namespace: GlobalNetworkPolicy selectors match it."""

    KIND: ClassVar[str] = "GlobalNetworkSet"
    PLURAL: ClassVar[str] = "globalnetworksets"
    ALIASES: ClassVar[tuple[str, ...]] = ("globalnetworkset", "globalnetworksets", "gnetsets")

    spec: NetworkSetSpec = Field(default_factory=NetworkSetSpec)

    def ps_row(self) -> dict[str, str]:
        return _set_row(self, False)

    def wide_row(self) -> dict[str, str]:
        return {**self.ps_row(), "NETS": ",".join(self.spec.nets or [])}


def set_networks(nets: list[str] | None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A NetworkSet's or a rule's CIDRs as networks (host bits masked off, as Felix does)."""
    return [ipaddress.ip_interface(n).network for n in nets or []]


# -- staged kinds: validated, stored, never enforced ----------------------------------------------

StagedAction = Literal["Set", "Delete", "Learn", "Ignore"]


class StagedNetworkPolicySpec(NetworkPolicySpec):
    stagedAction: StagedAction | None = None


class StagedGlobalNetworkPolicySpec(GlobalNetworkPolicySpec):
    stagedAction: StagedAction | None = None


class StagedKubernetesNetworkPolicySpec(KubernetesNetworkPolicySpec):
    stagedAction: StagedAction | None = None


class StagedNetworkPolicy(Resource):
    """A NetworkPolicy staged for review: validated and stored, never enforced (as Felix does)."""

    KIND: ClassVar[str] = "StagedNetworkPolicy"
    PLURAL: ClassVar[str] = "stagednetworkpolicies"
    NAMESPACED: ClassVar[bool] = True
    ALIASES: ClassVar[tuple[str, ...]] = ("stagednetworkpolicy", "stagednetworkpolicies", "snp", "snps")

    spec: StagedNetworkPolicySpec = Field(default_factory=StagedNetworkPolicySpec)

    def ps_row(self) -> dict[str, str]:
        return _policy_row(self, False)


class StagedGlobalNetworkPolicy(Resource):
    """A GlobalNetworkPolicy staged for review: validated and stored, never enforced."""

    KIND: ClassVar[str] = "StagedGlobalNetworkPolicy"
    PLURAL: ClassVar[str] = "stagedglobalnetworkpolicies"
    ALIASES: ClassVar[tuple[str, ...]] = ("stagedglobalnetworkpolicy", "stagedglobalnetworkpolicies", "sgnp",
                                          "sgnps")

    spec: StagedGlobalNetworkPolicySpec = Field(default_factory=StagedGlobalNetworkPolicySpec)

    def ps_row(self) -> dict[str, str]:
        return _policy_row(self, True)


class StagedKubernetesNetworkPolicy(Resource):
    """A Kubernetes NetworkPolicy staged for review (projectcalico.org/v3): never enforced."""

    KIND: ClassVar[str] = "StagedKubernetesNetworkPolicy"
    PLURAL: ClassVar[str] = "stagedkubernetesnetworkpolicies"
    NAMESPACED: ClassVar[bool] = True
    ALIASES: ClassVar[tuple[str, ...]] = ("stagedkubernetesnetworkpolicy", "stagedkubernetesnetworkpolicies", "sknp",
                                          "sknps")

    spec: StagedKubernetesNetworkPolicySpec = Field(default_factory=StagedKubernetesNetworkPolicySpec)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def ps_row(self) -> dict[str, str]:
        return {"NAMESPACE": self.namespace or "", "NAME": self.name}
