"""containerlab topology files (``*.clab.yml``): parse, validate, resolve inheritance. Pure.

Why pure: the same resolved ``Topology`` drives deploy, destroy (also after a crashed deploy),
inspect, graph and the tests' expectations (management addresses, namespace names), so it
must come out identical every time from the file alone, without touching the kernel.

Why strict: the file is meant to run under containerlab too, so a key containerlab would not
understand, or a link to a node that does not exist, is a mistake to report with the node or
link it is on and its line, never something to guess about.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from lab.errors import TopologyError
from lab.state import lab_dir

DEFAULT_PREFIX = "clab"
DEFAULT_MGMT_NETWORK = "clab"
DEFAULT_MGMT_SUBNET = "172.20.20.0/24"
DEFAULT_MGMT_BRIDGE = "br-mgmt"
MGMT_INTERFACE = "eth0"
SUPPORTED_KINDS = ("linux",)
SUPPORTED_LINK_TYPES = ("veth",)
# Endpoints containerlab resolves to the host (root) namespace or a host device: never here.
HOST_ENDPOINT_NODES = ("host", "mgmt-net", "macvlan", "ovs-bridge", "bridge")
# containerlab node keys whose absence changes nothing a test could observe here (resources,
# published ports, image pulling, DNS, certificates, ...): accepted, one warning per key per file.
IGNORED_NODE_KEYS = (
    "ports",
    "publish",
    "user",
    "entrypoint",
    "mgmt-ipv6",
    "type",
    "license",
    "enforce-startup-config",
    "suppress-startup-config",
    "dns",
    "cpu",
    "cpu-set",
    "memory",
    "shm-size",
    "auto-remove",
    "image-pull-policy",
    "runtime",
    "sandbox",
    "kernel",
    "extras",
    "config",
    "certificate",
    "SANs",
    "aliases",
    "cap-add",
    "devices",
    "components",
)
STAGES = ("create", "create-links", "configure", "healthy", "exit")
#: containerlab's restart-policy values (Docker's); "no" is Docker's default.
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")


def parse_restart_policy(raw: object) -> tuple[str, int, str]:
    """containerlab's ``restart-policy`` as Docker reads it: ``(policy, max_retries, problem)``.
    ``on-failure:N`` limits the restarts to N (Docker's MaximumRetryCount; 0 = no limit); a count
    on any other policy is refused, as ``docker run --restart always:3`` is."""
    text = "no" if raw is None or raw is False else str(raw).strip()  # YAML 1.1 reads a bare `no` as false
    policy, sep, count = text.lower().partition(":")
    if policy not in RESTART_POLICIES:
        return "no", 0, f"restart-policy {raw!r}: must be one of {', '.join(RESTART_POLICIES)} (or on-failure:N)"
    if not sep:
        return policy, 0, ""
    if policy != "on-failure":
        return "no", 0, f"restart-policy {raw!r}: a maximum restart count is only valid with on-failure"
    if not count.isdigit():
        return "no", 0, f"restart-policy {raw!r}: the maximum restart count must be a non-negative integer"
    return policy, int(count), ""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def _scalar_to_str(value: Any) -> Any:
    """containerlab env/label values are strings; YAML turns ``AS: 65001`` into an int."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


Scalar = Annotated[str, BeforeValidator(_scalar_to_str)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, str_strip_whitespace=False)


class RawMgmt(_Strict):
    network: str | None = None
    ipv4_subnet: str | None = Field(None, alias="ipv4-subnet")
    ipv4_gw: str | None = Field(None, alias="ipv4-gw")
    ipv6_subnet: str | None = Field(None, alias="ipv6-subnet")
    ipv6_gw: str | None = Field(None, alias="ipv6-gw")
    bridge: str | None = None
    mtu: int | None = Field(None, ge=68, le=65535)
    external_access: bool | None = Field(None, alias="external-access")
    ipv4_range: str | None = Field(None, alias="ipv4-range")
    ipv6_range: str | None = Field(None, alias="ipv6-range")


class RawWaitFor(_Strict):
    node: str
    stage: str = "create"


class RawStageExec(_Strict):
    on_enter: list[str] | None = Field(None, alias="on-enter")
    on_exit: list[str] | None = Field(None, alias="on-exit")


class RawStageCommand(_Strict):
    """containerlab >= 0.52's stage exec entry: ``{command, target, phase}``."""

    command: str
    target: str = "container"
    phase: str = "on-enter"


class RawStage(_Strict):
    wait_for: list[RawWaitFor] | None = Field(None, alias="wait-for")
    exec_: RawStageExec | list[str | RawStageCommand] | None = Field(None, alias="exec")


class RawHealthcheck(_Strict):
    test: list[str] | None = None
    interval: float | None = Field(None, ge=0)
    retries: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, ge=0)
    start_period: float | None = Field(None, alias="start-period", ge=0)


