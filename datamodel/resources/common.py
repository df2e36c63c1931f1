"""Shared building blocks of the projectcalico.org/v3 models: field types, Metadata, Resource.

Field names are Calico's camelCase names used directly as attribute names (`pool.spec.blockSize`),
so the YAML a user writes, the JSON stored in etcd and the Python attribute are the same word.

Types follow Calico's validators: `Network` is a strictly masked CIDR (Calico's `net`), `CIDR` an
address with a prefix length where host bits are allowed (Calico's `cidr`), both also taking a bare
address as Calico's `ParseCIDROrIP` does. Models are strict (a quoted "true" is not a boolean, just
as Go's JSON decoder refuses it) and refuse unknown fields.
"""

from __future__ import annotations

import datetime as _dt
import functools
import ipaddress
import re
import socket
from decimal import Decimal
from typing import Annotated, Any, ClassVar, NamedTuple

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator

from datamodel.resources.errors import Problems

API_VERSION = "projectcalico.org/v3"

DEFAULT_AS_NUMBER = 64512
#: Kubernetes' limit on the summed length of annotation keys and values (Calico enforces it too).
ANNOTATIONS_SIZE_LIMIT = 256 * 1024
MAX_AS_NUMBER = 4294967295


class CalicoModel(BaseModel):
    """Base of every model: unknown fields refused, Go-like strict types, Calico's field names."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, defer_build=True)


# --------------------------------------------------------------------------------------------
# Names and labels (Kubernetes rules, which Calico applies to every resource)
# --------------------------------------------------------------------------------------------

_LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
NAME_RE = re.compile(rf"^{_LABEL_FMT}(\.{_LABEL_FMT})*$")
NAME_REASON = "must consist of lower case alphanumeric characters, '-' or '.', and start and end with an alphanumeric"
_QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid DNS-1123 subdomain resource name, or None when it is."""
    if len(name) > 253:
        return f"name is too long by {len(name) - 253} characters (at most 253)"
    if not NAME_RE.match(name):
        return f"{NAME_REASON}, got {name!r}"
    return None


def node_scoped_name_problem(name: str) -> str | None:
    """What is wrong with a ``node.<nodename>`` name (BGPConfiguration, FelixConfiguration), or None."""
    why = name_problem(name[len("node.") :]) if len(name) > len("node.") else "node name is empty"
    return f"invalid node name in {name!r}: {why}" if why else None


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a valid label/annotation key ([prefix/]name), or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return f"invalid key {key!r}: prefix before '/' must not be empty"
    if prefix and (len(prefix) > 253 or not NAME_RE.match(prefix)):
        return f"invalid key {key!r}: prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME_RE.match(name):
        return (
            f"invalid key {key!r}: name part must be at most 63 characters of alphanumerics, '-', '_' or '.',"
            " starting and ending with an alphanumeric"
        )
    return None


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress:
    """Parse a bare IPv4/IPv6 address as Go's net.ParseIP would (no zones, no prefix)."""
    if "%" in text or "/" in text:
        raise ValueError(f"not a valid IP address: {text!r}")
    if ":" not in text:
        # IPv4 through inet_pton: as strict as ipaddress (dotted quad only, no leading zeros, no
        # spaces) and several times faster; every endpoint's address is parsed on a cold start
        try:
            return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
        except (OSError, ValueError):
            raise ValueError(f"not a valid IP address: {text!r}") from None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not a valid IP address: {text!r}") from None


@functools.lru_cache(maxsize=1 << 16)
def parse_ip_or_cidr(text: str) -> IPInterface:
    """Parse `addr` or `addr/len` like Calico's ParseCIDROrIP; a bare address gets a full-length prefix.

    Cached (the objects are immutable): validation parses an endpoint's ipNetworks and the policy
    calculator needs the same addresses a moment later; ipaddress' string parser was the largest
    single cost of an agent's cold start with thousands of endpoints."""
    addr, slash, length = text.partition("/")
    if slash and not (length.isascii() and length.isdigit()):
        raise ValueError(f"not a valid CIDR: {text!r}")
    ip = parse_ip(addr)
    prefix = int(length) if slash else ip.max_prefixlen
    if prefix > ip.max_prefixlen:
        raise ValueError(f"not a valid CIDR: {text!r} (prefix length above {ip.max_prefixlen})")
    if ip.version == 4:
        return ipaddress.IPv4Interface((int(ip), prefix))
    return ipaddress.ip_interface(f"{ip}/{prefix}")


