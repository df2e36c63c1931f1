"""Pod interfaces: the veth pair, addresses and routes of one workload, as Calico lays them out.

Host side (in the node's namespace): ``tab`` + 11 hex of sha1(``<namespace>.<pod>`` or the
container ID), MAC ee:ee:ee:ee:ee:ee, proxy_arp=1, forwarding=1, up, no address. Pod side (in
the pod's namespace, given as a path such as /var/run/netns/x or /proc/PID/ns/net): named
CNI_IFNAME, the pool MTU, /32 (and /128) addresses, ``169.254.1.1 dev eth0 scope link`` and a
default route via 169.254.1.1 (IPv6: via the host side's link-local address). The host's /32
route is not made here: it belongs to the route programmer's desired state.

Why every step runs in a short-lived thread that ``setns``-es into one namespace: sockets and
``/proc/sys/net`` both follow the namespace of the thread that opens them, so a thread per
namespace does netlink and sysctls there without ever moving the agent's own threads. The pod
namespace is opened read-only: a namespace that is gone is reported (:class:`NetnsGone`), never
re-created. These functions block; the agent calls them from a worker thread.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from felix_like.netns import NetnsGone, netns_path
from felix_like.netns import run_in_netns as _run_in_netns

log = structlog.get_logger("tabby.felix_like.workload")

T = TypeVar("T")
HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
HOST_PREFIX = "tab"
class WorkloadError(Exception):
    """The kernel refused a step; the message says which one."""


def host_veth_name(*, namespace: str | None = None, pod: str | None = None, container_id: str | None = None) -> str:
    """``tab`` + first 11 hex of sha1(``<namespace>.<pod>``), or of the container ID without a pod."""
    if pod:
        key = f"{namespace or 'default'}.{pod}"
    elif container_id:
        key = container_id
    else:
        raise ValueError("host_veth_name needs a pod name or a container ID")
    return HOST_PREFIX + hashlib.sha1(key.encode()).hexdigest()[:11]


def run_in_netns(netns: str | None, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """felix_like.netns.run_in_netns, with a timeout reported as a WorkloadError (what CNI callers expect)."""
    try:
        return _run_in_netns(netns, fn, timeout=timeout)
    except TimeoutError:
        raise WorkloadError(f"netlink work in {netns} did not finish within {timeout:.0f}s") from None


def _sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass(frozen=True)
class WorkloadSpec:
    """What to build for one pod interface."""

    host_ifname: str
    pod_netns: str
    pod_ifname: str
    mtu: int
    ipv4: Sequence[str] = ()  # "10.0.0.5/32"
    ipv6: Sequence[str] = ()  # "fd00::5/128"
    pod_mac: str | None = None  # chosen by the caller (it is in the WorkloadEndpoint); None: the kernel's


@dataclass
class WorkloadResult:
    host_ifname: str
    host_mac: str
    pod_ifname: str
    pod_mac: str
    steps: list[str] = field(default_factory=list)


def _link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _delete_link(ipr: IPRoute, name: str) -> bool:
    index = _link_index(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != 19:  # ENODEV: gone meanwhile
            raise
        return False
    return True


def setup_workload(node_netns: str | None, spec: WorkloadSpec) -> WorkloadResult:
    """Create (or re-create) the pod's interface; leftovers of a half-done earlier attempt go first."""
    tmp_name = "tmp" + spec.host_ifname[len(HOST_PREFIX) :]
    pod_path = netns_path(spec.pod_netns)
    if not os.path.exists(pod_path):
        raise NetnsGone(2, f"network namespace {pod_path} does not exist")

    def pod_cleanup() -> bool:
        with IPRoute() as ipr:
            return _delete_link(ipr, spec.pod_ifname) | _delete_link(ipr, tmp_name)

    def node_side() -> str:
        with IPRoute() as ipr:
            removed = _delete_link(ipr, spec.host_ifname) | _delete_link(ipr, tmp_name)
            if removed:
                log.info("workload.leftover_removed", interface=spec.host_ifname)
            ipr.link("add", ifname=spec.host_ifname, kind="veth", peer=tmp_name)
            host = _link_index(ipr, spec.host_ifname)
            peer = _link_index(ipr, tmp_name)
            if host is None or peer is None:
                raise WorkloadError(f"veth {spec.host_ifname} vanished right after it was created")
            ipr.link("set", index=host, address=HOST_MAC, mtu=spec.mtu)
            fd = os.open(pod_path, os.O_RDONLY)
            try:
                ipr.link("set", index=peer, net_ns_fd=fd)
            finally:
                os.close(fd)
            conf = f"/proc/sys/net/ipv4/conf/{spec.host_ifname}"
            _sysctl(f"{conf}/proxy_arp", "1")
            _sysctl(f"{conf}/forwarding", "1")
            _sysctl(f"{conf}/rp_filter", "0")
            _sysctl(f"/proc/sys/net/ipv4/neigh/{spec.host_ifname}/proxy_delay", "0")
            if spec.ipv6 and os.path.exists(f"/proc/sys/net/ipv6/conf/{spec.host_ifname}"):
                _sysctl(f"/proc/sys/net/ipv6/conf/{spec.host_ifname}/forwarding", "1")
                _sysctl(f"/proc/sys/net/ipv6/conf/{spec.host_ifname}/proxy_ndp", "1")
            ipr.link("set", index=host, state="up")
            return HOST_MAC

    def pod_side() -> str:
        with IPRoute() as ipr:
            index = _link_index(ipr, tmp_name)
            if index is None:
                raise WorkloadError(f"pod side of {spec.host_ifname} did not arrive in {pod_path}")
            if spec.pod_mac:
                ipr.link("set", index=index, ifname=spec.pod_ifname, mtu=spec.mtu, address=spec.pod_mac)
            else:
                ipr.link("set", index=index, ifname=spec.pod_ifname, mtu=spec.mtu)
            lo = _link_index(ipr, "lo")
            if lo is not None:
                ipr.link("set", index=lo, state="up")
            if spec.ipv6:
                # Routes via the host's link-local need IPv6 on; DAD would delay the address.
                for name in ("all", "default", spec.pod_ifname):
                    path = f"/proc/sys/net/ipv6/conf/{name}/accept_dad"
                    if os.path.exists(path):
                        _sysctl(path, "0")
            ipr.link("set", index=index, state="up")
            for cidr in spec.ipv4:
                iface = ipaddress.ip_interface(cidr)
                ipr.addr("add", index=index, address=str(iface.ip), prefixlen=32)
            if spec.ipv4:
                # proxy_arp answers only when the node can route to 169.254.1.1 (a node without a
                # default route cannot): a permanent entry for the gateway makes the pod independent of it.
                ipr.neigh("replace", dst=GATEWAY_V4, lladdr=HOST_MAC, ifindex=index, state=0x80)
                ipr.route("add", dst=f"{GATEWAY_V4}/32", oif=index, scope=253)
                ipr.route("add", dst="0.0.0.0/0", gateway=GATEWAY_V4, oif=index)
            for cidr in spec.ipv6:
                iface = ipaddress.ip_interface(cidr)
                ipr.addr("add", index=index, address=str(iface.ip), prefixlen=128, flags=0x80)  # nodad
            link = ipr.get_links(index)[0]
            return str(link.get_attr("IFLA_ADDRESS"))

    run_in_netns(spec.pod_netns, pod_cleanup)
    host_mac = run_in_netns(node_netns, node_side)
    try:
        pod_mac = run_in_netns(spec.pod_netns, pod_side)
        if spec.ipv6:
            host_ll = run_in_netns(node_netns, lambda: _link_local(spec.host_ifname))
            if host_ll:
                run_in_netns(spec.pod_netns, lambda: _v6_default(spec.pod_ifname, host_ll))
    except BaseException:
        run_in_netns(node_netns, lambda: _delete_quietly(spec.host_ifname))
        raise
    log.info("workload.created", interface=spec.host_ifname, netns=spec.pod_netns, ifname=spec.pod_ifname)
    return WorkloadResult(spec.host_ifname, host_mac, spec.pod_ifname, pod_mac)