class RawCommon(_Strict):
    """Keys allowed at every level: topology.defaults, topology.kinds.X, topology.groups.X, nodes."""

    kind: str | None = None
    image: str | None = None
    startup_config: str | None = Field(None, alias="startup-config")
    binds: list[str] | None = None
    exec_: list[str] | None = Field(None, alias="exec")
    env: dict[str, Scalar] | None = None
    cmd: str | None = None
    labels: dict[str, Scalar] | None = None
    sysctls: dict[str, Scalar] | None = None
    network_mode: str | None = Field(None, alias="network-mode")
    startup_delay: int | None = Field(None, alias="startup-delay", ge=0, le=3600)
    env_files: list[str] | None = Field(None, alias="env-files")
    stages: dict[str, RawStage | None] | None = None
    wait_for: list[str] | None = Field(None, alias="wait-for")
    healthcheck: RawHealthcheck | None = None
    # accepted for portability, ignored with a warning (see IGNORED_NODE_KEYS)
    ports: Any = None
    publish: Any = None
    user: Any = None
    entrypoint: Any = None
    mgmt_ipv6: Any = Field(None, alias="mgmt-ipv6")
    type: Any = None
    license: Any = None
    enforce_startup_config: Any = Field(None, alias="enforce-startup-config")
    suppress_startup_config: Any = Field(None, alias="suppress-startup-config")
    dns: Any = None
    cpu: Any = None
    cpu_set: Any = Field(None, alias="cpu-set")
    memory: Any = None
    shm_size: Any = Field(None, alias="shm-size")
    restart_policy: Any = Field(None, alias="restart-policy")
    auto_remove: Any = Field(None, alias="auto-remove")
    image_pull_policy: Any = Field(None, alias="image-pull-policy")
    runtime: Any = None
    sandbox: Any = None
    kernel: Any = None
    extras: Any = None
    config: Any = None
    certificate: Any = None
    sans: Any = Field(None, alias="SANs")
    aliases: Any = None
    cap_add: Any = Field(None, alias="cap-add")
    devices: Any = None
    components: Any = None


class RawNode(RawCommon):
    """A node may also name its group and pin its management address."""

    group: str | None = None
    mgmt_ipv4: str | None = Field(None, alias="mgmt-ipv4")


class RawLink(_Strict):
    endpoints: list[Any]
    type: str | None = None
    mtu: int | None = Field(None, ge=68, le=65535)
    labels: dict[str, Scalar] | None = None
    vars: dict[str, Any] | None = None


class RawTopologyBody(_Strict):
    defaults: RawCommon | None = None
    kinds: dict[str, RawCommon | None] | None = None
    groups: dict[str, RawCommon | None] | None = None
    nodes: dict[str, Any]  # each validated on its own (RawNode), so every node's problems are reported
    links: list[RawLink] | None = None


class RawLabFile(_Strict):
    name: str
    prefix: str | None = None
    mgmt: RawMgmt | None = None
    topology: RawTopologyBody
    settings: Any = None  # containerlab's certificate-authority settings: nothing to do here


@dataclass(frozen=True)
class Bind:
    """``host:container[:mode]``; ``source`` is resolved against the topology file's directory."""

    source: Path
    target: str
    mode: str | None = None


@dataclass(frozen=True)
class StartupConfig:
    """Either a file next to the topology or, as containerlab allows, the config text inline."""

    path: Path | None = None
    text: str | None = None

    def read(self) -> str:
        if self.text is not None:
            return self.text
        assert self.path is not None
        return self.path.read_text()


@dataclass(frozen=True)
class Healthcheck:
    """Docker's healthcheck as readiness: the node is up once ``argv`` succeeds in it."""

    argv: tuple[str, ...]
    interval: float = 1.0
    retries: int = 3
    timeout: float = 30.0
    start_period: float = 0.0


@dataclass(frozen=True)
class StageWait:
    """``stages.<stage>.wait-for: [{node, stage: other_stage}]``: this node enters ``stage`` only once
    ``node`` has finished ``other_stage``."""

    stage: str
    node: str
    other_stage: str


@dataclass(frozen=True)
class StageExec:
    stage: str
    phase: str
    command: str


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    image: str
    netns: str
    startup_config: StartupConfig | None = None
    binds: tuple[Bind, ...] = ()
    exec: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cmd: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    mgmt_ipv4: ipaddress.IPv4Interface | None = None
    network_mode: str | None = None
    ignored_keys: tuple[str, ...] = ()
    line: int | None = None
    #: nodes this one waits for at some stage (for the cycle check; ``stage_waits`` says which stages)
    wait_for: tuple[str, ...] = ()
    #: (stage of this node, other node, stage of the other node it must have finished)
    stage_waits: tuple[StageWait, ...] = ()
    #: stage exec commands: (stage, phase ``on-enter``/``on-exit``, command), in file order
    stage_execs: tuple[StageExec, ...] = ()
    healthcheck: Healthcheck | None = None
    startup_delay: float = 0.0
    stages_exit: bool = False
    #: containerlab's restart-policy (lowercased): what happens when one of the node's programs exits
    restart_policy: str = "no"
    #: ``on-failure:N``'s N: at most this many restarts (0 = no limit, Docker's ``on-failure``)
    restart_max_retries: int = 0


@dataclass(frozen=True)
class Endpoint:
    node: str
    interface: str
    mac: str | None = None

    def __str__(self) -> str:
        return f"{self.node}:{self.interface}"


@dataclass(frozen=True)
class Link:
    a: Endpoint
    b: Endpoint
    mtu: int | None = None
    index: int = 0
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.a} -- {self.b}"


