"""BGPConfiguration and BGPPeer: how nodes peer with each other and with routers outside.

BGPConfiguration `default` carries the cluster-wide settings (mesh on/off, default AS, listen port,
service CIDRs to advertise); `node.<nodename>` instances override per-node settings and may not set
the cluster-wide-only fields, as in Calico's client. BGPPeer selects local nodes (node, nodeSelector
or all) and remote peers (peerIP + asNumber, or peerSelector whose nodes supply their own AS).
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from datamodel.resources.common import (
    DEFAULT_AS_NUMBER,
    ASNumber,
    CalicoModel,
    Duration,
    IPAddr,
    Network,
    Resource,
    Selector,
    go_bool,
    name_problem,
    node_scoped_name_problem,
    parse_ip,
)
from datamodel.resources.errors import Problems

# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------

_IGNORED_INTERFACE = re.compile(r"^[a-zA-Z0-9_.*-]{1,15}$")  # Calico's ignoredInterfaceRegex
_STANDARD_COMMUNITY = re.compile(r"^(\d+):(\d+)$")
_LARGE_COMMUNITY = re.compile(r"^(\d+):(\d+):(\d+)$")


def community_value_problem(value: str) -> str | None:
    """Why `value` is not a BGP community literal: standard aa:nn (16-bit parts) or large aa:nn:mm (32-bit)."""
    match = _STANDARD_COMMUNITY.match(value)
    bits = 16
    if not match:
        match = _LARGE_COMMUNITY.match(value)
        bits = 32
    if not match:
        return f"invalid community {value!r}: expected aa:nn (standard) or aa:nn:mm (large)"
    if any(int(part) >= 1 << bits for part in match.groups()):
        return f"invalid community {value!r}: each part must be a {bits}-bit number (0-{(1 << bits) - 1})"
    return None


def _check_name(value: str) -> str:
    why = name_problem(value)
    if why:
        raise ValueError(why)
    return value


ResourceName = Annotated[str, AfterValidator(_check_name)]

_IPV4_PORT = re.compile(r"^(\d+).(\d+).(\d+).(\d+):(\d+)$")  # Calico's regex (unescaped dots included)
_IPV6_PORT = re.compile(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$")


def split_peer_ip(value: str) -> tuple[str, int | None]:
    """Split a peerIP into (address, port or None): `<ip>`, `<IPv4>:<port>` or `[<IPv6>]:<port>`."""
    host, port = value, None
    if _IPV4_PORT.match(value):
        host, _, port_text = value.rpartition(":")
        port = int(port_text)
    elif m := _IPV6_PORT.match(value):
        host, port = m.group(1), int(m.group(2))
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"invalid port in {value!r}: must be 1-65535")
    try:
        parse_ip(host)
    except ValueError:
        raise ValueError(f"must be <ip>, <IPv4>:<port> or [<IPv6>]:<port>, got {value!r}") from None
    return host, port


def _check_peer_ip(value: str) -> str:
    split_peer_ip(value)
    return value


PeerIP = Annotated[str, AfterValidator(_check_peer_ip)]


class SecretKeyRef(CalicoModel):
    """A key in a Kubernetes-style secret holding the BGP password."""

    name: str
    key: str
    optional: bool | None = None


class BGPPassword(CalicoModel):
    """BGP MD5 password source; Calico only supports secretKeyRef."""

    secretKeyRef: SecretKeyRef | None = None


# --------------------------------------------------------------------------------------------
# BGPConfiguration
# --------------------------------------------------------------------------------------------


class ServiceIPBlock(CalicoModel):
    """One CIDR of service addresses to advertise (serviceClusterIPs / ExternalIPs / LoadBalancerIPs)."""

    cidr: Network


class Community(CalicoModel):
    """A named community value, referenced by name from prefixAdvertisements."""

    name: ResourceName
    value: str

    @model_validator(mode="after")
    def _value(self) -> Community:
        problems = Problems()
        why = community_value_problem(self.value)
        if why:
            problems.add("value", why)
        problems.raise_if_any()
        return self


class PrefixAdvertisement(CalicoModel):
    """Communities to attach when advertising `cidr` (names from spec.communities or literals)."""

    cidr: Network
    communities: list[str]


_GLOBAL_ONLY = (
    "nodeToNodeMeshEnabled",
    "asNumber",
    "serviceClusterIPs",
    "serviceExternalIPs",
    "serviceLoadBalancerIPs",
    "nodeMeshPassword",
    "nodeMeshMaxRestartTime",
)


def _zero_is_unset(value: object) -> object:
    return None if value == 0 and not isinstance(value, bool) else value


class BGPConfigurationSpec(CalicoModel):
    """spec of a BGPConfiguration. Unset fields are None; `default` gets Calico's defaults filled in."""

    # Calico's logLevel validator: exactly these words, case-sensitive (Trace included).
    logSeverityScreen: Literal["Trace", "Debug", "Info", "Warning", "Error", "Fatal"] | None = None
    nodeToNodeMeshEnabled: bool | None = None
    asNumber: ASNumber | None = None
    serviceLoadBalancerIPs: list[ServiceIPBlock] | None = None
    serviceExternalIPs: list[ServiceIPBlock] | None = None
    serviceClusterIPs: list[ServiceIPBlock] | None = None
    communities: list[Community] | None = None
    prefixAdvertisements: list[PrefixAdvertisement] | None = None
    # Go's omitempty: listenPort 0 is "unset" (the default 179 then applies), as Calico reads it.
    listenPort: Annotated[int | None, BeforeValidator(_zero_is_unset)] = Field(default=None, ge=1, le=65535)
    nodeMeshPassword: BGPPassword | None = None
    nodeMeshMaxRestartTime: Duration | None = None
    bindMode: Literal["None", "NodeIP"] | None = None
    ignoredInterfaces: list[str] | None = None
    localWorkloadPeeringIPV4: IPAddr | None = None
    localWorkloadPeeringIPV6: IPAddr | None = None
    serviceLoadBalancerAggregation: Literal["Enabled", "Disabled"] | None = None

    @model_validator(mode="after")
    def _communities(self) -> BGPConfigurationSpec:
        problems = Problems()
        for i, pattern in enumerate(self.ignoredInterfaces or []):
            if pattern == "*" or not _IGNORED_INTERFACE.match(pattern):
                problems.add(
                    f"ignoredInterfaces[{i}]",
                    f"invalid interface pattern {pattern!r}: 1-15 characters of letters, digits, '_', '.', '-'"
                    " or '*' (and not '*' alone)",
                )
        if self.nodeToNodeMeshEnabled is False:
            for field in ("nodeMeshPassword", "nodeMeshMaxRestartTime"):
                if getattr(self, field) is not None:
                    problems.add(field, "cannot be set while nodeToNodeMeshEnabled is false")
        names = {c.name for c in self.communities or []}
        if self.communities and not self.prefixAdvertisements:
            problems.add("communities", "communities are defined but not used in prefixAdvertisements")
        for i, adv in enumerate(self.prefixAdvertisements or []):
            for j, ref in enumerate(adv.communities):
                if ref in names:
                    continue
                if _STANDARD_COMMUNITY.match(ref) or _LARGE_COMMUNITY.match(ref):
                    why = community_value_problem(ref)
                    if why:
                        problems.add(f"prefixAdvertisements[{i}].communities[{j}]", why)
                    continue
                defined = ", ".join(sorted(names)) or "none"
                problems.add(
                    f"prefixAdvertisements[{i}].communities[{j}]",
                    f"community {ref!r} is not defined in spec.communities (defined: {defined})"
                    " and is not a literal aa:nn or aa:nn:mm value",
                )
        problems.raise_if_any()
        return self


