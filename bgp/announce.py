"""What a node announces over BGP, and the ExaBGP-sized difference between two such sets (pure).

A node announces (Calico's rules, field notes):
- every IPAM block affine to it (it blackholes the block locally and owns the /32s inside);
- every borrowed IP as a /32 (an address it uses from another node's block: without the /32 the
  other node's block route would attract its traffic);
- the service CIDRs of BGPConfiguration `default` (serviceClusterIPs, serviceExternalIPs,
  serviceLoadBalancerIPs);
but nothing from a pool with disableBGPExport, and no block or borrowed IP outside every pool (its
pool was deleted: Calico's export filter only lets pool routes out).

Communities: the most specific prefixAdvertisement whose cidr contains the prefix gives them; names
resolve through spec.communities, literals aa:nn / aa:nn:mm are taken as they are (aa:nn:mm goes to
large communities). All prefixes are announced with next hop "self"; ExaBGP fills in the session's
local address.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from bgp.types import Announcement, normalize_prefix
from datamodel.resources.bgp import BGPConfiguration
from datamodel.resources.ippool import IPPool

__all__ = ["CommunityPolicy", "compute_announcements", "diff"]

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class CommunityPolicy:
    """prefixAdvertisements resolved once: (cidr, standard communities, large communities), most
    specific first, so each prefix costs one scan and no name lookups."""

    rules: tuple[tuple[IPNetwork, tuple[str, ...], tuple[str, ...]], ...] = ()

    @classmethod
    def from_config(cls, config: BGPConfiguration | None) -> CommunityPolicy:
        """Resolve community names to values. Names that resolve to nothing were refused by the
        BGPConfiguration validator already; one that slips through is logged and skipped."""
        if config is None:
            return cls()
        named = {c.name: c.value for c in config.spec.communities or []}
        rules = []
        for adv in config.spec.prefixAdvertisements or []:
            standard: list[str] = []
            large: list[str] = []
            for ref in adv.communities:
                value = named.get(ref, ref)
                parts = value.split(":")
                if not all(p.isdigit() for p in parts) or len(parts) not in (2, 3):
                    log.warning("prefixAdvertisement %s: community %r is not defined; skipped", adv.cidr, ref)
                    continue
                bucket = standard if len(parts) == 2 else large
                if value not in bucket:
                    bucket.append(value)
            rules.append((ipaddress.ip_network(adv.cidr), tuple(standard), tuple(large)))
        rules.sort(key=lambda r: (-r[0].prefixlen, r[0].version, int(r[0].network_address)))
        return cls(rules=tuple(rules))

    def communities_for(self, prefix: IPNetwork) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(standard, large) communities of the most specific rule containing `prefix`; none if no rule does."""
        for cidr, standard, large in self.rules:
            if cidr.version == prefix.version and prefix.subnet_of(cidr):  # type: ignore[arg-type]
                return standard, large
        return (), ()


def _default_config(bgp_config: BGPConfiguration | Iterable[BGPConfiguration] | None) -> BGPConfiguration | None:
    if bgp_config is None or isinstance(bgp_config, BGPConfiguration):
        return bgp_config if bgp_config is None or bgp_config.name == "default" else None
    return next((c for c in bgp_config if c.name == "default"), None)


def _pool_of(network: IPNetwork, pools: list[IPPool]) -> IPPool | None:
    for pool in pools:
        pool_net = pool.network
        if pool_net.version == network.version and network.subnet_of(pool_net):  # type: ignore[arg-type]
            return pool
    return None


def compute_announcements(
    node: str,
    blocks: Iterable[str],
    borrowed_ips: Iterable[str],
    pools: Iterable[IPPool],
    bgp_config: BGPConfiguration | Iterable[BGPConfiguration] | None,
) -> set[Announcement]:
    """The full set of announcements for `node` (the node name is used in log messages only).

    `blocks`: CIDRs of the blocks affine to the node; `borrowed_ips`: addresses the node uses from
    blocks affine to other nodes; `pools`: every IPPool (disabled pools still export their existing
    blocks; only disableBGPExport stops export); `bgp_config`: the BGPConfiguration(s), `default` read.
    """
    pool_list = list(pools)
    config = _default_config(bgp_config)
    policy = CommunityPolicy.from_config(config)
    networks: set[IPNetwork] = set()

    def exported(network: IPNetwork, what: str) -> bool:
        pool = _pool_of(network, pool_list)
        if pool is None:
            log.info("node %s: %s %s is in no IPPool; not announced", node, what, network)
            return False
        return not pool.spec.disableBGPExport

    for block in blocks:
        network = ipaddress.ip_network(block)
        if exported(network, "block"):
            networks.add(network)
    for ip in borrowed_ips:
        address = ipaddress.ip_address(ip.split("/")[0])
        network = ipaddress.ip_network(f"{address}/{address.max_prefixlen}")
        if exported(network, "borrowed IP"):
            networks.add(network)
    if config is not None:
        s = config.spec
        for service in (s.serviceClusterIPs or []) + (s.serviceExternalIPs or []) + (s.serviceLoadBalancerIPs or []):
            networks.add(ipaddress.ip_network(service.cidr))

    out = set()
    for network in networks:
        standard, large = policy.communities_for(network)
        out.add(Announcement(prefix=str(network), communities=standard, large_communities=large))
    return out


def _prefix_key(prefix: str) -> tuple[int, int, int]:
    network = ipaddress.ip_network(prefix)
    return (network.version, int(network.network_address), network.prefixlen)


def diff(old: Iterable[Announcement], new: Iterable[Announcement]) -> tuple[list[Announcement], list[Announcement]]:
    """(to announce, to withdraw) turning `old` into `new`, both sorted by prefix.

    A prefix whose attributes changed is only re-announced (a BGP announcement replaces the previous
    one for the prefix); a prefix that is gone is withdrawn (withdraw=True, prefix only).
    """
    old_by_prefix = {normalize_prefix(a.prefix): a for a in old if not a.withdraw}
    new_by_prefix = {normalize_prefix(a.prefix): a for a in new if not a.withdraw}
    announce = [a for p, a in new_by_prefix.items() if old_by_prefix.get(p) != a]
    withdraw = [Announcement(prefix=p, withdraw=True) for p in old_by_prefix if p not in new_by_prefix]
    announce.sort(key=lambda a: _prefix_key(a.prefix))
    withdraw.sort(key=lambda a: _prefix_key(a.prefix))
    return announce, withdraw