@dataclass(frozen=True)
class Mgmt:
    network: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Interface
    bridge: str
    mtu: int | None = None


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path
    prefix: str
    mgmt: Mgmt
    nodes: dict[str, Node]
    links: tuple[Link, ...]
    warnings: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def mgmt_netns(self) -> str:
        """The namespace holding the management bridge: one per lab, never the root namespace."""
        return f"tabby-mgmt-{self.name}"

    def netns_names(self) -> list[str]:
        """Every namespace this lab creates, nodes first, management last."""
        return [*dict.fromkeys(n.netns for n in self.nodes.values()), self.mgmt_netns]

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"lab {self.name} has no node {name!r} (nodes: {', '.join(self.nodes)})") from None


def netns_name(prefix: str | None, lab: str, node: str) -> str:
    """containerlab's container naming: no key -> ``clab-<lab>-<node>``, ``""`` -> ``<node>``,
    ``__lab-name`` -> ``<lab>-<node>``, anything else -> ``<prefix>-<lab>-<node>``."""
    if prefix is None:
        return f"{DEFAULT_PREFIX}-{lab}-{node}"
    if prefix == "":
        return node
    if prefix == "__lab-name":
        return f"{lab}-{node}"
    return f"{prefix}-{lab}-{node}"


# --------------------------------------------------------------------------- line numbers


