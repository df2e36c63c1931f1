"""ECMP routes against a real kernel, inside a throw-away namespace.

Asserts what an operator reads in ``ip -j route show proto 81``: one route whose ``nexthops`` hold
every gateway (IPv4 and IPv6), an idle resync that writes nothing, a lost hop that rewrites the
route to the remaining one, a hand-deleted (or hand-trimmed) multipath route that comes back.
"""

from __future__ import annotations

import asyncio

import pytest

from felix_like.netlink import TABBY_RT_PROTO, NextHop, Route
from felix_like.route_programmer import ApplyResult, RouteProgrammer
from felix_like.routes import LearnedRoute, LocalNodeInfo, PoolInfo, RouteInputs, calculate_routes

from .conftest import NodeNS

pytestmark = pytest.mark.root

LOCAL = LocalNodeInfo("node-a", "192.0.2.11/24", "eth0", "2001:db8:1::11/64")
PREFIX = "198.51.100.0/24"
PREFIX6 = "fd00:99::/64"


def desired(v4_hops: tuple[str, ...], v6_hops: tuple[str, ...] = ()) -> frozenset[Route]:
    """What the agent would program for BGP best routes with these next hops (the real calculation)."""
    learned = [LearnedRoute(PREFIX, v4_hops[0], v4_hops if len(v4_hops) > 1 else ())]
    if v6_hops:
        learned.append(LearnedRoute(PREFIX6, v6_hops[0], v6_hops if len(v6_hops) > 1 else ()))
    return calculate_routes(RouteInputs(LOCAL, pools=(PoolInfo("10.65.0.0/16"),), learned=tuple(learned)))


def shown(ns: NodeNS, dst: str, family: str = "-4") -> dict | None:
    return next((r for r in ns.routes("proto", str(TABBY_RT_PROTO), family=family) if r["dst"] == dst), None)


def gateways(route: dict | None) -> list[str]:
    """The gateways ``ip -j`` shows: every ``nexthops`` entry, or the single ``gateway``."""
    if route is None:
        return []
    if "nexthops" in route:
        return [h["gateway"] for h in route["nexthops"]]
    return [route["gateway"]]


def test_multipath_programmed_noop_and_collapse(node_ns: NodeNS) -> None:
    with RouteProgrammer(node_ns.name) as prog:
        first = prog.full_resync(desired(("192.0.2.13", "192.0.2.12"), ("2001:db8:1::13", "2001:db8:1::12")))
        assert first.ok and (first.added, first.writes) == (2, 2)
        v4, v6 = shown(node_ns, PREFIX), shown(node_ns, PREFIX6, "-6")
        assert v4 is not None and v6 is not None
        assert [(h["gateway"], h["dev"]) for h in v4["nexthops"]] == [("192.0.2.12", "eth0"), ("192.0.2.13", "eth0")]
        assert gateways(v6) == ["2001:db8:1::12", "2001:db8:1::13"]
        assert "gateway" not in v4  # one route with nexthops, not two routes

        # idle: a dump decodes the multipath routes to exactly what is desired
        assert prog.full_resync().writes == 0
        assert prog.apply_delta(desired(("192.0.2.12", "192.0.2.13"), ("2001:db8:1::12", "2001:db8:1::13"))).writes == 0

        # one BGP peer gone: the route is rewritten (replace, no gap) to the remaining hop
        lost = prog.apply_delta(desired(("192.0.2.13",), ("2001:db8:1::12",)))
        assert lost.ok and (lost.replaced, lost.writes) == (2, 2)
        v4, v6 = shown(node_ns, PREFIX), shown(node_ns, PREFIX6, "-6")
        assert v4 is not None and "nexthops" not in v4 and (v4["gateway"], v4["dev"]) == ("192.0.2.13", "eth0")
        assert v6 is not None and "nexthops" not in v6 and v6["gateway"] == "2001:db8:1::12"
        assert len(node_ns.routes(PREFIX6, family="-6")) == 1  # no stale IPv6 sibling left behind
        assert prog.full_resync().writes == 0

        # back: two hops again
        back = prog.apply_delta(desired(("192.0.2.12", "192.0.2.13"), ("2001:db8:1::12", "2001:db8:1::13")))
        assert back.ok and back.replaced == 2
        assert gateways(shown(node_ns, PREFIX)) == ["192.0.2.12", "192.0.2.13"]
        assert gateways(shown(node_ns, PREFIX6, "-6")) == ["2001:db8:1::12", "2001:db8:1::13"]
        assert prog.full_resync().writes == 0

        # withdrawn: deleted with every hop
        gone = prog.apply_delta([])
        assert gone.ok and gone.deleted == 2
    assert shown(node_ns, PREFIX) is None and node_ns.routes(PREFIX6, family="-6") == []


def test_mixed_devices_and_onlink_hops(node_ns: NodeNS) -> None:
    route = Route.multipath(PREFIX, [NextHop("192.0.2.12", "eth0"), NextHop("10.65.200.3", "vxlan.tabby", True)])
    with RouteProgrammer(node_ns.name) as prog:
        assert prog.full_resync([route]).ok
        hops = {h["gateway"]: h for h in shown(node_ns, PREFIX)["nexthops"]}  # type: ignore[index]
        assert hops["10.65.200.3"]["dev"] == "vxlan.tabby" and "onlink" in hops["10.65.200.3"]["flags"]
        assert hops["192.0.2.12"]["dev"] == "eth0" and "onlink" not in hops["192.0.2.12"]["flags"]
        assert prog.full_resync().writes == 0


def test_hand_deleted_or_trimmed_multipath_route_is_restored(node_ns: NodeNS) -> None:
    want = desired(("192.0.2.12", "192.0.2.13"), ("2001:db8:1::12", "2001:db8:1::13"))

    async def scenario() -> list[ApplyResult]:
        results: list[ApplyResult] = []
        with RouteProgrammer(node_ns.name) as prog:
            prog.full_resync(want)
            stop = asyncio.Event()
            repaired = asyncio.Event()

            def on_change(result: ApplyResult) -> None:
                results.append(result)
                if result.writes:
                    repaired.set()

            async def ip(*args: str) -> None:
                proc = await asyncio.create_subprocess_exec("ip", "-n", node_ns.name, *args)
                assert await asyncio.wait_for(proc.wait(), timeout=5) == 0

            task = asyncio.create_task(prog.watch_kernel(on_change, interval=30, stop=stop))
            try:
                await asyncio.sleep(0.1)
                await ip("route", "del", PREFIX)  # the whole IPv4 multipath route
                await asyncio.wait_for(repaired.wait(), timeout=5)
                repaired.clear()
                # one IPv6 sibling deleted by hand: the kernel keeps the other, Tabby restores the set
                await ip("-6", "route", "del", PREFIX6, "via", "2001:db8:1::13", "dev", "eth0")
                await asyncio.wait_for(repaired.wait(), timeout=5)
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=5)
        return results

    results = asyncio.run(scenario())
    assert all(r.ok for r in results)
    assert any(r.added == 1 for r in results)  # the deleted IPv4 route
    assert gateways(shown(node_ns, PREFIX)) == ["192.0.2.12", "192.0.2.13"]
    assert gateways(shown(node_ns, PREFIX6, "-6")) == ["2001:db8:1::12", "2001:db8:1::13"]
