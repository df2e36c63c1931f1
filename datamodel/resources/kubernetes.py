"""Kubernetes kinds Tabby mirrors for policy: ``networking.k8s.io/v1`` NetworkPolicy and ``v1`` Namespace.

Why here and not as Calico kinds: a Kubernetes sync (or a user) writes these documents exactly as the
API server holds them, and their meaning is Kubernetes' own (the validation of
``k8s.io/kubernetes/pkg/apis/networking/validation``), not Calico's. What they mean for traffic is
the policy calculator's job (``controller/node/policy.py``); this module refuses what the API server
refuses, fills in what it defaults (``policyTypes``, port protocol TCP), and turns Kubernetes label
selectors into the Calico selector language (``datamodel.selector``) so one matcher serves both.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from datamodel.resources.common import CalicoModel, Resource, name_problem, qualified_name_problem
from datamodel.resources.errors import Problems, describe_value
from datamodel.selector import All, And, Compare, Has, In, Not, Selector

#: The label every namespace carries in Kubernetes (1.21+), with or without a Namespace document.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SVC_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not _LABEL_VALUE_RE.match(value):
        return (f"invalid value {value!r}: at most 63 characters of alphanumerics, '-', '_' or '.',"
                " starting and ending with an alphanumeric")
    return None


def port_name_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA_SVC_NAME (Kubernetes' rule for named ports), or None."""
    if len(name) > 15:
        return f"port name {name!r} is longer than 15 characters"
    if not _SVC_NAME_RE.match(name) or "--" in name:
        return (f"port name {name!r} must be lower case alphanumerics or '-', start and end with an"
                " alphanumeric, without '--'")
    if not re.search(r"[a-z]", name):
        return f"port name {name!r} must contain at least one letter"
    return None


class LabelSelectorRequirement(CalicoModel):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(CalicoModel):
    """A Kubernetes label selector; ``{}`` selects everything, as in Kubernetes."""

    matchLabels: dict[str, str] | None = None
    matchExpressions: list[LabelSelectorRequirement] | None = None

    @model_validator(mode="after")
    def _check(self) -> LabelSelector:
        problems = Problems()
        for key, value in (self.matchLabels or {}).items():
            why = qualified_name_problem(key) or _label_value_problem(value)
            if why:
                problems.add(f"matchLabels[{key!r}]", why)
        for i, req in enumerate(self.matchExpressions or []):
            why = qualified_name_problem(req.key)
            if why:
                problems.add(f"matchExpressions[{i}].key", why)
            if req.operator in ("In", "NotIn") and not req.values:
                problems.add(f"matchExpressions[{i}].values", f"must be non-empty when operator is {req.operator}")
            if req.operator in ("Exists", "DoesNotExist") and req.values:
                problems.add(f"matchExpressions[{i}].values", f"must be empty when operator is {req.operator}")
            for value in req.values or []:
                why = _label_value_problem(value)
                if why:
                    problems.add(f"matchExpressions[{i}].values", why)
        problems.raise_if_any()
        return self

    def to_selector(self) -> Selector:
        """The same set of label maps as a Calico selector tree (Kubernetes' NotIn, like Calico's
        ``not in``, is true for an absent key; so is DoesNotExist)."""
        terms: list[Selector] = []
        for key, value in sorted((self.matchLabels or {}).items()):
            terms.append(Compare(key, "==", value))
        for req in self.matchExpressions or []:
            values = tuple(sorted(set(req.values or [])))
            if req.operator == "In":
                terms.append(In(req.key, values, negated=False))
            elif req.operator == "NotIn":
                terms.append(In(req.key, values, negated=True))
            elif req.operator == "Exists":
                terms.append(Has(req.key))
            else:
                terms.append(Not(Has(req.key)))
        if not terms:
            return All()
        return terms[0] if len(terms) == 1 else And(tuple(terms))


class IPBlock(CalicoModel):
    cidr: str
    # `except` is a Python keyword: the attribute is except_, the document's field `except`.
    except_: list[str] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _check(self) -> IPBlock:
        problems = Problems()
        try:
            net = ipaddress.ip_network(self.cidr, strict=False)
        except ValueError:
            problems.add("cidr", f"must be a valid CIDR (e.g. 10.0.0.0/16), got {self.cidr!r}")
            problems.raise_if_any()
            raise AssertionError("unreachable") from None
        for i, text in enumerate(self.except_ or []):
            try:
                sub = ipaddress.ip_network(text, strict=False)
            except ValueError:
                problems.add(f"except[{i}]", f"must be a valid CIDR, got {text!r}")
                continue
            if sub.version != net.version or not sub.subnet_of(net) or sub.prefixlen <= net.prefixlen:  # type: ignore[arg-type]
                problems.add(f"except[{i}]", f"must be a strict subset of cidr {self.cidr}, got {text!r}")
        problems.raise_if_any()
        return self


