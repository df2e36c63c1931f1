"""The route programmer against a real kernel, inside a throw-away namespace.

Asserts what an operator would check with ``ip route show proto 81``: next hop, device, onlink,
blackhole; that hand deletions are repaired, foreign routes survive, idle resyncs write nothing
and a refused route is reported while the rest land.
"""

from __future__ import annotations

import asyncio
import errno
import time

import pytest

from felix_like.netlink import TABBY_RT_PROTO, Route
from felix_like.route_programmer import RouteProgrammer
from felix_like.routes import (
    BlockInfo,
    BorrowedIP,
    EncapMode,
    LocalNodeInfo,
    PoolInfo,
    RemoteNodeInfo,
    RouteInputs,
    WorkloadInfo,
    calculate_routes,
)

from .conftest import NodeNS

pytestmark = pytest.mark.root

INPUTS = RouteInputs(
    local_node=LocalNodeInfo("node-a", "192.0.2.11/24", "eth0", "2001:db8:1::11/64"),
    pools=(
        PoolInfo("10.65.0.0/16", vxlan_mode=EncapMode.CROSS_SUBNET),
        PoolInfo("fd00:65::/48", vxlan_mode=EncapMode.CROSS_SUBNET),
    ),
    blocks=(
        BlockInfo("10.65.1.0/26", "node-a"),
        BlockInfo("10.65.2.0/26", "node-b"),
        BlockInfo("10.65.3.0/26", "node-c"),
        BlockInfo("fd00:65::/122", "node-a"),
        BlockInfo("fd00:65::40/122", "node-b"),
        BlockInfo("fd00:65::80/122", "node-c"),
    ),
    remote_nodes=(
        RemoteNodeInfo("node-b", "192.0.2.12/24", "2001:db8:1::12/64", "10.65.200.2", "fd00:200::2"),
        RemoteNodeInfo("node-c", "198.51.100.13/24", "2001:db8:2::13/64", "10.65.200.3", "fd00:200::3"),
    ),
    workloads=(WorkloadInfo("10.65.1.5", "tabwl0"), WorkloadInfo("fd00:65::5", "tabwl0")),
    borrowed=(BorrowedIP("10.65.1.7", "node-c"),),
)
DESIRED = calculate_routes(INPUTS)


def ours(ns: NodeNS, family: str = "-4") -> dict[str, dict]:
    return {r["dst"]: r for r in ns.routes("proto", str(TABBY_RT_PROTO), family=family)}


def test_program_and_verify_with_ip(node_ns: NodeNS) -> None:
    with RouteProgrammer(node_ns.name) as prog:
        result = prog.full_resync(DESIRED)
    assert result.ok, result.failures
    assert result.added == len(DESIRED) == 9
    v4 = ours(node_ns)
    assert v4["10.65.1.0/26"]["type"] == "blackhole"
    assert v4["10.65.1.5"]["dev"] == "tabwl0" and v4["10.65.1.5"]["scope"] == "link"
    assert (v4["10.65.2.0/26"]["gateway"], v4["10.65.2.0/26"]["dev"]) == ("192.0.2.12", "eth0")
    assert "onlink" not in v4["10.65.2.0/26"]["flags"]
    assert (v4["10.65.3.0/26"]["gateway"], v4["10.65.3.0/26"]["dev"]) == ("10.65.200.3", "vxlan.tabby")
    assert "onlink" in v4["10.65.3.0/26"]["flags"]
    assert (v4["10.65.1.7"]["gateway"], v4["10.65.1.7"]["dev"]) == ("10.65.200.3", "vxlan.tabby")
    v6 = ours(node_ns, "-6")
    assert v6["fd00:65::/122"]["type"] == "blackhole"
    assert v6["fd00:65::5"]["dev"] == "tabwl0"
    assert (v6["fd00:65::40/122"]["gateway"], v6["fd00:65::40/122"]["dev"]) == ("2001:db8:1::12", "eth0")
    assert (v6["fd00:65::80/122"]["gateway"], v6["fd00:65::80/122"]["dev"]) == ("fd00:200::3", "vxlan-v6.tabby")
    assert "onlink" in v6["fd00:65::80/122"]["flags"]
    assert len(v4) + len(v6) == 9


