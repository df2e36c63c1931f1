"""NodeConfig: the agent's settings, read from calico-node's environment variable names.

Why one parser with named errors: the agent is started by the lab, by systemd units and by hand,
always through the environment. A wrong value must stop it at once with one line naming the
variable, not fail later deep inside autodetection or the datastore client.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from datastore import ConfigError, EtcdConfig

RUN_ROOT_ENV = "TABBY_RUN_ROOT"
DEFAULT_RUN_ROOT = "/run/tabby"
DEFAULT_RESYNC_INTERVAL = 90.0
BACKEND_ENV = "CALICO_NETWORKING_BACKEND"
BACKENDS = ("bird", "vxlan", "none")
"""calico-node's values: ``bird`` = BGP on (Tabby runs ExaBGP, the name is kept so users' manifests work),
``vxlan`` = no BGP, every remote route from the datastore, ``none`` = no inter-node routing."""
DEFAULT_BGP_STARTUP_HOLD = 60.0
AUTODETECT_KINDS = ("first-found", "interface", "can-reach", "cidr", "skip-interface")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class NodeConfigError(ValueError):
    """A setting is malformed; the message starts with the variable's name."""


@dataclass(frozen=True)
class AutodetectMethod:
    """IP_AUTODETECTION_METHOD parsed: ``kind`` plus its arguments (regexes, IP, CIDRs)."""

    kind: str = "first-found"
    args: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.kind + (f"={','.join(self.args)}" if self.args else "")


