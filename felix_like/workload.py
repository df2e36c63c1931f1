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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netns import setns

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
    """Create (or re-create) the pod's interface; leftovers of a half-done earlier attempt go first.

    Why one thread and one veth request: the pair is created with its peer already in the pod
    namespace, named, with its MTU and MAC (one RTM_NEWLINK, the host side created up), instead of
    create -> look up -> move -> rename; one short-lived thread opens a netlink socket in each
    namespace and does everything, so there is one thread start per ADD, not three. Leftovers are
    looked for only when the kernel says a name is taken (EEXIST), not before every ADD.
    """
    pod_path = netns_path(spec.pod_netns)
    if not os.path.exists(pod_path):
        raise NetnsGone(2, f"network namespace {pod_path} does not exist")

    def work() -> WorkloadResult:
        try:
            pod_fd = os.open(pod_path, os.O_RDONLY)
        except FileNotFoundError:
            raise NetnsGone(2, f"network namespace {pod_path} does not exist") from None
        node_fd = os.open(netns_path(node_netns) if node_netns else "/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            setns(pod_fd)
            pod = IPRoute()
            try:
                if spec.ipv6:
                    # Routes via the host's link-local need IPv6 on; DAD would delay the address. Set
                    # before the interface exists: a new interface copies conf/default.
                    for name in ("all", "default"):
                        path = f"/proc/sys/net/ipv6/conf/{name}/accept_dad"
                        if os.path.exists(path):
                            _sysctl(path, "0")
                setns(node_fd)
                with IPRoute() as node:
                    _create_pair(node, pod, pod_fd, spec)
                    conf = f"/proc/sys/net/ipv4/conf/{spec.host_ifname}"
                    _sysctl(f"{conf}/proxy_arp", "1")
                    _sysctl(f"{conf}/forwarding", "1")
                    _sysctl(f"{conf}/rp_filter", "0")
                    _sysctl(f"/proc/sys/net/ipv4/neigh/{spec.host_ifname}/proxy_delay", "0")
                    if spec.ipv6 and os.path.exists(f"/proc/sys/net/ipv6/conf/{spec.host_ifname}"):
                        _sysctl(f"/proc/sys/net/ipv6/conf/{spec.host_ifname}/forwarding", "1")
                        _sysctl(f"/proc/sys/net/ipv6/conf/{spec.host_ifname}/proxy_ndp", "1")
                    try:
                        pod_mac = _pod_side(pod, spec)
                    except BaseException:
                        _delete_link(node, spec.host_ifname)
                        raise
                    return WorkloadResult(spec.host_ifname, HOST_MAC, spec.pod_ifname, pod_mac)
            finally:
                pod.close()
        finally:
            os.close(pod_fd)
            os.close(node_fd)

    made = run_in_netns(None, work)
    if spec.ipv6:
        try:
            host_ll = run_in_netns(node_netns, lambda: _link_local(spec.host_ifname))
            if host_ll:
                run_in_netns(spec.pod_netns, lambda: _v6_default(spec.pod_ifname, host_ll))
        except BaseException:
            run_in_netns(node_netns, lambda: _delete_quietly(spec.host_ifname))
            raise
    log.info("workload.created", interface=spec.host_ifname, netns=spec.pod_netns, ifname=spec.pod_ifname)
    return made


def _create_pair(node: IPRoute, pod: IPRoute, pod_fd: int, spec: WorkloadSpec) -> None:
    """One RTM_NEWLINK: host side up with its MAC and MTU, peer named and placed in the pod namespace."""
    peer: dict[str, object] = {"ifname": spec.pod_ifname, "mtu": spec.mtu, "net_ns_fd": pod_fd}
    if spec.pod_mac:
        peer["address"] = spec.pod_mac
    for attempt in (1, 2):
        try:
            node.link("add", ifname=spec.host_ifname, kind="veth", address=HOST_MAC, mtu=spec.mtu, state="up",
                      peer=peer)
            return
        except NetlinkError as exc:
            if exc.code != 17 or attempt == 2:  # EEXIST: leftovers of an earlier ADD
                raise
        tmp_name = "tmp" + spec.host_ifname[len(HOST_PREFIX) :]  # names of earlier releases' half-done ADDs
        removed = _delete_link(node, spec.host_ifname) | _delete_link(node, tmp_name)
        removed |= _delete_link(pod, spec.pod_ifname) | _delete_link(pod, tmp_name)
        if removed:
            log.info("workload.leftover_removed", interface=spec.host_ifname)


def _pod_side(pod: IPRoute, spec: WorkloadSpec) -> str:
    """Up, addresses, the gateway neighbour and the routes, on the pod's socket."""
    index = _link_index(pod, spec.pod_ifname)
    if index is None:
        raise WorkloadError(f"pod side of {spec.host_ifname} did not arrive in {spec.pod_netns}")
    pod.link("set", index=1, state="up")  # lo is ifindex 1 in every namespace
    pod.link("set", index=index, state="up")
    for cidr in spec.ipv4:
        pod.addr("add", index=index, address=str(ipaddress.ip_interface(cidr).ip), prefixlen=32)
    if spec.ipv4:
        # proxy_arp answers only when the node can route to 169.254.1.1 (a node without a default
        # route cannot): a permanent entry for the gateway makes the pod independent of it.
        pod.neigh("replace", dst=GATEWAY_V4, lladdr=HOST_MAC, ifindex=index, state=0x80)
        pod.route("add", dst=f"{GATEWAY_V4}/32", oif=index, scope=253)
        pod.route("add", dst="0.0.0.0/0", gateway=GATEWAY_V4, oif=index)
    for cidr in spec.ipv6:
        pod.addr("add", index=index, address=str(ipaddress.ip_interface(cidr).ip), prefixlen=128, flags=0x80)
    if spec.pod_mac:
        return spec.pod_mac
    return str(pod.get_links(index)[0].get_attr("IFLA_ADDRESS"))


def _delete_quietly(name: str) -> bool:
    """Delete by name in one request (the kernel resolves IFLA_IFNAME); False when it was not there."""
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code != 19:  # ENODEV
                raise
            return False
        return True


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


class WorkloadManager:
    """The workload devices (pod veths) of one node namespace, made from messages on the dataplane thread.

    Why a manager and not the CNI handler: every kernel object of the node has one owner behind the
    message boundary (controller/node/dataplane.py), so a pod's device, its policy and its routes are
    written in one pass of the fast lane, in that order, and the CNI socket never waits on netlink
    on the agent's event loop. Stateless on purpose: devices a previous agent made are adopted by
    leaving them alone (their routes and policy come from the endpoints, as every route does);
    only a DEL (or an ADD's undo) deletes a device, by name. Several pods' devices (a burst) are
    made in parallel, each in its own short-lived namespace thread, as setup_workload does.
    """

    def __init__(self, netns: str | None, *, workers: int = 8) -> None:
        self.netns = netns
        self.workers = workers
        self.created = 0
        self.deleted = 0

    def apply(self, specs: Sequence[tuple[str, WorkloadSpec | None]]) -> list[BaseException | None]:
        """Create (spec) or delete (None) each named device; one error (or None) per entry, in order."""

        def one(item: tuple[str, WorkloadSpec | None]) -> BaseException | None:
            name, spec = item
            try:
                if spec is None:
                    if teardown_workload(self.netns, name):
                        self.deleted += 1
                else:
                    if spec.ipv6:
                        # The node must forward IPv6 for this pod (IPv4 forwarding is on since start): per-veth
                        # ``forwarding`` is not enough, the kernel forwards IPv6 only with conf/all/forwarding=1.
                        # Switched on when the first IPv6 workload needs it, not at start: on an IPv4-only node
                        # it would change how the host treats router advertisements for nothing.
                        enable_forwarding(self.netns, True)
                    setup_workload(self.netns, spec)
                    self.created += 1
            except BaseException as exc:  # handed to the waiting CNI request
                return exc
            return None

        if len(specs) <= 1:
            return [one(item) for item in specs]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(specs)), thread_name_prefix="workload") as pool:
            return list(pool.map(one, specs))