class BGPConfiguration(Resource):
    """projectcalico.org/v3 BGPConfiguration: `default` (cluster-wide) or `node.<nodename>` (per node)."""

    KIND: ClassVar[str] = "BGPConfiguration"
    PLURAL: ClassVar[str] = "bgpconfigurations"
    ALIASES: ClassVar[tuple[str, ...]] = ("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs")

    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)

    @classmethod
    def check_name(cls, name: str) -> str | None:
        if name == "default":
            return None
        if name.startswith("node."):
            return node_scoped_name_problem(name)
        return f"must be 'default' or 'node.<nodename>', got {name!r}"

    @property
    def node_name(self) -> str | None:
        """The node a `node.<nodename>` configuration applies to; None for `default`."""
        return self.name[len("node.") :] if self.name.startswith("node.") else None

    @model_validator(mode="after")
    def _scope(self) -> BGPConfiguration:
        spec = self.spec
        if self.name == "default":
            # Calico's defaults, filled only on the cluster-wide instance: a per-node instance with
            # defaults filled would silently override the cluster-wide values it does not mention.
            if spec.nodeToNodeMeshEnabled is None:
                spec.nodeToNodeMeshEnabled = True
            if spec.asNumber is None:
                spec.asNumber = DEFAULT_AS_NUMBER
            if spec.listenPort is None:
                spec.listenPort = 179
            if spec.logSeverityScreen is None:
                spec.logSeverityScreen = "Info"
            return self
        problems = Problems()
        for field in _GLOBAL_ONLY:
            if getattr(spec, field) is not None:
                problems.add(f"spec.{field}", "can only be set on the BGPConfiguration named 'default'")
        problems.raise_if_any()
        return self

    def ps_row(self) -> dict[str, str]:
        s = self.spec
        return {
            "NAME": self.name,
            "LOGSEVERITY": s.logSeverityScreen or "",
            "MESHENABLED": go_bool(s.nodeToNodeMeshEnabled) if s.nodeToNodeMeshEnabled is not None else "-",
            "ASNUMBER": str(s.asNumber) if s.asNumber is not None else "-",
        }


