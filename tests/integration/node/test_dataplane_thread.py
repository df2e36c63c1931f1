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