def parse_network(text: str) -> IPNetwork:
    """Parse a strictly masked network; host bits set is an error that suggests the masked form."""
    iface = parse_ip_or_cidr(text)
    network = iface.network
    if int(iface) != int(network.network_address):
        raise ValueError(f"host bits set, did you mean {network}")
    return network


class NetworkSpan(NamedTuple):
    """A strictly masked network as integers, and its normalised text (as Calico stores it)."""

    version: int
    first: int
    prefix: int
    last: int
    text: str

    def overlaps(self, other: NetworkSpan) -> bool:
        return self.version == other.version and self.first <= other.last and other.first <= self.last


@functools.lru_cache(maxsize=1 << 16)
def network_span(text: str) -> NetworkSpan:
    """:func:`parse_network` as a :class:`NetworkSpan`, with the same errors.

    Why: an IPPool's rules need only the span, the prefix and the normalised text, and building
    ipaddress' interface and network objects (four address objects per pool) was the largest single
    cost of validating 10,000 pools. An ``a.b.c.d/len`` IPv4 CIDR is parsed here with inet_pton and
    integer arithmetic; anything else (IPv6, a bare address, every malformed input) goes through
    :func:`parse_network`, which words the errors."""
    addr, slash, length = text.partition("/")
    if slash and ":" not in addr and length.isascii() and length.isdigit() and int(length) <= 32:
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
        except OSError:
            value = -1
        if value >= 0:
            prefix = int(length)
            host = (1 << (32 - prefix)) - 1
            first = value & ~host
            normalised = f"{socket.inet_ntoa(first.to_bytes(4, 'big'))}/{prefix}"
            if value != first:
                raise ValueError(f"host bits set, did you mean {normalised}")
            return NetworkSpan(4, first, prefix, first | host, normalised)
    network = parse_network(text)
    first = int(network.network_address)
    return NetworkSpan(network.version, first, network.prefixlen, int(network.broadcast_address), str(network))


@functools.lru_cache(maxsize=1 << 16)
def cidr_span(text: str) -> tuple[int, int, int, int]:
    """(IP version, first address, prefix length, last address) of a CIDR as integers, host bits
    masked off: what the overlap sweeps sort and compare. ipaddress' network objects cost about
    20 us per pool there; this is integer arithmetic on the cached parse."""
    try:
        span = network_span(text)
    except ValueError:  # host bits set (a stored value read leniently) or not a CIDR: the general parse
        pass
    else:
        return span.version, span.first, span.prefix, span.last
    iface = parse_ip_or_cidr(text)
    bits = iface.max_prefixlen
    prefix = iface.network.prefixlen
    host = (1 << (bits - prefix)) - 1
    first = int(iface) & ~host
    return iface.version, first, prefix, first | host


def _check_ip(value: str) -> str:
    parse_ip(value)
    return value


def _check_ipv4(value: str) -> str:
    if parse_ip(value).version != 4:
        raise ValueError(f"must be an IPv4 address, got {value!r}")
    return value


def _check_ipv6(value: str) -> str:
    if parse_ip(value).version != 6:
        raise ValueError(f"must be an IPv6 address, got {value!r}")
    return value


def _check_cidr(value: str) -> str:
    parse_ip_or_cidr(value)
    return value


def _check_cidr_v4(value: str) -> str:
    if parse_ip_or_cidr(value).version != 4:
        raise ValueError(f"must be an IPv4 address with prefix length, got {value!r}")
    return value


def _check_cidr_v6(value: str) -> str:
    if parse_ip_or_cidr(value).version != 6:
        raise ValueError(f"must be an IPv6 address with prefix length, got {value!r}")
    return value


def _check_network(value: str) -> str:
    parse_network(value)
    return value


IPAddr = Annotated[str, AfterValidator(_check_ip)]
IPv4Addr = Annotated[str, AfterValidator(_check_ipv4)]
IPv6Addr = Annotated[str, AfterValidator(_check_ipv6)]
# An address with its prefix length, host bits allowed ("10.0.0.1/24"), as Calico's `cidr` validator.
CIDR = Annotated[str, AfterValidator(_check_cidr)]
CIDRv4 = Annotated[str, AfterValidator(_check_cidr_v4)]
CIDRv6 = Annotated[str, AfterValidator(_check_cidr_v6)]
# A strictly masked network ("10.0.0.0/16"), as Calico's `net` validator.
Network = Annotated[str, AfterValidator(_check_network)]

