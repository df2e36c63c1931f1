"""Helpers every part of the IPAM client shares: key helpers, input checks, internal records."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from datastore import KV
from datastore.keys import block_key as _block_key
from datastore.keys import resource_key, resource_prefix
from ipam.block import Block, BlockFormatError
from ipam.errors import InvalidHandle, IPAMError
from ipam.model import Pool


@lru_cache(maxsize=65536)
def block_key(cidr: str) -> str:
    """datastore.keys.block_key, cached: it parses the CIDR, and the hot path asks for few keys."""
    return _block_key(cidr)


IPAM_CONFIG_KEY = resource_key("ipamconfigurations", "default")
POOLS_PREFIX = resource_prefix("ippools")
_HANDLE_CACHE_SIZE = 4096


class _HandleExists(Exception):
    """Internal: a handle that had to be new exists already (someone else won the race)."""


@dataclass
class _Target:
    """One address to release and the conditions it must still meet."""

    ordinal: int
    handle_id: str | None = None
    sequence_number: int | None = None


def _parse_block(kv: KV) -> Block:
    try:
        return Block.from_json(kv.json())
    except (ValueError, BlockFormatError) as exc:
        raise IPAMError(f"block {kv.key} is unreadable ({exc}); run `ipam check`") from exc


def _net_key(cidr: str) -> tuple[int, int]:
    net = ipaddress.ip_network(cidr)
    return net.version, int(net.network_address)


def _parse_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(ip.split("/")[0].strip())
    except ValueError as exc:
        raise IPAMError(f"{ip!r} is not an IP address") from exc


def _check_handle(handle_id: str) -> None:
    if not handle_id or not isinstance(handle_id, str) or "/" in handle_id or handle_id.strip() != handle_id:
        raise InvalidHandle(f"invalid handle id {handle_id!r}: must be non-empty, without '/' or surrounding spaces")


def _find_pool(pools: Sequence[Pool], want: str) -> Pool | None:
    for p in pools:
        if p.name == want:
            return p
    try:
        net = ipaddress.ip_network(want, strict=False)
    except ValueError:
        return None
    return next((p for p in pools if p.network == net), None)
