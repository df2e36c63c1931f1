"""The dataplane thread behind the message boundary, in a throw-away namespace: nothing is written
before InSync; datastore-driven updates wait for the throttled apply phase while CNI's fast lane is
written at once; the event loop keeps running while the thread writes 10,000 routes; stop leaves
every route in place."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid

import pytest

from controller.node.dataplane import Dataplane
from controller.node.messages import InSync, RouteUpdate
from felix_like.netlink import Route, RouteType

pytestmark = pytest.mark.root


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout


def blackhole(dst: str) -> RouteUpdate:
    return RouteUpdate(dst, Route(dst, RouteType.BLACKHOLE, None, None, False, 0))


@pytest.fixture
def netns() -> object:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"tbdp-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=20)


def kernel(ns: str) -> list[str]:
    return sh("ip", "-n", ns, "route", "show", "proto", "81").splitlines()


def test_in_sync_throttle_fast_lane_and_a_free_event_loop(netns: str) -> None:
    async def body() -> None:
        dp = Dataplane(netns, node="t", throttle=0.5)
        dp.start()
        dp.send([blackhole("10.20.0.0/26")])
        await asyncio.sleep(0.3)
        assert kernel(netns) == []  # not in sync: nothing written
        dp.send([InSync()])
        await asyncio.wait_for(dp.wait_synced(), 10)
        assert "10.20.0.0/26" in sh("ip", "-n", netns, "route", "show", "proto", "81")
        # datastore-driven: at most one apply phase per throttle interval (leading edge)
        dp.send([blackhole("10.20.0.128/26")])
        for _ in range(40):
            if dp.has_route("10.20.0.128/26"):
                break
            await asyncio.sleep(0.01)
        assert "10.20.0.128/26" in sh("ip", "-n", netns, "route", "show", "proto", "81")
        dp.send([blackhole("10.20.0.64/26")])  # within the interval: waits for the next phase
        start = time.monotonic()
        result = await dp.apply_fast([blackhole("10.20.1.0/26")])  # CNI: at once
        fast = time.monotonic() - start
        assert result is not None and result.added == 1 and fast < 0.25, fast
        routes = sh("ip", "-n", netns, "route", "show", "proto", "81")
        assert "10.20.1.0/26" in routes and "10.20.0.64/26" not in routes
        await asyncio.sleep(0.7)
        assert "10.20.0.64/26" in sh("ip", "-n", netns, "route", "show", "proto", "81")
        # 10,000 routes: the loop is never blocked for long while the thread writes them
        dp.send([blackhole(f"10.{30 + i // 4096}.{(i // 16) % 256}.{(i % 16) * 16}/28") for i in range(10_000)])
        worst = 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not dp.has_route("10.32.112.240/28"):
            t = time.monotonic()
            await asyncio.sleep(0.005)
            worst = max(worst, time.monotonic() - t)
        assert dp.has_route("10.32.112.240/28")
        assert worst < 0.5, f"event loop blocked for {worst:.3f}s"
        await dp.stop()
        assert len(sh("ip", "-n", netns, "route", "show", "proto", "81").splitlines()) == 10_004  # left in place

    asyncio.run(body())


def test_a_route_another_program_holds_costs_no_retry_and_is_written_when_it_goes(netns: str) -> None:
    """A learned route whose key a foreign route holds (EEXIST on every add) must not make the thread dump
    and compare the whole table again and again (at 10,000 BGP routes that was most of the agent's CPU):
    one retry resync (to tell a stale view of our own route from another program's), then none; the rest
    still applies; ours is written as soon as the foreign route is deleted."""
    async def body() -> None:
        sh("ip", "-n", netns, "route", "add", "blackhole", "10.21.0.0/24", "proto", "static")
        dp = Dataplane(netns, node="t", throttle=0.02)
        dp.start()
        try:
            dp.send([InSync()])
            await asyncio.wait_for(dp.wait_synced(), 10)
            dp.send([blackhole("10.21.0.0/24"), blackhole("10.21.1.0/24")])
            await asyncio.sleep(3.5)
            assert dp.stats.resync_reasons.get("retry", 0) == 1, dp.stats.resync_reasons
            ours = sh("ip", "-n", netns, "route", "show", "proto", "81")
            assert "10.21.1.0/24" in ours and "10.21.0.0/24" not in ours, ours
            sh("ip", "-n", netns, "route", "del", "blackhole", "10.21.0.0/24", "proto", "static")
            deadline = time.monotonic() + 2
            while "10.21.0.0/24" not in sh("ip", "-n", netns, "route", "show", "proto", "81"):
                assert time.monotonic() < deadline, "ours was not written when the foreign route went"
                await asyncio.sleep(0.05)
            assert dp.stats.resync_reasons.get("retry", 0) == 1, dp.stats.resync_reasons
        finally:
            await dp.stop()

    asyncio.run(body())


def test_a_route_waiting_for_its_device_costs_no_resync(netns: str) -> None:
    """A pod's endpoint reaches the graph (etcd) before CNI made its veth: the route is refused
    (ENODEV). It is written when the device appears (the link monitor), not by a full resync of
    every route 1 s later (O(cluster) per pod: issue 8); and a pod's new veth, coming up with its
    IPv6 link-local address, is no reason for a resync either."""

    async def body() -> None:
        dp = Dataplane(netns, node="t", throttle=0.01)
        dp.start()
        dp.send([InSync()])
        await asyncio.wait_for(dp.wait_synced(), 10)
        resyncs = dp.stats.full_resyncs
        route = Route("10.21.0.5/32", RouteType.UNICAST, None, "tabwait0", False, 0)
        dp.send([RouteUpdate("10.21.0.5/32", route)])
        await asyncio.sleep(1.6)  # past the 1 s retry of a failed write
        assert "10.21.0.5" not in sh("ip", "-n", netns, "route", "show", "proto", "81")
        pod = f"tbdp-pod-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", pod)
        try:
            sh("ip", "-n", netns, "link", "add", "tabwait0", "up", "type", "veth", "peer", "name", "eth0",
               "netns", pod)
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and "10.21.0.5" not in sh("ip", "-n", netns, "route", "show",
                                                                          "proto", "81"):
                await asyncio.sleep(0.02)
            assert "10.21.0.5 dev tabwait0" in sh("ip", "-n", netns, "route", "show", "proto", "81")
            await asyncio.sleep(0.5)  # carrier up, link-local address: nothing to resync for
            assert dp.stats.full_resyncs == resyncs, dp.stats.resync_reasons
        finally:
            await dp.stop()
            subprocess.run(["ip", "netns", "del", pod], check=False, timeout=20)

    asyncio.run(body())


def test_workload_devices_are_made_by_the_dataplane_fast_lane(netns: str) -> None:
    """A pod's veth is a message to the workload manager (not made by the CNI handler): device,
    then routes, in one fast-lane pass that returns once both are in the kernel; a device that
    cannot be made fails the request and writes none of its routes; DEL deletes it; a burst of
    pods' devices is made together."""
    from controller.node.messages import WorkloadDeviceUpdate
    from felix_like.workload import NetnsGone, WorkloadSpec

    def spec(i: int, pod_ns: str) -> WorkloadSpec:
        return WorkloadSpec(host_ifname=f"tabdev{i}", pod_netns=f"/run/netns/{pod_ns}", pod_ifname="eth0",
                            mtu=1450, ipv4=[f"10.22.0.{i}/32"], pod_mac=f"02:00:00:00:00:{i:02x}")

    def route(i: int) -> RouteUpdate:
        return RouteUpdate(f"10.22.0.{i}/32", Route(f"10.22.0.{i}/32", RouteType.UNICAST, None, f"tabdev{i}", False, 0))

    pods = [f"tbdp-pod-{uuid.uuid4().hex[:6]}" for _ in range(8)]

    async def body() -> None:
        dp = Dataplane(netns, node="t", throttle=0.01)
        dp.start()
        dp.send([InSync()])
        await asyncio.wait_for(dp.wait_synced(), 10)
        try:
            result = await dp.apply_fast([WorkloadDeviceUpdate("tabdev1", spec(1, pods[0])), route(1)], force=True)
            assert result is not None and result.ok
            assert "tabdev1" in sh("ip", "-n", netns, "link", "show", "tabdev1")
            assert "10.22.0.1 dev tabdev1" in sh("ip", "-n", netns, "route", "show", "proto", "81")
            pod_side = sh("ip", "-n", pods[0], "addr", "show", "eth0")
            assert "10.22.0.1/32" in pod_side and "02:00:00:00:00:01" in pod_side
            # the pod's namespace is gone: the request fails with that, and its route is not written
            with pytest.raises(NetnsGone):
                await dp.apply_fast([WorkloadDeviceUpdate("tabdev2", spec(2, "tbdp-no-such")), route(2)], force=True)
            assert "10.22.0.2" not in sh("ip", "-n", netns, "route", "show", "proto", "81")
            # a burst: seven pods at once
            before = dp.stats.device_applies
            await asyncio.gather(*(dp.apply_fast([WorkloadDeviceUpdate(f"tabdev{i}", spec(i, pods[i - 2])), route(i)],
                                                 force=True) for i in range(3, 10)))
            links = sh("ip", "-n", netns, "-o", "link", "show")
            assert all(f"tabdev{i}@" in links for i in range(3, 10)), links
            assert dp.stats.device_applies - before <= 7
            # DEL: the device goes (its route with it)
            assert await dp.apply_fast([WorkloadDeviceUpdate("tabdev1", None)]) is None
            assert "tabdev1" not in sh("ip", "-n", netns, "-o", "link", "show")
        finally:
            await dp.stop()

    for p in pods:
        sh("ip", "netns", "add", p)
    try:
        asyncio.run(body())
    finally:
        for p in pods:
            subprocess.run(["ip", "netns", "del", p], check=False, timeout=20)