# --------------------------------------------------------------------------------------------
# BGPPeer
# --------------------------------------------------------------------------------------------


class BGPPeerSpec(CalicoModel):
    """spec of a BGPPeer."""

    node: ResourceName | None = None
    nodeSelector: Selector | None = None
    peerIP: PeerIP | None = None
    asNumber: ASNumber | None = None
    peerSelector: Selector | None = None
    keepOriginalNextHop: bool | None = None
    nextHopMode: Literal["Auto", "Self", "Keep"] | None = None
    password: BGPPassword | None = None
    sourceAddress: Literal["UseNodeIP", "None"] | None = None
    failureDetectionMode: Literal["None", "BFDIfDirectlyConnected"] | None = None
    restartMode: Literal["GracefulRestart", "LongLivedGracefulRestart"] | None = None
    maxRestartTime: Duration | None = None
    birdGatewayMode: Literal["Recursive", "DirectIfDirectlyConnected"] | None = None
    numAllowedLocalASNumbers: int | None = Field(default=None, ge=0, le=2147483647)
    ttlSecurity: int | None = Field(default=None, ge=0, le=255)
    keepaliveTime: Duration | None = None
    reachableBy: IPAddr | None = None
    filters: list[ResourceName] | None = None
    localWorkloadSelector: Selector | None = None
    reversePeering: Literal["Auto", "Manual"] | None = None

    @model_validator(mode="after")
    def _rules(self) -> BGPPeerSpec:
        """validateBGPPeerSpec: Calico accepts a peer with neither peerIP nor peerSelector, and peerIP
        without asNumber; what Tabby cannot honour of those is refused at apply (support policy)."""
        problems = Problems()
        if self.node and self.nodeSelector:
            problems.add("node", "must be empty when nodeSelector is specified")
        if self.peerIP and self.peerSelector:
            problems.add("peerIP", "must be empty when peerSelector is specified")
        if self.peerSelector and self.asNumber is not None:
            problems.add("asNumber", "must be empty when peerSelector is specified: the AS comes from each node")
        if self.localWorkloadSelector:
            if self.asNumber is None:
                problems.add("asNumber", "must NOT be empty when localWorkloadSelector is specified")
            if self.peerIP:
                problems.add("peerIP", "must be empty when localWorkloadSelector is specified")
            if self.peerSelector:
                problems.add("peerSelector", "must be empty when localWorkloadSelector is specified")
        if self.keepOriginalNextHop and self.nextHopMode is not None:
            problems.add("keepOriginalNextHop", "is deprecated and must not be true when nextHopMode is set")
        if self.reachableBy is not None:
            if not self.peerIP:
                problems.add("reachableBy", "must be empty when peerIP is empty")
            else:
                host, _ = split_peer_ip(self.peerIP)
                if parse_ip(host).version != parse_ip(self.reachableBy).version:
                    problems.add("reachableBy", "address family differs from peerIP")
        problems.raise_if_any()
        return self