_MAC_RE = re.compile(
    r"^(?:[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2})(?:\1[0-9A-Fa-f]{2}){4}(?:(?:\1[0-9A-Fa-f]{2}){2})?"
    r"|(?:[0-9A-Fa-f]{2}([:-])){19}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){2,3}"
    r"|[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){9})$"
)


def _check_mac(value: str) -> str:
    """Accept the forms Go's net.ParseMAC accepts (EUI-48/EUI-64/InfiniBand, ':' '-' or dotted)."""
    if not _MAC_RE.match(value):
        raise ValueError(f"not a valid MAC address: {value!r} (expected e.g. 66:d1:a5:2b:9c:01)")
    return value


MACAddr = Annotated[str, AfterValidator(_check_mac)]


# --------------------------------------------------------------------------------------------
# AS numbers
# --------------------------------------------------------------------------------------------


def parse_as_number(value: Any) -> int:
    """Calico's numorstring.ASNumber: an integer, a decimal string, or asdot "<high>.<low>"."""
    if isinstance(value, bool):
        raise ValueError(f"must be an AS number, got boolean {str(value).lower()}")
    if isinstance(value, float):
        raise ValueError(f'must be an AS number; write asdot notation in quotes (e.g. "1.10"), got {value}')
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            value = int(text)
        elif re.fullmatch(r"\d+\.\d+", text):
            high, low = (int(p) for p in text.split("."))
            if high > 65535 or low > 65535:
                raise ValueError(f"asdot parts must each be 0-65535, got {value!r}")
            value = high * 65536 + low
        else:
            raise ValueError(f'must be an AS number (e.g. 64512 or "1.10"), got {value!r}')
    if not isinstance(value, int):
        raise ValueError(f"must be an AS number, got {type(value).__name__}")
    if not 1 <= value <= MAX_AS_NUMBER:
        raise ValueError(f"must be between 1 and {MAX_AS_NUMBER}, got {value}")
    return value


ASNumber = Annotated[int, BeforeValidator(parse_as_number)]