def test_noop_resync_writes_nothing_and_hand_delete_is_restored(node_ns: NodeNS) -> None:
    with RouteProgrammer(node_ns.name) as prog:
        assert prog.full_resync(DESIRED).ok
        before = prog.writes
        idle = prog.full_resync(DESIRED)
        assert (idle.added, idle.replaced, idle.deleted, idle.writes) == (0, 0, 0, 0)
        assert prog.writes == before
        node_ns.ip("route", "del", "10.65.3.0/26")
        node_ns.ip("-6", "route", "del", "fd00:65::/122")
        repaired = prog.full_resync()
        assert (repaired.added, repaired.writes) == (2, 2)
    assert "10.65.3.0/26" in ours(node_ns)
    assert ours(node_ns, "-6")["fd00:65::/122"]["type"] == "blackhole"


def test_hand_changed_route_is_replaced(node_ns: NodeNS) -> None:
    with RouteProgrammer(node_ns.name) as prog:
        prog.full_resync(DESIRED)
        node_ns.ip("route", "replace", "10.65.2.0/26", "via", "192.0.2.99", "dev", "eth0", "proto", "81")
        node_ns.ip("-6", "route", "replace", "fd00:65::40/122", "via", "2001:db8:1::99", "dev", "eth0", "proto", "81")
        result = prog.full_resync()
    assert (result.replaced, result.writes) == (2, 2)
    assert ours(node_ns)["10.65.2.0/26"]["gateway"] == "192.0.2.12"
    v6 = node_ns.routes("fd00:65::40/122", family="-6")
    assert [(r["gateway"], r["protocol"]) for r in v6] == [("2001:db8:1::12", "81")]


def test_foreign_routes_survive_everything(node_ns: NodeNS) -> None:
    # overlapping foreign route, identical-prefix foreign route, foreign route of another protocol number
    node_ns.ip("route", "add", "10.65.0.0/16", "via", "192.0.2.1", "proto", "static")
    node_ns.ip("route", "add", "10.65.2.0/26", "via", "192.0.2.1", "proto", "static")
    node_ns.ip("route", "add", "10.65.9.0/26", "via", "192.0.2.1", "proto", "80")
    foreign_before = [r for r in node_ns.routes() if r.get("protocol") != str(TABBY_RT_PROTO)]
    with RouteProgrammer(node_ns.name) as prog:
        first = prog.full_resync(DESIRED)
        # the identical key is a conflict: reported, never overwritten; everything else lands
        assert [(f.route.dst, f.errno) for f in first.failures] == [("10.65.2.0/26", errno.EEXIST)]
        assert first.added == len(DESIRED) - 1
        prog.full_resync(DESIRED)
        prog.apply_delta([r for r in DESIRED if r.dst != "10.65.3.0/26"])
        gone = prog.full_resync([])
        assert gone.ok and gone.deleted == len(DESIRED) - 2
    assert ours(node_ns) == {} and ours(node_ns, "-6") == {}
    assert [r for r in node_ns.routes() if r.get("protocol") != str(TABBY_RT_PROTO)] == foreign_before
    assert {r["dst"] for r in node_ns.routes("proto", "static")} == {"10.65.0.0/16", "10.65.2.0/26"}


def test_bad_route_reported_rest_lands(node_ns: NodeNS) -> None:
    bad = Route("10.66.0.0/26", gateway="203.0.113.9", oif="eth0")  # not on eth0's subnet, no onlink
    missing_dev = Route("10.66.1.0/26", gateway="192.0.2.12", oif="nosuchdev")
    with RouteProgrammer(node_ns.name) as prog:
        result = prog.full_resync([*DESIRED, bad, missing_dev])
        assert {(f.route.dst, f.errno) for f in result.failures} == {
            ("10.66.0.0/26", errno.ENETUNREACH),
            ("10.66.1.0/26", errno.ENODEV),
        }
        assert "gateway" in next(f for f in result.failures if f.route is bad).message.lower()
        assert result.added == len(DESIRED)
        # a failed route stays wanted: the next resync tries again (and fails again, reported again)
        again = prog.full_resync()
        assert len(again.failures) == 2 and again.added == 0
    assert len(ours(node_ns)) + len(ours(node_ns, "-6")) == len(DESIRED)


