"""A relay that stops reading cannot hold the agent's BGP work forever: the write is bounded."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

import bgp.relay_link as bridge_mod
from bgp.relay_link import BgpBridge


def test_stalled_relay_is_dropped_within_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_mod, "DRAIN_TIMEOUT_S", 0.5)

    async def scenario() -> tuple[bool, float]:
        path = tmp_path / "api.sock"
        bridge = BgpBridge(str(path))
        await bridge.start()
        relay = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # connects, then never reads
        relay.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        relay.connect(str(path))
        try:
            assert await bridge.wait_connected(5)
            line = "announce route 10.0.0.0/26 next-hop self community [" + " ".join(["65000:1"] * 300) + "]"
            start = time.monotonic()
            ok = True
            for _ in range(5000):  # bounded: far more than the socket buffers hold
                ok = await bridge.send(line)
                if not ok:
                    break
            return ok, time.monotonic() - start
        finally:
            relay.close()
            await bridge.close()

    ok, elapsed = asyncio.run(scenario())
    assert not ok, "the bridge kept accepting writes to a relay that never reads"
    assert elapsed < 10
