"""The Speaker's desired set against ExaBGP's adj-rib-out, which holds ONE route per prefix and neighbor."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bgp.speaker import Speaker
from bgp.types import Announcement


class FakeBridge:
    """Records what the Speaker sends (the commands, not their ExaBGP effect)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []

    async def announce(self, ann: Announcement, peer: str | None = None) -> bool:
        self.sent.append(("announce", ann.prefix, peer))
        return True

    async def withdraw(self, prefix: str, peer: str | None = None) -> bool:
        self.sent.append(("withdraw", prefix, peer))
        return True


def speaker(tmp_path: Path) -> tuple[Speaker, FakeBridge]:
    sp = Speaker(None, tmp_path)
    fake = FakeBridge()
    sp.bridge = fake  # type: ignore[assignment]
    return sp, fake


P = "10.96.0.0/12"


def test_withdrawing_a_per_peer_route_restores_the_general_one(tmp_path: Path) -> None:
    sp, fake = speaker(tmp_path)

    async def run() -> None:
        await sp.announce(Announcement(prefix=P))
        await sp.announce(Announcement(prefix=P, next_hop="10.0.0.7"), "10.0.0.3")
        fake.sent.clear()
        await sp.withdraw(P, "10.0.0.3")

    asyncio.run(run())
    # a `neighbor 10.0.0.3 withdraw` would also remove our own route for that neighbor
    assert fake.sent == [("announce", P, "10.0.0.3")]


def test_withdrawing_the_general_route_re_sends_per_peer_ones(tmp_path: Path) -> None:
    sp, fake = speaker(tmp_path)

    async def run() -> None:
        await sp.replace_announcements([Announcement(prefix=P), ("10.0.0.3", Announcement(prefix=P, med=1))])
        fake.sent.clear()
        await sp.replace_announcements([("10.0.0.3", Announcement(prefix=P, med=1))])

    asyncio.run(run())
    assert fake.sent == [("withdraw", P, None), ("announce", P, "10.0.0.3")]