def _delete_quietly(name: str) -> bool:
    with IPRoute() as ipr:
        return _delete_link(ipr, name)


def _link_local(name: str) -> str | None:
    with IPRoute() as ipr:
        index = _link_index(ipr, name)
        if index is None:
            return None
        for msg in ipr.get_addr(family=10, index=index):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr and addr.startswith("fe80:"):
                return str(addr)
    return None


def _v6_default(pod_ifname: str, gateway: str) -> None:
    with IPRoute() as ipr:
        index = _link_index(ipr, pod_ifname)
        if index is not None:
            ipr.route("replace", dst="::/0", gateway=gateway, oif=index)


def teardown_workload(node_netns: str | None, host_ifname: str) -> bool:
    """Delete the host side (the pod side goes with it). False when it was already gone: success too."""
    deleted = run_in_netns(node_netns, lambda: _delete_quietly(host_ifname))
    log.info("workload.deleted", interface=host_ifname, existed=deleted)
    return deleted


def check_workload(node_netns: str | None, spec: WorkloadSpec) -> list[str]:
    """What differs from the spec (empty list: the interface is as ADD left it)."""
    problems: list[str] = []

    def node_side() -> None:
        with IPRoute() as ipr:
            index = _link_index(ipr, spec.host_ifname)
            if index is None:
                problems.append(f"host interface {spec.host_ifname} is missing")
                return
            link = ipr.get_links(index)[0]
            if link.get_attr("IFLA_ADDRESS") != HOST_MAC:
                problems.append(f"host interface {spec.host_ifname} has MAC {link.get_attr('IFLA_ADDRESS')}")
            if not link["flags"] & 1:
                problems.append(f"host interface {spec.host_ifname} is down")

    def pod_side() -> None:
        with IPRoute() as ipr:
            index = _link_index(ipr, spec.pod_ifname)
            if index is None:
                problems.append(f"interface {spec.pod_ifname} is missing in {spec.pod_netns}")
                return
            have = {f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" for m in ipr.get_addr(index=index)}
            for cidr in (*spec.ipv4, *spec.ipv6):
                if str(ipaddress.ip_interface(cidr)) not in have:
                    problems.append(f"address {cidr} is missing on {spec.pod_ifname} in {spec.pod_netns}")
            if spec.ipv4:
                try:
                    has_default = bool(ipr.route("get", dst="8.8.8.8"))
                except NetlinkError:  # ENETUNREACH: the kernel says so by raising
                    has_default = False
                if not has_default:
                    problems.append(f"no default route in {spec.pod_netns}")

    run_in_netns(node_netns, node_side)
    try:
        run_in_netns(spec.pod_netns, pod_side)
    except NetnsGone:
        problems.append(f"network namespace {spec.pod_netns} does not exist")
    return problems


def enable_forwarding(node_netns: str | None, ipv6: bool = False) -> None:
    """The node routes for its pods: ip_forward on in the node namespace (Felix does the same)."""

    def run() -> None:
        _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        if ipv6 and os.path.exists("/proc/sys/net/ipv6/conf/all/forwarding"):
            _sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")

    run_in_netns(node_netns, run)
