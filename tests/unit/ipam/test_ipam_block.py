"""Pure block logic: allocation order, release rules, sequence numbers, (de)serialisation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.block import Block, BlockFormatError, OrdinalInUse, block_cidr_for, host_affinity


def test_new_block_is_all_free_in_order() -> None:
    b = Block.new("10.0.0.0/26", host_affinity("n1"))
    assert b.size == 64 and b.free == 64 and b.in_use == 0 and b.is_empty
    assert b.unallocated == list(range(64))
    assert b.node == "n1"
    assert b.problems(26) == []


def test_allocate_from_head_and_record_attributes() -> None:
    b = Block.new("10.0.0.0/26")
    ords = b.allocate(3, "h1", {"node": "n1"})
    assert ords == [0, 1, 2]
    assert [b.ip(o) for o in ords] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert b.handle_of(1) == "h1" and b.secondary_of(1) == {"node": "n1"}
    assert b.attributes == [{"handle_id": "h1", "secondary": {"node": "n1"}}]  # shared, not one per IP
    assert b.handle_counts() == {"h1": 3}
    assert b.free == 61


def test_allocate_more_than_free_takes_what_is_there() -> None:
    b = Block.new("10.0.0.0/30")
    assert b.allocate(10, "h") == [0, 1, 2, 3]
    assert b.allocate(1, "h") == []


def test_release_goes_to_tail_so_oldest_free_is_reused_first() -> None:
    b = Block.new("10.0.0.0/29")
    b.allocate(8, "h")
    b.release([3], handle_id="h")
    b.release([1], handle_id="h")
    assert b.unallocated == [3, 1]
    assert b.allocate(1, "h2") == [3]


def test_fifo_reuse_with_free_space_left() -> None:
    b = Block.new("10.0.0.0/28")
    first = b.allocate(1, "a")[0]
    b.release([first])
    # The just-released address goes behind every other free one.
    nxt = b.allocate(15, "b")
    assert first not in nxt
    assert b.allocate(1, "c") == [first]


def test_release_with_wrong_handle_is_refused() -> None:
    b = Block.new("10.0.0.0/29")
    b.allocate(1, "owner")
    out = b.release([0], handle_id="thief")
    assert out.refused == [0] and out.released == []
    assert b.handle_of(0) == "owner"


def test_release_of_free_ordinal_reports_not_allocated() -> None:
    b = Block.new("10.0.0.0/29")
    seq = b.sequence_number
    out = b.release([5])
    assert out.not_allocated == [5]
    assert b.sequence_number == seq  # nothing written, nothing bumped


def test_sequence_number_refuses_stale_release() -> None:
    b = Block.new("10.0.0.0/31")
    b.allocate(2, "a")
    seq_at_alloc = b.seq_for_alloc[0]
    b.release([0])
    b.allocate(1, "x")  # ordinal 1 busy: reuse of 0 needs it back at the head
    assert b.handle_of(0) == "x"  # 0 was reused
    out = b.release([0], sequence_numbers={0: seq_at_alloc})
    assert out.refused == [0]
    assert b.handle_of(0) == "x"
    out = b.release([0], sequence_numbers={0: b.seq_for_alloc[0]})
    assert out.released == [0]


def test_every_write_bumps_sequence_number() -> None:
    b = Block.new("10.0.0.0/29")
    s0 = b.sequence_number
    b.allocate(1, "h")
    s1 = b.sequence_number
    b.assign(5, "h")
    s2 = b.sequence_number
    b.release([0])
    s3 = b.sequence_number
    b.touch()
    assert s0 < s1 < s2 < s3 < b.sequence_number
    assert b.seq_for_alloc[5] == s2


def test_assign_specific_ordinal() -> None:
    b = Block.new("10.0.0.0/29")
    b.assign(4, "h", {"node": "n"})
    assert 4 not in b.unallocated and b.handle_of(4) == "h"
    with pytest.raises(OrdinalInUse):
        b.assign(4, "other")
    assert b.problems() == []


def test_attributes_pruned_and_renumbered_on_release() -> None:
    b = Block.new("10.0.0.0/29")
    b.allocate(1, "a")
    b.allocate(1, "b")
    b.allocate(1, "c")
    b.release([0, 1])
    assert b.attributes == [{"handle_id": "c", "secondary": {}}]
    assert b.allocations[2] == 0
    assert b.ordinals_for_handle("c") == [2]


def test_ip_ordinal_roundtrip_v4_and_v6() -> None:
    b4 = Block.new("10.1.2.64/26")
    assert b4.ordinal("10.1.2.70") == 6 and b4.ip(6) == "10.1.2.70"
    b6 = Block.new("fd00:1::40/122")
    assert b6.size == 64
    assert b6.ordinal("fd00:1::45") == 5 and b6.ip(5) == "fd00:1::45"
    with pytest.raises(ValueError):
        b4.ordinal("10.1.2.200")
    with pytest.raises(ValueError):
        b4.ordinal("fd00:1::45")


def test_v6_allocate_release() -> None:
    b = Block.new("fd00::/122", host_affinity("n"))
    ords = b.allocate(2, "h")
    assert [b.ip(o) for o in ords] == ["fd00::", "fd00::1"]
    assert b.release(ords, handle_id="h").released == ords
    assert b.is_empty


def test_json_roundtrip_uses_calico_field_names() -> None:
    b = Block.new("10.0.0.0/28", host_affinity("n1"), strict_affinity=True)
    b.allocate(2, "h", {"node": "n1"})
    doc = b.to_json()
    assert set(doc) == {"cidr", "affinity", "strictAffinity", "allocations", "unallocated", "attributes",
                        "deleted", "sequenceNumber", "sequenceNumberForAllocation"}
    assert doc["affinity"] == "host:n1"
    assert doc["sequenceNumberForAllocation"] == {"0": 1, "1": 1}
    back = Block.from_json(json.loads(json.dumps(doc)))
    assert back == b


@pytest.mark.parametrize(
    "doc, field",
    [
        ([], "object"),
        ({"cidr": "nope"}, "cidr"),
        ({"cidr": "10.0.0.0/30", "allocations": "x", "unallocated": []}, "allocations"),
        ({"cidr": "10.0.0.0/30", "allocations": [None] * 4, "unallocated": "x"}, "unallocated"),
        ({"cidr": "10.0.0.0/30", "allocations": [None] * 4, "unallocated": [], "attributes": [1]}, "attributes"),
    ],
)
def test_from_json_names_bad_field(doc: object, field: str) -> None:
    with pytest.raises(BlockFormatError, match=field):
        Block.from_json(doc)


def test_problems_detects_broken_partition() -> None:
    b = Block.new("10.0.0.0/29")
    b.allocate(2, "h")
    b.unallocated.append(0)  # 0 is both free and allocated
    assert any("both free and allocated" in p for p in b.problems())
    b = Block.new("10.0.0.0/29")
    b.unallocated.remove(7)  # 7 neither
    assert any("neither" in p for p in b.problems())
    b = Block.new("10.0.0.0/29")
    assert any("blockSize" in p for p in b.problems(26))
    b = Block.new("10.0.0.0/29")
    b.allocations[0] = 3
    b.unallocated.remove(0)
    assert any("missing attributes" in p for p in b.problems())


def test_block_cidr_for() -> None:
    assert block_cidr_for("10.0.3.77", 26) == "10.0.3.64/26"
    assert block_cidr_for("fd00::1:47", 122) == "fd00::1:40/122"


def test_copy_is_independent() -> None:
    b = Block.new("10.0.0.0/29")
    b.allocate(1, "h", {"k": "v"})
    c = b.copy()
    c.allocate(1, "h2")
    c.attributes[0]["secondary"]["k"] = "changed"
    assert b.free == 7 and b.secondary_of(0) == {"k": "v"}


# -- properties ---------------------------------------------------------------------------
ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 5), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("release"), st.integers(0, 15), st.sampled_from([None, "a", "b", "c"])),
        st.tuples(st.just("assign"), st.integers(0, 15), st.sampled_from(["a", "b", "c"])),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, v6=st.booleans())
def test_random_sequences_keep_invariants(ops: list[tuple[str, int, str | None]], v6: bool) -> None:
    """Model check: a dict ip->handle plus a FIFO list is what the block must behave like."""
    b = Block.new("fd00::/124" if v6 else "10.9.0.16/28")
    held: dict[int, str] = {}
    fifo = list(range(16))
    for op, n, h in ops:
        if op == "alloc":
            assert h is not None
            got = b.allocate(n, h)
            expect = fifo[:n]
            assert got == expect, "allocation must come from the head of the free list"
            del fifo[: len(got)]
            for o in got:
                assert o not in held, "no ordinal handed out twice"
                held[o] = h
        elif op == "assign":
            assert h is not None
            if n in held:
                with pytest.raises(OrdinalInUse):
                    b.assign(n, h)
            else:
                b.assign(n, h)
                fifo.remove(n)
                held[n] = h
        else:
            out = b.release([n], handle_id=h)
            if n not in held:
                assert out.not_allocated == [n]
            elif h is not None and held[n] != h:
                assert out.refused == [n]
            else:
                assert out.released == [n]
                del held[n]
                fifo.append(n)  # to the tail
        # allocated and free always partition the block
        allocated = set(b.allocated_ordinals())
        assert allocated == set(held)
        assert b.unallocated == fifo
        assert allocated.isdisjoint(b.unallocated) and allocated | set(b.unallocated) == set(range(16))
        assert b.problems() == []
        for o, hid in held.items():
            assert b.handle_of(o) == hid
        assert sum(b.handle_counts().values()) == len(held)
    assert Block.from_json(json.loads(json.dumps(b.to_json()))) == b


@settings(max_examples=200, deadline=None)
@given(rounds=st.lists(st.integers(0, 7), min_size=1, max_size=40))
def test_stale_sequence_numbers_never_release_a_reused_ip(rounds: list[int]) -> None:
    """Remember (ordinal, seq) at every allocation; a release with an old pair must be refused."""
    b = Block.new("10.0.0.0/29")
    history: list[tuple[int, int]] = []
    for o in rounds:
        if b.allocations[o] is None:
            b.assign(o, "h")
            history.append((o, b.seq_for_alloc[o]))
        else:
            current = b.seq_for_alloc[o]
            for ordinal, seq in history:
                if ordinal == o and seq != current:
                    assert b.release([o], sequence_numbers={o: seq}).refused == [o]
            assert b.release([o], sequence_numbers={o: current}).released == [o]