@dataclass(frozen=True)
class NodeConfig:
    """Everything the agent needs to start. Build with :meth:`from_env`."""

    nodename: str
    etcd: EtcdConfig
    ip: str = "autodetect"  # a CIDR, "autodetect" or "none"
    autodetect: AutodetectMethod = field(default_factory=AutodetectMethod)
    #: calico-node's IP6: an IPv6 CIDR, "autodetect", or "none" (the default: no IPv6 node address, so no
    #: IPv6 BGP sessions and no routes to other nodes' IPv6 blocks).
    ip6: str = "none"
    autodetect6: AutodetectMethod = field(default_factory=AutodetectMethod)
    as_number: int | None = None
    run_dir: Path = Path(DEFAULT_RUN_ROOT)
    run_root: Path = Path(DEFAULT_RUN_ROOT)
    netns: str | None = None
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    mtu: int | None = None
    vxlan_mac: str | None = None
    log_level: str = "info"
    log_format: str = "console"
    cni_timeout: float = 5.0
    networking_backend: str = "bird"
    bgp_startup_hold: float = DEFAULT_BGP_STARTUP_HOLD
    #: TABBY_BGP_MESH_BFD=true: BFD (300 ms x 3) on node-to-node mesh sessions to nodes on the local subnet.
    #: A Tabby switch, because Calico's kinds have no field for the mesh (BGPPeers use failureDetectionMode).
    mesh_bfd: bool = False
    #: TABBY_FLOW_LOGS (default true): every policy verdict of a new connection goes to NFLOG group 1
    #: with its rule id (felix_like.policy_ids); false renders no flow-log statement at all.
    flow_logs: bool = True

    @property
    def bgp_enabled(self) -> bool:
        """BGP runs only with the ``bird`` backend (calico-node's default)."""
        return self.networking_backend == "bird"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def by_netns_dir(self) -> Path:
        return self.run_root / "by-netns"

    @property
    def static_ip(self) -> str | None:
        """The configured CIDR when IP is neither autodetect nor none."""
        return None if self.ip in ("autodetect", "none") else self.ip

    @property
    def static_ip6(self) -> str | None:
        """The configured IPv6 CIDR when IP6 is neither autodetect nor none."""
        return None if self.ip6 in ("autodetect", "none") else self.ip6

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NodeConfig:
        """Read and check every setting; raises NodeConfigError naming the first bad variable."""
        env = os.environ if environ is None else environ
        nodename = (env.get("NODENAME") or env.get("HOSTNAME") or socket.gethostname()).strip().lower()
        if not _NAME_RE.match(nodename) or len(nodename) > 253:
            raise NodeConfigError(
                f"NODENAME: {nodename!r} is not a valid node name (lower case alphanumerics, '-' and '.')"
            )
        ip = parse_ip_setting(env.get("IP", "").strip())
        method = parse_autodetection_method(env.get("IP_AUTODETECTION_METHOD", "").strip())
        ip6 = parse_ip6_setting(env.get("IP6", "").strip())
        method6 = parse_autodetection_method(env.get("IP6_AUTODETECTION_METHOD", "").strip(),
                                             var="IP6_AUTODETECTION_METHOD")
        as_number = parse_as(env.get("AS", "").strip())
        try:
            etcd = EtcdConfig.load(env.get("ETCD_CONFIG_FILE") or None, env)
        except ConfigError as exc:
            raise NodeConfigError(str(exc)) from None
        run_root = Path(env.get(RUN_ROOT_ENV) or DEFAULT_RUN_ROOT)
        if not run_root.is_absolute():
            raise NodeConfigError(f"{RUN_ROOT_ENV}: must be an absolute path, got {str(run_root)!r}")
        run_dir = Path(env.get("TABBY_RUN_DIR") or run_root / nodename)
        if not run_dir.is_absolute():
            raise NodeConfigError(f"TABBY_RUN_DIR: must be an absolute path, got {str(run_dir)!r}")
        netns = env.get("TABBY_NETNS", "").strip() or None
        if netns is not None and ("/" in netns and not Path(netns).is_absolute()):
            raise NodeConfigError(f"TABBY_NETNS: give a name under /run/netns or an absolute path, got {netns!r}")
        resync = _positive_float(env, "TABBY_RESYNC_INTERVAL", DEFAULT_RESYNC_INTERVAL)
        cni_timeout = _positive_float(env, "TABBY_CNI_TIMEOUT", 5.0)
        mtu_raw = env.get("TABBY_MTU", "").strip()
        mtu = None
        if mtu_raw:
            if not mtu_raw.isdigit() or not 576 <= int(mtu_raw) <= 65535:
                raise NodeConfigError(f"TABBY_MTU: must be an integer between 576 and 65535, got {mtu_raw!r}")
            mtu = int(mtu_raw)
        mac = env.get("VXLAN_TUNNEL_MAC", "").strip() or None
        if mac is not None and not _MAC_RE.match(mac):
            raise NodeConfigError(f"VXLAN_TUNNEL_MAC: not a MAC address (aa:bb:cc:dd:ee:ff), got {mac!r}")
        level = (env.get("TABBY_LOG_LEVEL") or "info").strip().lower()
        if level not in ("debug", "info", "warning", "warn", "error", "critical"):
            raise NodeConfigError(f"TABBY_LOG_LEVEL: must be debug, info, warning or error, got {level!r}")
        fmt = (env.get("TABBY_LOG_FORMAT") or "console").strip().lower()
        if fmt not in ("console", "json"):
            raise NodeConfigError(f"TABBY_LOG_FORMAT: must be console or json, got {fmt!r}")
        backend = (env.get(BACKEND_ENV) or "bird").strip().lower()
        if backend not in BACKENDS:
            raise NodeConfigError(f"{BACKEND_ENV}: must be bird (BGP), vxlan or none, got {backend!r}")
        hold = _positive_float(env, "TABBY_BGP_STARTUP_HOLD", DEFAULT_BGP_STARTUP_HOLD)
        mesh_bfd_raw = env.get("TABBY_BGP_MESH_BFD", "").strip().lower()
        if mesh_bfd_raw not in ("", "true", "false"):
            raise NodeConfigError(f"TABBY_BGP_MESH_BFD: must be true or false, got {mesh_bfd_raw!r}")
        flow_logs_raw = env.get("TABBY_FLOW_LOGS", "").strip().lower()
        if flow_logs_raw not in ("", "true", "false"):
            raise NodeConfigError(f"TABBY_FLOW_LOGS: must be true or false, got {flow_logs_raw!r}")
        return cls(
            nodename=nodename,
            etcd=etcd,
            ip=ip,
            autodetect=method,
            ip6=ip6,
            autodetect6=method6,
            as_number=as_number,
            run_dir=run_dir,
            run_root=run_root,
            netns=netns,
            resync_interval=resync,
            mtu=mtu,
            vxlan_mac=mac.lower() if mac else None,
            log_level=level,
            log_format=fmt,
            cni_timeout=cni_timeout,
            networking_backend=backend,
            bgp_startup_hold=hold,
            mesh_bfd=mesh_bfd_raw == "true",
            flow_logs=flow_logs_raw != "false",
        )


