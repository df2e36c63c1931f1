"""IPReservation honoured by IPAM against a real etcd: auto-assign (pods, tunnels, borrowing) never hands
out a reserved address, a block wholly reserved is never claimed, a named assignment still may use one
(as in Calico), and removing the reservation makes the addresses available again."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from controller.resource_store import Ref, ResourceStore
from datamodel.resources import IPReservation, parse_resource
from datastore import Datastore, EtcdConfig
from datastore.keys import BLOCKS
from ipam import IPAMClient, PoolsExhausted

from .conftest import add_pool


def run(config: EtcdConfig, body: Callable[[Datastore, IPAMClient], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with Datastore(config) as ds:
            return await body(ds, IPAMClient(ds, cache_ttl=0))

    return asyncio.run(go())


async def reserve(ds: Datastore, name: str, *cidrs: str) -> None:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPReservation", "metadata": {"name": name},
           "spec": {"reservedCIDRs": list(cidrs)}}
    await ResourceStore(ds).apply([parse_resource(doc)])


def test_reserved_addresses_are_never_auto_assigned(etcd_config: EtcdConfig) -> None:
    """A /28 pool in one /28 block; reservedCIDRs holds back a /30 and one bare address: the 11 others
    are handed out, then the pool is exhausted; the reserved five are never among them."""

    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.60.0.0/28", blockSize=28)
        await reserve(ds, "keep", "10.60.0.4/30", "10.60.0.9")
        reserved = {f"10.60.0.{i}" for i in (4, 5, 6, 7, 9)}
        got = [ip for i in range(11) for ip in (await c.auto_assign(node="n1", handle_id=f"h{i}")).v4]
        assert len(got) == 11 and not reserved & set(got), got
        with pytest.raises(PoolsExhausted):
            await c.auto_assign(node="n2", handle_id="h-more")  # borrowing skips them too
        # A named assignment may take a reserved address (Calico: reservations bind auto-assign only).
        await c.assign_ip(ip="10.60.0.9", handle_id="pinned", node="n1")
        assert await c.ips_by_handle("pinned") == ["10.60.0.9"]
        # Deleting the reservation frees the rest for auto-assign again.
        await ResourceStore(ds).delete([Ref(IPReservation, "keep")])
        more = [ip for i in range(4) for ip in (await c.auto_assign(node="n1", handle_id=f"x{i}")).v4]
        assert set(more) == reserved - {"10.60.0.9"}

    run(etcd_config, body)


def test_wholly_reserved_block_is_never_claimed_and_tunnels_skip_reservations(etcd_config: EtcdConfig) -> None:
    async def body(ds: Datastore, c: IPAMClient) -> None:
        await add_pool(ds, "p", "10.61.0.0/24", blockSize=26, ipipMode="Always")
        await reserve(ds, "first-three-blocks", "10.61.0.0/25", "10.61.0.128/26", "10.61.0.192/31")
        tunnel = await c.assign_tunnel_address(node="n1", kind="ipip")
        assert tunnel is not None and ipaddress.ip_address(tunnel) >= ipaddress.ip_address("10.61.0.194"), tunnel
        kvs, _ = await ds.list(BLOCKS)
        assert [kv.key.rsplit("/", 1)[-1] for kv in kvs] == ["10.61.0.192-26"], "reserved blocks not claimed"

    run(etcd_config, body)