def test_apply_delta_writes_only_changes(node_ns: NodeNS) -> None:
    with RouteProgrammer(node_ns.name) as prog:
        prog.full_resync(DESIRED)
        new = set(DESIRED)
        new.discard(Route("10.65.1.7/32", gateway="10.65.200.3", oif="vxlan.tabby", onlink=True))
        new.add(Route("10.65.4.0/26", gateway="192.0.2.12", oif="eth0"))
        new.discard(Route("10.65.2.0/26", gateway="192.0.2.12", oif="eth0"))
        new.add(Route("10.65.2.0/26", gateway="10.65.200.2", oif="vxlan.tabby", onlink=True))
        result = prog.apply_delta(new)
        assert (result.added, result.replaced, result.deleted, result.writes) == (1, 1, 1, 3)
        assert prog.apply_delta(new).writes == 0
    v4 = ours(node_ns)
    assert "10.65.1.7" not in v4 and "10.65.4.0/26" in v4
    assert v4["10.65.2.0/26"]["dev"] == "vxlan.tabby"


def test_close_never_flushes_and_restart_adopts(node_ns: NodeNS) -> None:
    with RouteProgrammer(node_ns.name) as prog:
        prog.full_resync(DESIRED)
    assert len(ours(node_ns)) == 5
    with RouteProgrammer(node_ns.name) as again:
        adopted = again.full_resync(DESIRED)
    assert adopted.writes == 0


def test_link_gone_routes_are_reprogrammed_when_back(node_ns: NodeNS) -> None:
    with RouteProgrammer(node_ns.name) as prog:
        prog.full_resync(DESIRED)
        node_ns.ip("link", "del", "tabwl0")  # the kernel drops its routes without telling anyone
        result = prog.full_resync()
        assert {f.route.dst for f in result.failures} == {"10.65.1.5/32", "fd00:65::5/128"}
        node_ns.ip("link", "add", "tabwl0", "type", "veth", "peer", "name", "tabwl0peer")
        node_ns.ip("link", "set", "tabwl0", "up")
        node_ns.ip("link", "set", "tabwl0peer", "up")
        back = prog.full_resync()  # the interface index changed: the cache refreshes on the miss
        assert back.ok and back.added == 2
    assert ours(node_ns)["10.65.1.5"]["dev"] == "tabwl0"


def test_watch_kernel_restores_hand_deleted_route(node_ns: NodeNS) -> None:
    async def scenario() -> list[int]:
        added: list[int] = []
        with RouteProgrammer(node_ns.name) as prog:
            prog.full_resync(DESIRED)
            stop = asyncio.Event()
            restored = asyncio.Event()

            def on_change(result) -> None:  # type: ignore[no-untyped-def]
                added.append(result.added)
                if result.added:
                    restored.set()

            task = asyncio.create_task(prog.watch_kernel(on_change, interval=30, stop=stop))
            await asyncio.sleep(0.1)
            proc = await asyncio.create_subprocess_exec("ip", "-n", node_ns.name, "route", "del", "10.65.2.0/26")
            assert await proc.wait() == 0
            await asyncio.wait_for(restored.wait(), timeout=5)
            # a foreign route change is not our business: no resync
            proc = await asyncio.create_subprocess_exec(
                "ip", "-n", node_ns.name, "route", "add", "10.99.0.0/24", "via", "192.0.2.1", "proto", "static"
            )
            assert await proc.wait() == 0
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.wait_for(task, timeout=5)
        return added

    added = asyncio.run(scenario())
    assert added == [1]
    assert "10.65.2.0/26" in ours(node_ns)


def test_watch_kernel_survives_a_failed_resync(node_ns: NodeNS) -> None:
    """One netlink error during a watch resync is logged and retried; the watch keeps repairing."""

    async def scenario() -> None:
        with RouteProgrammer(node_ns.name) as prog:
            prog.full_resync(DESIRED)
            real = prog.full_resync
            calls = {"n": 0}

            def flaky(desired=None):  # type: ignore[no-untyped-def]
                calls["n"] += 1
                if calls["n"] == 1:
                    raise OSError(110, "netlink receive timed out")
                return real(desired)

            prog.full_resync = flaky  # type: ignore[method-assign]
            stop = asyncio.Event()
            restored = asyncio.Event()

            def on_change(result) -> None:  # type: ignore[no-untyped-def]
                if result.added:
                    restored.set()

            task = asyncio.create_task(prog.watch_kernel(on_change, interval=30, stop=stop))
            await asyncio.sleep(0.1)
            proc = await asyncio.create_subprocess_exec("ip", "-n", node_ns.name, "route", "del", "10.65.2.0/26")
            assert await proc.wait() == 0
            await asyncio.wait_for(restored.wait(), timeout=8)
            assert calls["n"] >= 2 and not task.done()
            stop.set()
            await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert "10.65.2.0/26" in ours(node_ns)