def _line_index(text: str) -> tuple[dict[tuple[Any, ...], int], list[tuple[tuple[Any, ...], int, str]]]:
    """Map every YAML path to its line, and report duplicate keys (PyYAML keeps the last silently)."""
    index: dict[tuple[Any, ...], int] = {}
    dups: list[tuple[tuple[Any, ...], int, str]] = []
    root = yaml.compose(text, Loader=yaml.SafeLoader)

    def walk(node: yaml.Node | None, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
                if k in seen:
                    dups.append(((*path, k), key.start_mark.line + 1, f"duplicate key {k!r}"))
                seen.add(k)
                index.setdefault((*path, k), key.start_mark.line + 1)
                walk(value, (*path, k))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    walk(root, ())
    return index, dups


class _Problems:
    """Collects problems with the node or link they are on and the line they come from."""

    def __init__(self, path: Path, index: dict[tuple[Any, ...], int]) -> None:
        self.path = path
        self.index = index
        self.items: list[tuple[int, str]] = []

    def line_of(self, loc: Iterable[Any]) -> int | None:
        loc = tuple(loc)
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.index:
                return self.index[loc[:n]]
        return None

    def add(self, loc: Iterable[Any], message: str, line: int | None = None) -> None:
        loc = tuple(loc)
        where = _describe(loc)
        line = line or self.line_of(loc)
        location = f"{self.path}:{line}" if line else f"{self.path}"
        self.items.append((line or 0, f"{location}: {where}{message}"))

    def raise_if_any(self) -> None:
        if self.items:
            self.items.sort(key=lambda item: item[0])
            raise TopologyError(str(self.path), [msg for _, msg in self.items])


def _describe(loc: tuple[Any, ...]) -> str:
    """``('topology','nodes','r1','imagee')`` -> ``node r1: imagee: ``; links by number and key."""
    if len(loc) >= 3 and loc[0] == "topology" and loc[1] == "nodes":
        rest = ".".join(str(p) for p in loc[3:])
        return f"node {loc[2]}: " + (f"{rest}: " if rest else "")
    if len(loc) >= 3 and loc[0] == "topology" and loc[1] == "links":
        rest = ".".join(str(p) for p in loc[3:])
        return f"link #{int(loc[2]) + 1}: " + (f"{rest}: " if rest else "")
    if len(loc) >= 3 and loc[0] == "topology" and loc[1] in ("kinds", "groups"):
        rest = ".".join(str(p) for p in loc[3:])
        return f"{loc[1][:-1]} {loc[2]}: " + (f"{rest}: " if rest else "")
    return ".".join(str(p) for p in loc) + ": " if loc else ""


def _pydantic_message(err: Any) -> tuple[tuple[Any, ...], str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return loc, f"unknown key {loc[-1]!r}" if loc else "unknown key"
    if kind == "missing":
        return loc, f"missing required key {loc[-1]!r}"
    return loc, str(err["msg"]).replace("Input should be", "should be")


# --------------------------------------------------------------------------- loading


def find_topology_file(path: str | Path | None) -> Path:
    """containerlab's lookup: a file, a directory holding one ``*.clab.y[a]ml``, or the cwd."""
    base = Path(path) if path else Path.cwd()
    if base.is_dir():
        found = sorted([*base.glob("*.clab.yml"), *base.glob("*.clab.yaml")])
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise TopologyError(str(base), [f"{base}: {what} *.clab.yml files here; name one with -t FILE"])
        return found[0]
    if not base.exists():
        raise TopologyError(str(base), [f"{base}: no such topology file"])
    return base


def load_topology(path: str | Path | None) -> Topology:
    """Read, validate and resolve a topology file; raises ``TopologyError`` listing every problem."""
    file = find_topology_file(path).resolve()
    try:
        text = file.read_text()
    except OSError as exc:
        raise TopologyError(str(file), [f"{file}: cannot read: {exc.strerror}"]) from None
    return parse_topology(text, file)


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[=-])([^}]*))?\}")


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """containerlab's environment expansion of the whole file, before YAML parsing.

    ``${VAR}`` (empty when unset), ``${VAR:=default}`` / ``${VAR:-default}`` (default when unset
    or empty), ``${VAR=default}`` / ``${VAR-default}`` (default when unset); ``:=`` and ``=``
    also assign, so a later ``${VAR}`` in the file sees the default. A bare ``$VAR`` is left
    alone: it is how ``exec`` and ``cmd`` lines refer to the node's own environment.
    """
    env = dict(os.environ if environ is None else environ)

    def sub(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if op is None:
            return value or ""
        missing = value is None or (op.startswith(":") and value == "")
        if missing and op.endswith("="):
            env[name] = default
        return default if missing else str(value)

    return _ENV_RE.sub(sub, text)


def magic(text: str, lab: str, node: str) -> str:
    """containerlab's magic variables in binds, exec and cmd: the node's name and directories.

    ``__clabDir__`` is the lab's directory (``/run/tabby/lab/<lab>``; containerlab's
    ``clab-<lab>/``), ``__clabNodeDir__`` the node's (``<lab dir>/nodes/<node>``).
    """
    if "__clab" not in text:
        return text
    lab_path = lab_dir(lab)
    return (text.replace("__clabNodeName__", node).replace("__clabNodeDir__", str(lab_path / "nodes" / node))
            .replace("__clabDir__", str(lab_path)))


def parse_topology(text: str, path: Path, environ: Mapping[str, str] | None = None) -> Topology:
    """Parse topology ``text`` as if read from ``path`` (relative files resolve next to it)."""
    text = expand_env(text, environ)
    try:
        data = yaml.safe_load(text)
        index, dups = _line_index(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TopologyError(str(path), [f"{where}: invalid YAML: {problem}"]) from None
    problems = _Problems(path, index)
    for loc, line, message in dups:
        problems.add(loc, message, line)
    if not isinstance(data, dict):
        problems.add((), "a topology file is a mapping with name and topology keys")
        problems.raise_if_any()
    data = _drop_unsupported_links(data, problems)
    try:
        raw = RawLabFile.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            problems.add(*_pydantic_message(err))
        problems.raise_if_any()
        raise AssertionError("unreachable") from None
    problems.raise_if_any()
    return _resolve(raw, path, problems)


def _drop_unsupported_links(data: dict[str, Any], problems: _Problems) -> dict[str, Any]:
    """Report links of a type other than veth before schema checks: their keys (``host-interface``
    for macvlan, ``vni`` for vxlan) are valid containerlab, only the type is what we cannot do."""
    body = data.get("topology")
    links = body.get("links") if isinstance(body, dict) else None
    if not isinstance(links, list):
        return data
    kept = []
    for i, link in enumerate(links):
        kind = link.get("type") if isinstance(link, dict) else None
        if kind is not None and kind not in SUPPORTED_LINK_TYPES:
            problems.add(("topology", "links", i, "type"), f"link type {kind!r} is not supported (veth only)")
            link = {"type": kind, "endpoints": []}  # keeps the numbering of the links after it
        kept.append(link)
    return {**data, "topology": {**body, "links": kept}}


def _resolve(raw: RawLabFile, path: Path, problems: _Problems) -> Topology:
    if not _NAME_RE.match(raw.name):
        problems.add(("name",), f"lab name {raw.name!r} may hold only letters, digits, '_', '.', '-'")
    prefix_set = "prefix" in raw.model_fields_set
    prefix = raw.prefix if prefix_set else None
    if prefix not in (None, "", "__lab-name") and not _NAME_RE.match(prefix or ""):
        problems.add(("prefix",), f"prefix {prefix!r} may hold only letters, digits, '_', '.', '-'")

    mgmt = _resolve_mgmt(raw.mgmt, problems)
    body = raw.topology
    defaults = body.defaults or RawCommon()
    kinds = {k: v or RawCommon() for k, v in (body.kinds or {}).items()}
    groups = {k: v or RawCommon() for k, v in (body.groups or {}).items()}
    for kind in kinds:
        if kind not in SUPPORTED_KINDS:
            problems.add(("topology", "kinds", kind), _unsupported_kind(kind))

    nodes: dict[str, Node] = {}
    for name, value in body.nodes.items():
        try:
            node_raw = RawNode.model_validate(value or {})
        except ValidationError as exc:
            for err in exc.errors():
                loc, message = _pydantic_message(err)
                problems.add(("topology", "nodes", name, *loc), message)
            continue
        node = _resolve_node(raw.name, prefix, name, node_raw, defaults, kinds, groups, path, problems)
        if node is not None:
            nodes[name] = node
    if not body.nodes:
        problems.add(("topology", "nodes"), "a lab needs at least one node")

    nodes = _share_network_namespaces(nodes, body.nodes, problems)
    links = _resolve_links(body.links or [], body.nodes, nodes, problems)
    nodes = _assign_mgmt(nodes, mgmt, problems)
    # containerlab's CLAB_INTFS: how many interfaces besides eth0 the file gives the node (scripts wait for them)
    counts = {name: sum((link.a.node, link.b.node).count(name) for link in links) for name in nodes}
    nodes = {name: replace(node, env={**node.env, "CLAB_INTFS": str(counts[name])}) for name, node in nodes.items()}
    _check_wait_for(nodes, body.nodes, problems)
    problems.raise_if_any()

    warnings = []
    for key in IGNORED_NODE_KEYS:  # once per key and file, naming the nodes
        users = [n.name for n in nodes.values() if key in n.ignored_keys]
        if users:
            warnings.append(f"key {key!r} is ignored (nothing observable depends on it without a container "
                            f"runtime): node{'s' if len(users) > 1 else ''} {', '.join(users)}")
    if any(n.stages_exit for n in nodes.values()):
        warnings.append("stages.exit (its wait-for and exec) is ignored: destroy runs no commands in nodes and "
                        "stops them all at once")
    if raw.mgmt and (raw.mgmt.ipv4_range or raw.mgmt.ipv6_range):
        warnings.append("mgmt: ipv4-range/ipv6-range are ignored: addresses go in file order from the gateway up")
    if raw.mgmt and (raw.mgmt.ipv6_subnet or raw.mgmt.ipv6_gw):
        warnings.append("mgmt: IPv6 management addresses are not supported; ignored")
    if raw.mgmt and raw.mgmt.external_access:
        warnings.append("mgmt: external-access is never given: nothing of a lab reaches the root namespace")
    return Topology(
        name=raw.name,
        path=path,
        prefix=DEFAULT_PREFIX if prefix is None else prefix,
        mgmt=mgmt,
        nodes=nodes,
        links=tuple(links),
        warnings=tuple(warnings),
    )


def _unsupported_kind(kind: str) -> str:
    return f"kind {kind!r} is not supported: tabbyctl lab runs kind 'linux' (the image picks the program)"


def _resolve_mgmt(raw: RawMgmt | None, problems: _Problems) -> Mgmt:
    raw = raw or RawMgmt()
    subnet_text = raw.ipv4_subnet or DEFAULT_MGMT_SUBNET
    try:
        subnet = ipaddress.IPv4Network(subnet_text, strict=True)
    except ValueError as exc:
        problems.add(("mgmt", "ipv4-subnet"), f"not an IPv4 network: {exc}")
        subnet = ipaddress.IPv4Network(DEFAULT_MGMT_SUBNET)
    if subnet.prefixlen > 29:
        problems.add(("mgmt", "ipv4-subnet"), f"{subnet} is too small for a management network (at most /29)")
    gateway = ipaddress.IPv4Interface(f"{next(subnet.hosts(), subnet.network_address)}/{subnet.prefixlen}")
    if raw.ipv4_gw:
        try:
            gw = ipaddress.IPv4Address(raw.ipv4_gw)
            if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
                problems.add(("mgmt", "ipv4-gw"), f"gateway {gw} is not a host address of {subnet}")
            gateway = ipaddress.IPv4Interface(f"{gw}/{subnet.prefixlen}")
        except ValueError as exc:
            problems.add(("mgmt", "ipv4-gw"), f"not an IPv4 address: {exc}")
    bridge = raw.bridge or DEFAULT_MGMT_BRIDGE
    if not _IFNAME_RE.match(bridge):
        problems.add(("mgmt", "bridge"), f"bridge name {bridge!r} is not a valid interface name (1-15 characters)")
    return Mgmt(
        network=raw.network or DEFAULT_MGMT_NETWORK, subnet=subnet, gateway=gateway, bridge=bridge, mtu=raw.mtu
    )


def _pick(layers: list[RawCommon], attr: str) -> Any:
    """Single values: the most specific level that sets it wins (node > group > kind > defaults)."""
    for layer in reversed(layers):
        value = getattr(layer, attr)
        if value is not None:
            return value
    return None


def _concat(layers: list[RawCommon], attr: str) -> list[str]:
    """Lists (exec, binds) are concatenated defaults-first, as containerlab does."""
    out: list[str] = []
    for layer in layers:
        out.extend(getattr(layer, attr) or [])
    return out


def _merge(layers: list[RawCommon], attr: str) -> dict[str, str]:
    """Maps (env, labels, sysctls) merge key by key, the more specific level winning."""
    out: dict[str, str] = {}
    for layer in layers:
        out.update(getattr(layer, attr) or {})
    return out


def _resolve_node(
    lab: str,
    prefix: str | None,
    name: str,
    raw: RawNode,
    defaults: RawCommon,
    kinds: dict[str, RawCommon],
    groups: dict[str, RawCommon],
    path: Path,
    problems: _Problems,
) -> Node | None:
    loc = ("topology", "nodes", name)
    ok = True
    if not _NAME_RE.match(name):
        problems.add(loc, "node names may hold only letters, digits, '_', '.', '-'")
        ok = False
    # containerlab accepts a group that topology.groups does not declare: it contributes nothing
    group = groups.get(raw.group) if raw.group is not None else None
    kind = raw.kind or (group.kind if group else None) or defaults.kind
    if not kind:
        problems.add(loc, "no kind: set kind on the node, its group, or topology.defaults")
        return None
    if kind not in SUPPORTED_KINDS:
        problems.add((*loc, "kind"), _unsupported_kind(kind))
        return None
    layers: list[RawCommon] = [defaults, kinds.get(kind, RawCommon())]
    if group is not None:
        layers.append(group)
    layers.append(raw)

    image = _pick(layers, "image")
    if not image:
        problems.add(loc, "no image: set image on the node, its group, its kind or topology.defaults")
        ok = False

    startup: StartupConfig | None = None
    startup_text = _pick(layers, "startup_config")
    if startup_text:
        if "\n" in startup_text:
            startup = StartupConfig(text=startup_text)
        else:
            file = (path.parent / startup_text).resolve()
            if not file.is_file():
                problems.add((*loc, "startup-config"), f"startup-config {startup_text!r} not found ({file})")
                ok = False
            startup = StartupConfig(path=file)

    binds: list[Bind] = []
    for i, spec in enumerate(_concat(layers, "binds")):
        spec = magic(spec, lab, name)
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
            problems.add((*loc, "binds"), f"bind #{i + 1} {spec!r} is not host-path:/container-path[:mode]")
            ok = False
            continue
        source = (path.parent / parts[0]).resolve()
        # a source under the lab's directory (__clabNodeDir__/...) is made at deploy, as containerlab does
        if not source.exists() and lab_dir(lab) not in source.parents:
            problems.add((*loc, "binds"), f"bind source {parts[0]!r} not found ({source})")
            ok = False
        binds.append(Bind(source=source, target=parts[1], mode=parts[2] if len(parts) == 3 else None))

    execs = [magic(command, lab, name) for command in _concat(layers, "exec_")]
    for command in execs:
        try:
            if not shlex.split(command):
                problems.add((*loc, "exec"), "empty exec command")
                ok = False
        except ValueError as exc:
            problems.add((*loc, "exec"), f"exec {command!r} cannot be split: {exc}")
            ok = False

    cmd = _pick(layers, "cmd")
    if cmd:
        cmd = magic(cmd, lab, name)
        try:
            shlex.split(cmd)
        except ValueError as exc:
            problems.add((*loc, "cmd"), f"cmd {cmd!r} cannot be split: {exc}")
            ok = False

    network_mode = _pick(layers, "network_mode")
    if network_mode == "host":
        problems.add((*loc, "network-mode"), "network-mode 'host' is refused: the node would run in the root "
                     "namespace, which a lab never touches")
        ok = False
    elif str(network_mode or "").startswith("container:"):
        if not network_mode.removeprefix("container:"):
            problems.add((*loc, "network-mode"), "network-mode 'container:' names no node (container:<node>)")
            ok = False
    elif network_mode not in (None, "none", "bridge"):
        problems.add((*loc, "network-mode"), f"network-mode {network_mode!r} is not supported "
                     "(bridge, none or container:<node>)")
        ok = False

    mgmt_ipv4: ipaddress.IPv4Interface | None = None
    if raw.mgmt_ipv4 is not None:
        try:
            mgmt_ipv4 = ipaddress.IPv4Interface(raw.mgmt_ipv4)
        except ValueError:
            problems.add((*loc, "mgmt-ipv4"), f"mgmt-ipv4 {raw.mgmt_ipv4!r} is not an IPv4 address")
            ok = False
        if network_mode == "none" or str(network_mode).startswith("container:"):
            problems.add((*loc, "mgmt-ipv4"), f"mgmt-ipv4 set but network-mode is {network_mode}")
            ok = False

    ignored = tuple(k for k in IGNORED_NODE_KEYS if any(_pick([layer], _attr(k)) is not None for layer in layers))
    restart_policy, restart_retries, problem = parse_restart_policy(_pick(layers, "restart_policy"))
    if problem:
        problems.add((*loc, "restart-policy"), problem)
        ok = False

    env = _merge(layers, "env")
    env_files: dict[str, str] = {}
    for spec in _concat(layers, "env_files"):
        file = (path.parent / spec).resolve()
        try:
            lines = file.read_text().splitlines()
        except OSError as exc:
            problems.add((*loc, "env-files"), f"env file {spec!r} cannot be read ({exc.strerror})")
            ok = False
            continue
        for text_line in lines:
            key, sep, value = text_line.strip().partition("=")
            if sep and key and not key.startswith("#"):
                env_files[key.removeprefix("export ").strip()] = value.strip().strip('"').strip("'")
    env = {**env_files, **env}  # env wins over env-files, as in containerlab
    if str(image or "").startswith("tabby/node") and "TABBY_RUN_ROOT" not in env and "TABBY_RUN_DIR" not in env:
        # every per-node path derives from the lab name: two labs with the same node names never share
        # an agent's run directory (the agent, the CNI plugin and the lab all read TABBY_RUN_ROOT)
        env["TABBY_RUN_ROOT"] = str(lab_dir(lab) / "run")

    wait_for: list[str] = []
    stage_waits: list[StageWait] = []
    stage_execs: list[StageExec] = []
    stages_exit = False
    for dep_name in _pick(layers, "wait_for") or []:  # older node-level wait-for: the other node's create
        stage_waits.append(StageWait("create", dep_name, "create"))
    # stages merge across levels as containerlab's Stages.Merge does: wait-for and exec appended, defaults first
    for stage, conf in ((k, v) for layer in layers for k, v in (layer.stages or {}).items()):
        if stage not in STAGES:
            problems.add((*loc, "stages", stage), f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
            ok = False
            continue
        if conf is None:
            continue
        for dep in conf.wait_for or []:
            if dep.stage not in STAGES:
                problems.add((*loc, "stages", stage, "wait-for"), f"unknown stage {dep.stage!r} of node {dep.node}")
                ok = False
            elif stage == "exit":
                stages_exit = True  # ordering of destroy: nothing to order here (see warnings)
            else:
                stage_waits.append(StageWait(stage, dep.node, dep.stage))
        entries: list[tuple[str, str, str]] = []  # (phase, target, command)
        commands = conf.exec_
        if isinstance(commands, RawStageExec):
            entries = [*(("on-enter", "container", c) for c in commands.on_enter or []),
                       *(("on-exit", "container", c) for c in commands.on_exit or [])]
        else:
            for entry in commands or []:
                if isinstance(entry, str):
                    entries.append(("on-enter", "container", entry))
                else:
                    entries.append((entry.phase, entry.target, entry.command))
        for phase, target, command in entries:
            if phase not in ("on-enter", "on-exit"):
                problems.add((*loc, "stages", stage, "exec"), f"unknown phase {phase!r} (on-enter or on-exit)")
                ok = False
            elif target == "host":
                problems.add((*loc, "stages", stage, "exec"), f"exec {command!r} with target 'host' is refused: "
                             "it would run in the root namespace, which a lab never touches")
                ok = False
            elif target != "container":
                problems.add((*loc, "stages", stage, "exec"), f"unknown target {target!r} (container or host)")
                ok = False
            elif stage == "exit":
                stages_exit = True
            else:
                stage_execs.append(StageExec(stage, phase, magic(command, lab, name)))
    wait_for = list(dict.fromkeys(w.node for w in stage_waits))

    health: Healthcheck | None = None
    raw_health: RawHealthcheck | None = _pick(layers, "healthcheck")
    if raw_health is not None and raw_health.test:
        test = list(raw_health.test)
        test = [magic(part, lab, name) for part in test]
        if test[0] == "CMD-SHELL":
            argv = ["sh", "-c", " ".join(test[1:])]
        elif test[0] == "CMD":
            argv = test[1:]
        elif test[0] == "NONE":
            argv = []
        else:
            argv = test
        if test[0] != "NONE" and not argv:
            problems.add((*loc, "healthcheck", "test"), "healthcheck test has no command")
            ok = False
        if argv:
            health = Healthcheck(argv=tuple(argv), interval=raw_health.interval or 1.0, retries=raw_health.retries or 3,
                                 timeout=raw_health.timeout or 30.0, start_period=raw_health.start_period or 0.0)
    if not ok:
        return None
    return Node(
        name=name,
        kind=kind,
        image=str(image),
        netns=netns_name(prefix, lab, name),
        startup_config=startup,
        binds=tuple(binds),
        exec=tuple(execs),
        env=env,
        cmd=cmd,
        labels=_merge(layers, "labels"),
        sysctls=_merge(layers, "sysctls"),
        group=raw.group,
        mgmt_ipv4=mgmt_ipv4,
        network_mode=network_mode,
        ignored_keys=ignored,
        line=problems.line_of(loc),
        wait_for=tuple(wait_for),
        stage_waits=tuple(dict.fromkeys(stage_waits)),
        stage_execs=tuple(stage_execs),
        stages_exit=stages_exit,
        healthcheck=health,
        startup_delay=float(_pick(layers, "startup_delay") or 0),
        restart_policy=restart_policy,
        restart_max_retries=restart_retries,
    )


def _attr(key: str) -> str:
    return "sans" if key == "SANs" else key.replace("-", "_")


def shared_netns_owner(node: Node) -> str | None:
    """The node whose network namespace ``node`` joins (``network-mode: container:<owner>``), if any."""
    mode = node.network_mode or ""
    return mode.removeprefix("container:") if mode.startswith("container:") else None


def _share_network_namespaces(nodes: dict[str, Node], declared: dict[str, Any], problems: _Problems) -> dict[str, Node]:
    """``network-mode: container:X``: the node runs in X's network namespace (as docker's container
    mode does), with its own mount and UTS namespaces, no eth0 of its own, and an implicit wait for
    X's create stage (containerlab's dependency manager adds the same). X must be a node of this
    lab that owns its namespace: a container outside the lab does not exist here."""
    out: dict[str, Node] = {}
    for name, node in nodes.items():
        owner_name = shared_netns_owner(node)
        if owner_name is None:
            out[name] = node
            continue
        loc = ("topology", "nodes", name, "network-mode")
        owner = nodes.get(owner_name)
        if owner_name == name:
            problems.add(loc, "network-mode container: a node cannot share its own namespace")
        elif owner_name not in declared:
            problems.add(loc, f"network-mode container:{owner_name}: no node {owner_name!r} in topology.nodes "
                         "(containers outside the lab do not exist without a container runtime)")
        elif owner is not None and shared_netns_owner(owner) is not None:
            problems.add(loc, f"network-mode container:{owner_name}: {owner_name} itself shares the namespace of "
                         f"{shared_netns_owner(owner)}; name that node")
        if owner is None or shared_netns_owner(owner) is not None or owner_name == name:
            out[name] = node
            continue
        waits = (*node.stage_waits, StageWait("create", owner_name, "create"))
        out[name] = replace(node, netns=owner.netns, stage_waits=tuple(dict.fromkeys(waits)),
                            wait_for=tuple(dict.fromkeys((*node.wait_for, owner_name))))
    return out


def _check_wait_for(nodes: dict[str, Node], declared: dict[str, Any], problems: _Problems) -> None:
    """wait-for names nodes of this lab, never the node itself, and never forms a cycle."""
    for node in nodes.values():
        for dep in node.wait_for:
            if dep not in declared:
                problems.add(("topology", "nodes", node.name, "stages"), f"wait-for: no node {dep!r} in topology.nodes")
            elif dep == node.name:
                problems.add(("topology", "nodes", node.name, "stages"), "wait-for: a node cannot wait for itself")
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2 or name not in nodes:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*trail[trail.index(name):], name])
            problems.add(("topology", "nodes", name, "stages"), f"wait-for cycle: {cycle}")
            return
        state[name] = 1
        for dep in nodes[name].wait_for:
            if dep != name:
                visit(dep, [*trail, name])
        state[name] = 2

    for name in nodes:
        visit(name, [])


def _parse_endpoint(value: Any, extended: bool) -> tuple[Endpoint | None, str | None]:
    """Brief form ``"node:iface"``; extended form ``{node, interface, mac}``."""
    if extended:
        if not isinstance(value, dict):
            return None, f"extended links take endpoints as {{node: N, interface: I}}, got {value!r}"
        unknown = set(value) - {"node", "interface", "mac"}
        if unknown:
            return None, f"unknown endpoint key(s) {', '.join(sorted(map(str, unknown)))}"
        node, iface, mac = value.get("node"), value.get("interface"), value.get("mac")
        if not isinstance(node, str) or not isinstance(iface, str):
            return None, f"endpoint {value!r} needs node and interface"
        if mac is not None and (not isinstance(mac, str) or not _MAC_RE.match(mac)):
            return None, f"endpoint {node}:{iface}: mac {mac!r} is not a MAC address"
        return Endpoint(node, iface, mac), None
    if not isinstance(value, str) or value.count(":") != 1:
        return None, f"endpoint {value!r} is not \"node:interface\""
    node, iface = value.split(":")
    if not node or not iface:
        return None, f"endpoint {value!r} is not \"node:interface\""
    return Endpoint(node, iface), None


def _resolve_links(
    raw_links: list[RawLink], declared: dict[str, Any], nodes: dict[str, Node], problems: _Problems
) -> list[Link]:
    links: list[Link] = []
    used: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(raw_links):
        loc = ("topology", "links", i)
        if raw.type is not None and raw.type not in SUPPORTED_LINK_TYPES:
            continue  # reported before schema checks
        if len(raw.endpoints) != 2:
            problems.add((*loc, "endpoints"), f"a veth link has exactly 2 endpoints, got {len(raw.endpoints)}")
            continue
        ends: list[Endpoint] = []
        for j, value in enumerate(raw.endpoints):
            end, err = _parse_endpoint(value, extended=raw.type is not None)
            if end is None:
                problems.add((*loc, "endpoints", j), err or "bad endpoint")
                continue
            if end.node in HOST_ENDPOINT_NODES and end.node not in declared:
                problems.add((*loc, "endpoints", j), f"endpoint {end}: {end.node} endpoints reach the root "
                             "namespace, which a lab never touches")
                continue
            if end.node not in declared:
                problems.add((*loc, "endpoints", j), f"endpoint {end}: no node {end.node!r} in topology.nodes")
                continue
            if not _IFNAME_RE.match(end.interface) or end.interface == "lo":
                problems.add((*loc, "endpoints", j), f"endpoint {end}: {end.interface!r} is not a valid "
                             "interface name (1-15 letters, digits, '_', '.', '-')")
                continue
            node = nodes.get(end.node)
            if node is not None and shared_netns_owner(node) is not None:
                problems.add((*loc, "endpoints", j), f"endpoint {end}: node {end.node} shares the network namespace "
                             f"of {shared_netns_owner(node)} (network-mode {node.network_mode}); connect the link "
                             f"to {shared_netns_owner(node)}")
                continue
            if end.interface == MGMT_INTERFACE and (node is None or node.network_mode != "none"):
                problems.add((*loc, "endpoints", j), f"endpoint {end}: eth0 is the management interface")
                continue
            key = (end.node, end.interface)
            if key in used:
                problems.add((*loc, "endpoints", j), f"endpoint {end}: interface already used by link #{used[key] + 1}")
                continue
            used[key] = i
            ends.append(end)
        if len(ends) == 2:
            links.append(Link(a=ends[0], b=ends[1], mtu=raw.mtu, index=i, line=problems.line_of(loc)))
    return links


def _assign_mgmt(nodes: dict[str, Node], mgmt: Mgmt, problems: _Problems) -> dict[str, Node]:
    """Pinned addresses first, then the others in file order from the gateway up.

    Deterministic on purpose: containerlab leaves unpinned addresses to Docker, but tests and
    later issues need to know a node's management address from the file alone.
    """
    taken = {mgmt.gateway.ip: "the gateway"}
    for node in nodes.values():
        if node.mgmt_ipv4 is None:
            continue
        ip = node.mgmt_ipv4.ip
        loc = ("topology", "nodes", node.name, "mgmt-ipv4")
        if ip not in mgmt.subnet or ip in (mgmt.subnet.network_address, mgmt.subnet.broadcast_address):
            problems.add(loc, f"{ip} is not a host address of mgmt.ipv4-subnet {mgmt.subnet}")
        elif ip in taken:
            problems.add(loc, f"{ip} is already used by {taken[ip]}")
        taken[ip] = f"node {node.name}"
    hosts = (h for h in mgmt.subnet.hosts() if h not in taken)
    out: dict[str, Node] = {}
    for name, node in nodes.items():
        if node.network_mode == "none" or shared_netns_owner(node) is not None:
            out[name] = node
            continue
        if node.mgmt_ipv4 is not None:
            ip = node.mgmt_ipv4.ip
        else:
            found = next(hosts, None)
            if found is None:
                problems.add(("topology", "nodes", name), f"mgmt.ipv4-subnet {mgmt.subnet} has no address left")
                out[name] = node
                continue
            ip = found
        out[name] = replace(node, mgmt_ipv4=ipaddress.IPv4Interface(f"{ip}/{mgmt.subnet.prefixlen}"))
    return out