class BGPPeer(Resource):
    """projectcalico.org/v3 BGPPeer (cluster-scoped)."""

    KIND: ClassVar[str] = "BGPPeer"
    PLURAL: ClassVar[str] = "bgppeers"
    ALIASES: ClassVar[tuple[str, ...]] = ("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps")

    spec: BGPPeerSpec

    def peer_address(self) -> tuple[str, int | None] | None:
        """(address, port or None) of an explicit peerIP; None for a peerSelector peering."""
        return split_peer_ip(self.spec.peerIP) if self.spec.peerIP else None

    def ps_row(self) -> dict[str, str]:
        s = self.spec
        return {
            "NAME": self.name,
            "PEERIP": s.peerIP or "",
            "NODE": s.node or s.nodeSelector or "(global)",
            "ASN": str(s.asNumber or 0),
        }


# --------------------------------------------------------------------------------------------
# BGPFilter (helper `bgp`, issue 11): import/export rules referenced from BGPPeer.spec.filters
# --------------------------------------------------------------------------------------------


class BGPFilterPrefixLength(CalicoModel):
    """Prefix lengths an `In` / `NotIn` rule matches (inclusive; default: the cidr's length .. 32/128)."""

    min: int | None = Field(default=None, ge=0, le=128)
    max: int | None = Field(default=None, ge=0, le=128)


class _BGPFilterRule(CalicoModel):
    """One rule: the first rule that matches decides (`action`); a route no rule matches is accepted."""

    action: Literal["Accept", "Reject"]
    cidr: Network | None = None
    matchOperator: Literal["Equal", "NotEqual", "In", "NotIn"] | None = None
    prefixLength: BGPFilterPrefixLength | None = None
    source: Literal["RemotePeers"] | None = None
    interface: str | None = None

    VERSION: ClassVar[int] = 4

    @model_validator(mode="after")
    def _rule(self) -> _BGPFilterRule:
        problems = Problems()
        if (self.cidr is None) != (self.matchOperator is None):
            problems.add("matchOperator" if self.cidr else "cidr", "cidr and matchOperator go together")
        bits = 32 if self.VERSION == 4 else 128
        if self.cidr is not None and parse_ip(self.cidr.split("/")[0]).version != self.VERSION:
            problems.add("cidr", f"must be an IPv{self.VERSION} network")
        if self.prefixLength is not None:
            if self.cidr is None:
                problems.add("prefixLength", "requires cidr")
            lo, hi = self.prefixLength.min, self.prefixLength.max
            for name, value in (("min", lo), ("max", hi)):
                if value is not None and value > bits:
                    problems.add(f"prefixLength.{name}", f"must be 0..{bits}")
            if lo is not None and hi is not None and lo > hi:
                problems.add("prefixLength", "min must not exceed max")
        problems.raise_if_any()
        return self


class BGPFilterRuleV4(_BGPFilterRule):
    VERSION: ClassVar[int] = 4


class BGPFilterRuleV6(_BGPFilterRule):
    VERSION: ClassVar[int] = 6


class BGPFilterSpec(CalicoModel):
    exportV4: list[BGPFilterRuleV4] | None = None
    importV4: list[BGPFilterRuleV4] | None = None
    exportV6: list[BGPFilterRuleV6] | None = None
    importV6: list[BGPFilterRuleV6] | None = None


class BGPFilter(Resource):
    """projectcalico.org/v3 BGPFilter (cluster-scoped)."""

    KIND: ClassVar[str] = "BGPFilter"
    PLURAL: ClassVar[str] = "bgpfilters"
    ALIASES: ClassVar[tuple[str, ...]] = ("bgpfilter", "bgpfilters")

    spec: BGPFilterSpec = Field(default_factory=BGPFilterSpec)

    def ps_row(self) -> dict[str, str]:
        return {"NAME": self.name}
