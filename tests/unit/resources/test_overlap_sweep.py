"""The sorted-sweep overlap checks agree with the all-pairs definition (and stay fast at 10,000)."""

from __future__ import annotations

import ipaddress
import random
import time

from controller.resource_store import _overlapping_pairs
from datamodel.resources import IPPool, parse_resource, pool_overlaps


def _pool(name: str, cidr: str) -> IPPool:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name}}
    doc["spec"] = {"cidr": cidr, "disabled": True}
    res = parse_resource(doc)
    assert isinstance(res, IPPool)
    return res


def _random_cidrs(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        if rng.random() < 0.2:
            net = ipaddress.IPv6Network((rng.getrandbits(16) << 112 | 0xFD << 120, rng.randint(8, 24)), strict=False)
        else:
            net = ipaddress.IPv4Network((10 << 24 | rng.getrandbits(12) << 12, rng.randint(8, 24)), strict=False)
        out.append(str(net))
    return out


def test_pool_overlaps_matches_all_pairs() -> None:
    rng = random.Random(7)
    for _ in range(30):
        pools = [_pool(f"p{i}", c) for i, c in enumerate(_random_cidrs(rng, 25))]
        expected = [
            (a.name, b.name)
            for j, b in enumerate(pools)
            for a in pools[:j]
            if a.ip_version == b.ip_version and a.network.overlaps(b.network)
        ]
        got = [(a.name, b.name) for a, b in pool_overlaps(pools)]
        assert sorted(got) == sorted(expected)


def test_store_overlap_pairs_match_all_pairs_for_written_pools() -> None:
    rng = random.Random(11)
    for _ in range(30):
        cidrs = _random_cidrs(rng, 30)
        final = {f"p{i}": c for i, c in enumerate(cidrs)}
        written = [f"p{i}" for i in rng.sample(range(30), 10)]
        order = {n: i for i, n in enumerate(written)}
        checked: set[str] = set()
        expected = []
        for name in written:
            net = ipaddress.ip_network(final[name])
            for other, cidr in final.items():
                if other != name and other not in checked and net.overlaps(ipaddress.ip_network(cidr)):
                    expected.append((name, other))
            checked.add(name)
        assert sorted(_overlapping_pairs(final, order)) == sorted(expected)


def test_ten_thousand_disjoint_pools_checked_quickly() -> None:
    final = {f"p{i}": f"10.{i // 256}.{i % 256}.0/24" for i in range(10_000)}
    started = time.perf_counter()
    assert _overlapping_pairs(final, {n: i for i, n in enumerate(final)}) == []
    assert time.perf_counter() - started < 5  # all pairs would be 50 million comparisons