class NetworkPolicyPeer(CalicoModel):
    podSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    ipBlock: IPBlock | None = None

    @model_validator(mode="after")
    def _check(self) -> NetworkPolicyPeer:
        if self.ipBlock is not None and (self.podSelector is not None or self.namespaceSelector is not None):
            raise ValueError("may not specify both ipBlock and another peer (podSelector/namespaceSelector)")
        if self.ipBlock is None and self.podSelector is None and self.namespaceSelector is None:
            raise ValueError("must specify a peer (podSelector, namespaceSelector or ipBlock)")
        return self


def _port_type(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
        raise ValueError(f"must be a port number or a port name, got {describe_value(value)}")
    return value


class NetworkPolicyPort(CalicoModel):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: Annotated[int | str | None, BeforeValidator(_port_type)] = None
    endPort: int | None = None

    @model_validator(mode="after")
    def _check(self) -> NetworkPolicyPort:
        problems = Problems()
        if isinstance(self.port, int) and not 1 <= self.port <= 65535:
            problems.add("port", f"must be between 1 and 65535, got {self.port}")
        if isinstance(self.port, str):
            why = port_name_problem(self.port)
            if why:
                problems.add("port", why)
        if self.endPort is not None:
            if self.port is None:
                problems.add("endPort", "may not be specified when port is not specified")
            elif isinstance(self.port, str):
                problems.add("endPort", "may not be specified when port is a named port")
            elif not 1 <= self.endPort <= 65535:
                problems.add("endPort", f"must be between 1 and 65535, got {self.endPort}")
            elif self.endPort < self.port:
                problems.add("endPort", f"must be greater than or equal to port ({self.port}), got {self.endPort}")
        problems.raise_if_any()
        return self


class NetworkPolicyIngressRule(CalicoModel):
    ports: list[NetworkPolicyPort] | None = None
    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")


class NetworkPolicyEgressRule(CalicoModel):
    ports: list[NetworkPolicyPort] | None = None
    to: list[NetworkPolicyPeer] | None = None


class NetworkPolicySpec(CalicoModel):
    podSelector: LabelSelector = Field(default_factory=LabelSelector)
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None
    policyTypes: list[Literal["Ingress", "Egress"]] | None = None

    @field_validator("policyTypes")
    @classmethod
    def _unique(cls, types: list[str] | None) -> list[str] | None:
        if types is not None and len(set(types)) != len(types):
            raise ValueError(f"must not repeat a type, got {types}")
        return types

    @model_validator(mode="after")
    def _infer_types(self) -> NetworkPolicySpec:
        """Kubernetes' defaulting: omitted (or empty) policyTypes = Ingress, plus Egress when there
        are egress rules. Stored defaulted, as the API server stores it."""
        if not self.policyTypes:
            self.policyTypes = ["Ingress", *(["Egress"] if self.egress else [])]
        return self


class NetworkPolicy(Resource):
    """``networking.k8s.io/v1`` NetworkPolicy (namespaced), enforced by the node agents."""

    KIND: ClassVar[str] = "NetworkPolicy"
    PLURAL: ClassVar[str] = "kubernetesnetworkpolicies"
    NAMESPACED: ClassVar[bool] = True
    # `networkpolicy` is calicoctl's name for the Calico kind; kubectl's `netpol` stays Kubernetes'.
    ALIASES: ClassVar[tuple[str, ...]] = ("kubernetesnetworkpolicy", "kubernetesnetworkpolicies", "netpol", "netpols",
                                          "knp", "knps")
    GROUP_VERSION: ClassVar[str] = "networking.k8s.io/v1"

    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def ps_row(self) -> dict[str, str]:
        return {"NAMESPACE": self.namespace or "", "NAME": self.name,
                "POD-SELECTOR": str(self.spec.podSelector.to_selector()),
                "TYPES": ",".join(self.spec.policyTypes or [])}


class Namespace(Resource):
    """``v1`` Namespace: only its labels matter to Tabby (namespaceSelector)."""

    KIND: ClassVar[str] = "Namespace"
    PLURAL: ClassVar[str] = "namespaces"
    ALIASES: ClassVar[tuple[str, ...]] = ("namespace", "namespaces", "ns")
    GROUP_VERSION: ClassVar[str] = "v1"

    # Only the labels matter to Tabby; spec (finalizers) and status are the API server's, kept as written.
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] | None = None

    @classmethod
    def check_name(cls, name: str) -> str | None:
        why = name_problem(name)
        if why is None and (len(name) > 63 or "." in name):
            why = f"must be a DNS-1123 label (at most 63 characters, no '.'), got {name!r}"
        return why

    def effective_labels(self) -> dict[str, str]:
        """The labels selectors see: the document's, plus kubernetes.io/metadata.name=<name>."""
        return {**(self.metadata.labels or {}), NAMESPACE_NAME_LABEL: self.name}

    def ps_row(self) -> dict[str, str]:
        return {"NAME": self.name}

    def wide_row(self) -> dict[str, str]:
        return {"NAME": self.name, "LABELS": ",".join(f"{k}={v}" for k, v in sorted(self.effective_labels().items()))}


def namespace_labels(name: str, doc: Namespace | None) -> dict[str, str]:
    """A namespace's labels for selectors, whether or not a Namespace document exists."""
    return doc.effective_labels() if doc is not None else {NAMESPACE_NAME_LABEL: name}