def test_first_delta_adopts_and_recreated_interface_is_retried(node_ns: NodeNS) -> None:
    with RouteProgrammer(node_ns.name) as prog:
        prog.full_resync(DESIRED)
    with RouteProgrammer(node_ns.name) as prog:
        first = prog.apply_delta(DESIRED)  # nothing cached yet: dumps instead of blindly adding
        assert first.kind == "resync" and first.writes == 0
        node_ns.ip("link", "del", "tabwl0")
        node_ns.ip("link", "add", "tabwl0", "type", "veth", "peer", "name", "tabwl0peer")
        node_ns.ip("link", "set", "tabwl0", "up")
        extra = Route("10.65.1.6/32", oif="tabwl0")
        result = prog.apply_delta([*DESIRED, extra])  # stale index cached for tabwl0: refreshed, retried
        assert result.ok, result.failures
        assert result.writes == 2  # refused for the vanished index, then sent again with the new one
    assert ours(node_ns)["10.65.1.6"]["dev"] == "tabwl0"


def test_missing_namespace_is_an_error() -> None:
    with pytest.raises(FileNotFoundError):
        RouteProgrammer("tabbytest-does-not-exist")


def test_monitor_leaves_out_our_own_writes_only(node_ns: NodeNS) -> None:
    """The programmer's monitor drops the kernel's echoes of its own writes (in the kernel, by a
    socket filter) but reports another writer's change and the kernel's own, as a plain monitor does."""
    from felix_like.netlink import RouteMonitor

    def drain(mon: RouteMonitor) -> set[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            events, overflowed = mon.read_events()
            assert not overflowed
            seen |= {(e.kind, e.route.dst) for e in events}
            if ("new", "10.99.0.0/24") in seen:
                break
            time.sleep(0.02)
        return seen

    with RouteProgrammer(node_ns.name) as prog:
        filtered = prog.monitor()
        plain = RouteMonitor(node_ns.name)
        try:
            assert prog.full_resync(DESIRED).added == len(DESIRED)
            node_ns.ip("route", "add", "10.99.0.0/24", "via", "192.0.2.1", "proto", "static")
            seen_filtered, seen_plain = drain(filtered), drain(plain)
        finally:
            filtered.close()
            plain.close()
    ours_v4 = {r.dst for r in DESIRED if not r.ipv6}
    assert ours_v4 <= {dst for kind, dst in seen_plain if kind == "new"}  # the echoes exist...
    assert not ours_v4 & {dst for _, dst in seen_filtered}  # ...and the programmer's monitor drops them
    assert ("new", "10.99.0.0/24") in seen_filtered and ("new", "10.99.0.0/24") in seen_plain


def test_large_apply_without_per_route_acks_reports_each_refusal(node_ns: NodeNS) -> None:
    """Route messages carry no ACK request; a chunk ends with an acknowledged NOOP. Refusals anywhere
    in a chunk (first, middle, last, across chunks) are still reported one by one, the rest land."""
    from felix_like.netlink import CHUNK, RouteOp, RouteSocket

    node_ns.ip("route", "add", "10.70.0.0/26", "via", "192.0.2.1", "proto", "static")  # a foreign route
    n = CHUNK * 2 + 10
    routes = [Route(f"10.{70 + i // 1024}.{i // 4 % 256}.{(i % 4) * 64}/26", gateway="192.0.2.12", oif="eth0")
              for i in range(n)]
    bad = {0, CHUNK // 2, CHUNK - 1, CHUNK, n - 1}
    for i in bad - {0}:  # gateway off-link: ENETUNREACH
        routes[i] = Route(routes[i].dst, gateway="203.0.113.9", oif="eth0")
    with RouteSocket(node_ns.name) as nl:
        failures = nl.apply([(RouteOp.ADD, r) for r in routes])
        assert nl.writes == n
    assert {routes.index(f.route) for f in failures} == bad
    assert {f.errno for f in failures} == {errno.EEXIST, errno.ENETUNREACH}
    assert len(ours(node_ns)) == n - len(bad)
