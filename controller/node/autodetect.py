"""Which address is this node's: calico-node's IP autodetection, as a pure choice plus a reader.

Why split: the rules (skip docker/tunnel/veth names for first-found, regex, can-reach, cidr) are
what users get wrong most often (field notes: "wrong node IP autodetection"), so they are a pure
function over a plain list of interfaces and tested without root. The reader turns the kernel's
view (through pyroute2, inside the dataplane namespace) into that list.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from controller.node.config import AutodetectMethod

#: Interfaces first-found never picks (Calico's default exclusions plus Tabby's own devices).
FIRST_FOUND_EXCLUDE = (
    r"^docker.*", r"^cbr.*", r"^dummy.*", r"^virbr.*", r"^lxcbr.*", r"^veth.*", r"^lo$", r"^cali.*",
    r"^tab.*", r"^tunl.*", r"^flannel.*", r"^kube-ipvs.*", r"^cni.*", r"^vxlan.*", r"^br-.*",
    r"^wireguard.*", r"^nodelocaldns.*", r"^podman.*", r"^erspan.*", r"^gre.*", r"^ip6tnl.*", r"^sit.*",
)


IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


@dataclass(frozen=True)
class Interface:
    """One link with its IPv4 addresses (and IPv6 ones, for IP6 autodetection) in CIDR form, in kernel order."""

    name: str
    index: int
    addresses: tuple[str, ...]
    mtu: int = 1500
    up: bool = True
    addresses6: tuple[str, ...] = ()


@dataclass(frozen=True)
class Detected:
    """The chosen interface and address (CIDR form, host bits kept)."""

    interface: str
    address: str
    mtu: int


def _usable(cidr: str, version: int = 4) -> bool:
    iface = ipaddress.ip_interface(cidr)
    return iface.version == version and not iface.ip.is_loopback and not iface.ip.is_link_local


def select(
    method: AutodetectMethod,
    interfaces: Sequence[Interface],
    *,
    route_source: str | None = None,
    version: int = 4,
) -> Detected | None:
    """The address ``method`` picks from ``interfaces``; None when nothing qualifies yet.

    ``version`` 6 is IP6_AUTODETECTION_METHOD: the same rules over the IPv6 addresses (link-local ones
    never qualify, as in calico-node).

    ``route_source`` is the kernel's source address towards the can-reach target (the reader
    asks the kernel); the interface holding it wins.
    """
    ordered = sorted(interfaces, key=lambda i: i.index)

    def first(candidates: Sequence[Interface], want: object = None) -> Detected | None:
        for itf in candidates:
            for addr in itf.addresses6 if version == 6 else itf.addresses:
                if not _usable(addr, version):
                    continue
                if want is not None and not want(addr):  # type: ignore[operator]
                    continue
                return Detected(itf.name, addr, itf.mtu)
        return None

    if method.kind == "first-found":
        excluded = [re.compile(p) for p in FIRST_FOUND_EXCLUDE]
        return first([i for i in ordered if i.up and not any(p.search(i.name) for p in excluded)])
    if method.kind == "interface":
        pats = [re.compile(p) for p in method.args]
        return first([i for i in ordered if any(p.search(i.name) for p in pats)])
    if method.kind == "skip-interface":
        pats = [re.compile(p) for p in method.args]
        return first([i for i in ordered if i.up and i.name != "lo" and not any(p.search(i.name) for p in pats)])
    if method.kind == "cidr":
        nets = [ipaddress.ip_network(c, strict=False) for c in method.args]
        return first(ordered, lambda a: any(ipaddress.ip_interface(a).ip in n for n in nets))
    if method.kind == "can-reach":
        if route_source is None:
            return None
        src = ipaddress.ip_address(route_source)
        return first(ordered, lambda a: ipaddress.ip_interface(a).ip == src)
    raise ValueError(f"unknown autodetection method {method.kind!r}")


def interface_holding(address: str, interfaces: Sequence[Interface], version: int = 4) -> Interface | None:
    """The interface carrying ``address`` (configured IP or IP6): the NIC that native routes leave by."""
    ip = ipaddress.ip_interface(address).ip
    for itf in interfaces:
        if any(ipaddress.ip_interface(a).ip == ip for a in (itf.addresses6 if version == 6 else itf.addresses)):
            return itf
    return None


# --------------------------------------------------------------------------------------------
# Reader (kernel -> plain data); runs in a worker thread, inside the dataplane namespace
# --------------------------------------------------------------------------------------------


def read_interfaces(netns: str | None) -> list[Interface]:
    """Links and IPv4/IPv6 addresses of ``netns`` (None: the agent's own namespace). An IPv6 address still
    in duplicate address detection (tentative) is left out: nothing can bind to it yet, so the agent waits
    for it as it waits for an address that is not there."""
    from controller.node.nlutil import iproute

    with iproute(netns) as ipr:
        links = {
            link["index"]: (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU") or 1500, bool(link["flags"] & 1))
            for link in ipr.get_links()
        }
        addrs: dict[int, list[str]] = {}
        for msg in ipr.get_addr(family=2):
            addrs.setdefault(msg["index"], []).append(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        addrs6: dict[int, list[str]] = {}
        for msg in ipr.get_addr(family=10):
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                continue
            addrs6.setdefault(msg["index"], []).append(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
    return [
        Interface(name=name, index=index, addresses=tuple(addrs.get(index, ())), mtu=mtu, up=up,
                  addresses6=tuple(addrs6.get(index, ())))
        for index, (name, mtu, up) in links.items()
    ]


def route_source(netns: str | None, target: str) -> str | None:
    """The source address the kernel would use towards ``target`` (can-reach), or None."""
    from controller.node.nlutil import iproute

    try:
        with iproute(netns) as ipr:
            for msg in ipr.route("get", dst=target):
                src = msg.get_attr("RTA_PREFSRC")
                if src:
                    return str(src)
    except Exception:  # no route yet: the caller retries
        return None
    return None