def _positive_float(env: Mapping[str, str], var: str, default: float) -> float:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise NodeConfigError(f"{var}: must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise NodeConfigError(f"{var}: must be more than 0 seconds, got {raw!r}")
    return value


def parse_ip_setting(raw: str) -> str:
    """IP: empty/"autodetect" -> autodetect, "none", or an IPv4 address with prefix length."""
    if not raw or raw.lower() == "autodetect":
        return "autodetect"
    if raw.lower() == "none":
        return "none"
    try:
        iface = ipaddress.ip_interface(raw)
    except ValueError:
        raise NodeConfigError(f"IP: expected an IPv4 CIDR (e.g. 10.0.0.1/24), 'autodetect' or 'none', got {raw!r}") \
            from None
    if iface.version != 4:
        raise NodeConfigError(f"IP: must be an IPv4 address (use IP6 for IPv6), got {raw!r}")
    if "/" not in raw:
        raise NodeConfigError(f"IP: give the prefix length too (e.g. {raw}/24): CrossSubnet needs the subnet")
    return str(iface)


def parse_ip6_setting(raw: str) -> str:
    """IP6: empty/"none" -> none (calico-node's default), "autodetect", or an IPv6 address with prefix length."""
    if not raw or raw.lower() == "none":
        return "none"
    if raw.lower() == "autodetect":
        return "autodetect"
    try:
        iface = ipaddress.ip_interface(raw)
    except ValueError:
        raise NodeConfigError(f"IP6: expected an IPv6 CIDR (e.g. fd00::1/64), 'autodetect' or 'none', got {raw!r}") \
            from None
    if iface.version != 6:
        raise NodeConfigError(f"IP6: must be an IPv6 address (use IP for IPv4), got {raw!r}")
    if "/" not in raw:
        raise NodeConfigError(f"IP6: give the prefix length too (e.g. {raw}/64): BGP next hops are checked on it")
    return str(iface)


def parse_autodetection_method(raw: str, var: str = "IP_AUTODETECTION_METHOD") -> AutodetectMethod:
    """calico-node's IP_AUTODETECTION_METHOD forms: first-found, interface=RE[,RE], can-reach=IP, cidr=C[,C]."""
    if not raw or raw == "first-found":
        return AutodetectMethod("first-found")
    kind, eq, arg = raw.partition("=")
    kind = kind.strip()
    if kind not in AUTODETECT_KINDS or kind == "first-found" or not eq or not arg.strip():
        raise NodeConfigError(
            f"{var}: expected first-found, interface=REGEX, skip-interface=REGEX, "
            f"can-reach=IP or cidr=CIDR[,CIDR], got {raw!r}"
        )
    args = tuple(a.strip() for a in arg.split(",") if a.strip())
    if kind in ("interface", "skip-interface"):
        for pattern in args:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise NodeConfigError(f"{var}: bad regular expression {pattern!r}: {exc}") from None
    elif kind == "can-reach":
        if len(args) != 1:
            raise NodeConfigError(f"{var}: can-reach takes one address, got {arg!r}")
        try:
            ipaddress.ip_address(args[0])
        except ValueError:
            raise NodeConfigError(f"{var}: can-reach needs an IP address, got {args[0]!r}") \
                from None
    else:
        for cidr in args:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise NodeConfigError(f"{var}: cidr= needs CIDRs, got {cidr!r}") from None
    return AutodetectMethod(kind, args)


def parse_as(raw: str) -> int | None:
    """AS: a plain or asdot AS number; empty means "use the cluster's BGPConfiguration"."""
    if not raw:
        return None
    from datamodel.resources import parse_as_number

    try:
        return parse_as_number(raw)
    except ValueError as exc:
        raise NodeConfigError(f"AS: {exc}") from None