# --------------------------------------------------------------------------------------------
# Go durations
# --------------------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "\u00b5s": Decimal("1e-6"),
    "\u03bcs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("90s", "1m30s", "500ms", "2h", "1.5h") into seconds.

    One parser for every duration field (maxRestartTime, keepaliveTime, nodeMeshMaxRestartTime, ...)
    so they all accept exactly what Go's time.ParseDuration accepts.
    """
    if not isinstance(text, str):
        raise ValueError(f'must be a duration string such as "120s" or "2m", got {text!r}')
    s = text
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = Decimal(0)
    pos = 0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if not match:
            raise ValueError(f'invalid duration {text!r} (expected e.g. "90s", "1m30s", "500ms", "2h")')
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return float(sign * total)


def _check_duration(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f'must be a duration string such as "120s" or "2m", got {value!r}')
    if parse_duration(value) < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return value


# Kept as the user's text (Calico round-trips the string); use parse_duration() for the value.
Duration = Annotated[str, BeforeValidator(_check_duration)]


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------


def _check_selector(value: str) -> str:
    # Imported here so the models load even while the selector module is being replaced.
    from datamodel.selector import validate_selector

    validate_selector(value)
    return value


Selector = Annotated[str, AfterValidator(_check_selector)]


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def _timestamp_text(value: Any) -> Any:
    """YAML may hand us a datetime for an unquoted timestamp; keep RFC 3339 text as calicoctl prints it."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def _int_as_text(value: Any) -> Any:
    """resourceVersion is a string, but unquoted YAML makes it an integer; accept both."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class Metadata(CalicoModel):
    """ObjectMeta subset calicoctl reads and prints.

    Name rules depend on the kind, so the owning Resource checks the name; this model checks only
    what is the same for every kind (labels and annotation keys).
    """

    name: str
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    resourceVersion: Annotated[str | None, BeforeValidator(_int_as_text)] = None
    uid: str | None = None
    creationTimestamp: Annotated[str | None, BeforeValidator(_timestamp_text)] = None
    generation: int | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        problems = Problems()
        for key, value in (labels or {}).items():
            why = qualified_name_problem(key)
            if why:
                problems.add(f"[{key!r}]", why)
            if len(value) > 63 or not _LABEL_VALUE_RE.match(value):
                problems.add(
                    f"[{key!r}]",
                    f"invalid value {value!r}: at most 63 characters of alphanumerics, '-', '_' or '.',"
                    " starting and ending with an alphanumeric",
                )
        problems.raise_if_any()
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, annotations: dict[str, str] | None) -> dict[str, str] | None:
        problems = Problems()
        total = 0
        for key, value in (annotations or {}).items():
            why = qualified_name_problem(key.lower())
            if why:
                problems.add(f"[{key!r}]", why)
            total += len(key.encode()) + len(value.encode())
        if total > ANNOTATIONS_SIZE_LIMIT:
            problems.add(
                "",
                f"total size of annotations is too large by {total - ANNOTATIONS_SIZE_LIMIT} bytes"
                f" (at most {ANNOTATIONS_SIZE_LIMIT} bytes of keys and values, as Kubernetes allows)",
            )
        problems.raise_if_any()
        return annotations


# --------------------------------------------------------------------------------------------
# Resource base
# --------------------------------------------------------------------------------------------


def go_bool(value: bool | None) -> str:
    """A boolean as Go's text/template prints it (calicoctl's table cells)."""
    return "" if value is None else str(value).lower()


class Resource(CalicoModel):
    """One projectcalico.org/v3 document: apiVersion, kind, metadata, spec.

    A kind is a subclass that sets the ClassVars and narrows `spec`. Hooks for a new kind:
    `check_name()` for kind-specific name rules, `_cross_checks()` (a model validator) for rules
    that need name and spec together, `ps_row()`/`wide_row()` for calicoctl's table columns.
    """

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = False
    ALIASES: ClassVar[tuple[str, ...]] = ()
    GROUP_VERSION: ClassVar[str] = API_VERSION

    apiVersion: str = API_VERSION
    kind: str = ""
    metadata: Metadata
    spec: Any = None

    def __init__(self, **data: Any) -> None:
        # Programmatic construction (IPPool(metadata=..., spec=...)) gets apiVersion/kind filled in.
        data.setdefault("apiVersion", type(self).GROUP_VERSION)
        data.setdefault("kind", type(self).KIND)
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _null_spec(cls, data: Any) -> Any:
        """`spec:` left empty in YAML is null; Go decodes that as an empty spec, so do we."""
        if isinstance(data, dict) and "spec" in data and data["spec"] is None:
            data = {k: v for k, v in data.items() if k != "spec"}
        return data

    @field_validator("apiVersion")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value != cls.GROUP_VERSION:
            raise ValueError(f"must be {cls.GROUP_VERSION} for {cls.KIND}, got {value!r}")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != cls.KIND:
            raise ValueError(f"must be {cls.KIND}, got {value!r}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, meta: Metadata) -> Metadata:
        problems = Problems()
        why = cls.check_name(meta.name)
        if why:
            problems.add("name", why)
        if cls.NAMESPACED:
            if meta.namespace is None:
                meta.namespace = "default"
            else:
                why = name_problem(meta.namespace)
                if why or "." in meta.namespace:
                    problems.add("namespace", f"must be a DNS-1123 label, got {meta.namespace!r}")
        elif meta.namespace is not None:
            problems.add("namespace", f"{cls.KIND} is not namespaced; remove metadata.namespace")
        problems.raise_if_any()
        return meta

    @classmethod
    def check_name(cls, name: str) -> str | None:
        """Why `name` is not acceptable for this kind (None if fine). Default: DNS-1123 subdomain."""
        return name_problem(name)

    # -- public helpers ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    def to_dict(self) -> dict[str, Any]:
        """Calico-shaped dict (camelCase, defaults filled, unset fields omitted): etcd value and -o yaml/json."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def ps_row(self) -> dict[str, str]:
        """Columns of `calicoctl get <kind>` (header -> cell), in calicoctl's order."""
        row = {"NAMESPACE": self.namespace or ""} if self.NAMESPACED else {}
        row["NAME"] = self.name
        return row

    def wide_row(self) -> dict[str, str]:
        """Columns of `calicoctl get <kind> -o wide`."""
        return self.ps_row()

    def check_update(self, old: Resource) -> list[str]:
        """Problems with replacing `old` by `self` (immutable fields); empty when the update is fine."""
        return []


__all__ = [
    "API_VERSION",
    "CIDR",
    "DEFAULT_AS_NUMBER",
    "ASNumber",
    "CIDRv4",
    "CIDRv6",
    "CalicoModel",
    "Duration",
    "IPAddr",
    "IPv4Addr",
    "IPv6Addr",
    "MACAddr",
    "Metadata",
    "Network",
    "Resource",
    "Selector",
    "go_bool",
    "name_problem",
    "parse_as_number",
    "parse_duration",
    "parse_ip",
    "parse_ip_or_cidr",
    "parse_network",
]
