"""Foreign nf_tables commits seen through the kernel's NEWGEN notifications (felix_like.nft_monitor),
on the real kernel: our named thread's commits are not foreign, an ``nft`` process's are, a big
rebuild of our own never floods the socket (the BPF filter), and a table's handle tells a deleted
or re-created table apart."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from felix_like.nft_monitor import NFPROTO_INET, CommitMonitor, name_this_thread
from felix_like.policy import PolicyManager, Program

pytestmark = pytest.mark.root


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    ns = f"tbm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def nft(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True, capture_output=True, timeout=10)


def on_named_thread(fn: object) -> None:
    """Run ``fn`` on a thread named as the dataplane's (its commits are ours)."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            name_this_thread()
            fn()  # type: ignore[operator]
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join(timeout=60)
    assert not errors, errors


def read_settled(mon: CommitMonitor) -> list:
    time.sleep(0.1)
    return mon.read()


def test_own_commits_are_not_foreign_an_nft_process_is(netns: str) -> None:
    mon = CommitMonitor(netns)
    try:
        assert mon.table_handle(NFPROTO_INET, "tabby-policy") is None
        # a big rebuild of our own: 3,000 sets with 4 members each, 3,000 chains, one transaction
        sets = {f"s-{i}": ("ipv4_addr", frozenset(f"10.{i // 250}.{i % 250}.{k}" for k in range(4)))
                for i in range(3000)}
        chains = {f"c-{i}": (f"ip saddr @s-{i} accept",) for i in range(3000)}
        prog = Program(sets, chains, {}, {})
        mgr: list[PolicyManager] = []
        on_named_thread(lambda: mgr.append(PolicyManager(netns)) or mgr[0].resync(prog))
        assert read_settled(mon) == []
        assert mon.lost == 0
        handle = mon.table_handle(NFPROTO_INET, "tabby-policy")
        assert handle is not None

        nft(netns, "add", "table", "inet", "someone-else")
        foreign = read_settled(mon)
        assert [f.comm for f in foreign] == ["nft"] and foreign[0].pid > 0 and foreign[0].gen > 0, foreign
        assert mon.table_handle(NFPROTO_INET, "tabby-policy") == handle  # not our table

        # our table deleted, then re-created by someone else: gone, then a different handle
        nft(netns, "delete", "table", "inet", "tabby-policy")
        assert len(read_settled(mon)) == 1
        assert mon.table_handle(NFPROTO_INET, "tabby-policy") is None
        nft(netns, "add", "table", "inet", "tabby-policy")
        read_settled(mon)
        again = mon.table_handle(NFPROTO_INET, "tabby-policy")
        assert again is not None and again != handle

        # the same thread name from an unnamed thread is not ours: a plain Python thread is foreign
        import nftables  # Debian python3-nftables

        from felix_like.netns import run_in_netns

        ctx = run_in_netns(netns, nftables.Nftables)
        done: list[int] = []
        t = threading.Thread(target=lambda: done.append(ctx.cmd("add table inet t2")[0]))
        t.start()
        t.join(timeout=10)
        assert done == [0]
        assert len(read_settled(mon)) == 1
        assert mon.foreign_seen == 4
    finally:
        mon.close()


def test_nat_and_forward_accept_commits_from_the_dataplane_thread_are_not_foreign(netns: str) -> None:
    """NAT outgoing and the FORWARD accepts used to commit through an `nft` process: the monitor counted
    each of them as foreign and the agent rebuilt its whole policy table after every pool change."""
    from felix_like.forward import ForwardAccepts
    from felix_like.nat import NATManager, NATPool

    nft(netns, "add table ip filter; add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }")
    mon = CommitMonitor(netns)
    try:
        nat, fwd = NATManager(netns), ForwardAccepts(netns)
        results: list[object] = []
        on_named_thread(lambda: results.extend([nat.apply([NATPool("10.70.0.0/16", nat_outgoing=True)]),
                                                fwd.apply(), nat.apply([NATPool("10.71.0.0/16", nat_outgoing=True)])]))
        first, accepts, second = results
        assert first.ok and first.transactions == 1 and second.ok and second.transactions == 1  # type: ignore[attr-defined]
        assert accepts.inserted and not accepts.error  # type: ignore[attr-defined]
        assert read_settled(mon) == [] and mon.foreign_seen == 0
        listing = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "chain", "ip", "filter", "FORWARD"],
                                 capture_output=True, text=True, check=True).stdout
        assert listing.count("tabby-forward-accept") == 2, listing
        masq = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "ip", "tabby-nat"],
                              capture_output=True, text=True, check=True).stdout
        assert "10.71.0.0/16" in masq and "10.70.0.0/16" not in masq, masq
        on_named_thread(lambda: results.append(fwd.apply()))
        assert not results[-1].inserted and results[-1].dropping == ["ip filter FORWARD"]  # type: ignore[attr-defined]
    finally:
        mon.close()


def test_quiet_leaves_the_group_for_our_big_transaction_and_still_sees_a_foreign_commit(netns: str) -> None:
    """While subscribed, the kernel builds a notification per object of a transaction (the BPF filter
    drops them only afterwards): quiet() leaves the group around our own full load. A commit by
    someone else inside that window is found by the generation counter and reported by read()."""
    sets = {f"s-{i}": ("ipv4_addr", frozenset({f"10.1.{i // 250}.{i % 250}"})) for i in range(500)}
    prog = Program(sets, {f"c-{i}": (f"ip saddr @s-{i} accept",) for i in range(500)}, {}, {})
    mon = CommitMonitor(netns)
    try:
        gen0 = mon.generation()
        mgr: list[PolicyManager] = []

        def ours() -> None:
            mgr.append(PolicyManager(netns))
            with mon.quiet():
                mgr[0].resync(prog)

        on_named_thread(ours)
        assert mon.generation() == gen0 + 1 and not mon.pending and read_settled(mon) == []

        def ours_with_a_foreign_commit_inside() -> None:
            with mon.quiet():
                mgr[0].resync(prog)
                nft(netns, "add", "table", "inet", "someone-else")  # while we are off the group

        on_named_thread(ours_with_a_foreign_commit_inside)
        assert mon.pending
        foreign = read_settled(mon)
        assert len(foreign) == 1 and foreign[0].gen == gen0 + 3 and foreign[0].comm == "?", foreign
        assert not mon.pending and read_settled(mon) == []
        # subscribed again: an ordinary foreign commit is seen as before
        nft(netns, "add", "table", "inet", "someone-else-2")
        assert [f.comm for f in read_settled(mon)] == ["nft"]
    finally:
        mon.close()
