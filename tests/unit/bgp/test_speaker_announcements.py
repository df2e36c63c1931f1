"""The Speaker's desired set against ExaBGP's adj-rib-out, which holds ONE route per prefix and neighbor."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bgp.exabgp_codec import Hello, format_announce
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

    async def send(self, line: str) -> bool:
        words = line.split()
        peer = words[1] if words[0] == "neighbor" else None
        words = words[2:] if peer else words
        self.sent.append((words[0], words[2], peer))
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


def _hello(*lines: str) -> Hello:
    return Hello(helper_pid=1, exabgp_pid=2, dropped=0, routes=tuple(lines), replay=0)


def test_a_restarted_agent_keeps_the_per_neighbor_copies_of_its_general_route(tmp_path: Path) -> None:
    """Session-up re-sends the general route per neighbor; the relay lists those copies. They are that
    route for that neighbor: withdrawing them pulled a live node's block from its peers at settle."""
    sp, fake = speaker(tmp_path)
    ann = Announcement(prefix=P)
    held = (format_announce(ann), format_announce(ann, "10.0.0.2"), format_announce(ann, "10.0.0.3"))

    async def run() -> None:
        await sp._resync(_hello(*held))  # the agent restarted: ExaBGP still holds all three
        await sp.announce(ann)  # recomputed before the start-up window is over
        fake.sent.clear()
        await sp.replace_announcements([ann])  # settled: the first complete desired set

    asyncio.run(run())
    assert fake.sent == []


def test_a_stale_per_neighbor_copy_is_replaced_not_withdrawn(tmp_path: Path) -> None:
    sp, fake = speaker(tmp_path)
    ann = Announcement(prefix=P)

    async def run() -> None:
        await sp._resync(_hello(format_announce(Announcement(prefix=P, med=5), "10.0.0.2")))
        fake.sent.clear()
        await sp.replace_announcements([ann])

    asyncio.run(run())
    assert fake.sent == [("announce", P, None), ("announce", P, "10.0.0.2")]


def test_an_undesired_general_route_is_withdrawn_and_per_peer_ones_sent_again(tmp_path: Path) -> None:
    sp, fake = speaker(tmp_path)
    per_peer = Announcement(prefix=P, med=1)
    held = (format_announce(Announcement(prefix=P)), format_announce(per_peer, "10.0.0.3"),
            format_announce(Announcement(prefix="10.0.0.0/26")))

    async def run() -> None:
        await sp._resync(_hello(*held))
        fake.sent.clear()
        await sp.replace_announcements([("10.0.0.3", per_peer)])

    asyncio.run(run())
    assert fake.sent == [("announce", P, "10.0.0.3"), ("withdraw", P, None), ("announce", P, "10.0.0.3"),
                         ("withdraw", "10.0.0.0/26", None)]
