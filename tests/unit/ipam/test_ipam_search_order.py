"""Block search order: deterministic per node name, covers the whole pool once."""

from __future__ import annotations

import ipaddress
import itertools
import subprocess
import sys

from ipam.block import block_search_order, node_seed


def test_order_covers_every_block_once() -> None:
    order = list(block_search_order("10.0.0.0/22", 26, "node-a"))
    assert len(order) == 16 == len(set(order))
    assert {ipaddress.ip_network(c) for c in order} == set(ipaddress.ip_network("10.0.0.0/22").subnets(new_prefix=26))


def test_same_node_same_order_different_nodes_differ() -> None:
    a1 = list(block_search_order("10.0.0.0/16", 26, "node-a"))
    a2 = list(block_search_order("10.0.0.0/16", 26, "node-a"))
    assert a1 == a2
    starts = {next(block_search_order("10.0.0.0/16", 26, f"node-{i}")) for i in range(20)}
    assert len(starts) > 15  # nodes start in different places


def test_order_wraps_around_sequentially() -> None:
    order = [int(ipaddress.ip_network(c).network_address) for c in block_search_order("10.0.0.0/24", 26, "x")]
    steps = {(b - a) % 256 for a, b in itertools.pairwise(order)}
    assert steps == {64}


def test_stable_across_processes() -> None:
    """Python's hash() is salted per process; the seed must not be."""
    code = "from ipam.block import block_search_order as o; print(next(o('10.0.0.0/16', 26, 'worker-7')))"
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
           for _ in range(2)}
    assert out == {next(block_search_order("10.0.0.0/16", 26, "worker-7")) + "\n"}
    assert node_seed("worker-7") == node_seed("worker-7")


def test_v6_pool_is_lazy() -> None:
    """A /64 pool has 2**58 blocks of /122; the generator must not materialise them."""
    it = block_search_order("fd00::/64", 122, "n")
    first = [next(it) for _ in range(3)]
    assert all(ipaddress.ip_network(c).prefixlen == 122 for c in first)
    assert len(set(first)) == 3
