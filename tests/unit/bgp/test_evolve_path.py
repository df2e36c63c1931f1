"""evolve_path is dataclasses.replace for Path, faster: same value, equality and hash, same refusal."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp.types import Path, evolve_path

BASE = Path(prefix="10.0.0.0/26", next_hop="10.30.0.1", as_path=(65001, 65002), med=5,
            communities=("65001:1",), peer_address="10.30.0.1", peer_as=65001)

CHANGES = st.fixed_dictionaries({}, optional={
    "prefix": st.sampled_from(["10.0.0.0/26", "fd00::/64"]),
    "stale": st.booleans(),
    "ibgp": st.booleans(),
    "peer_as": st.integers(0, 2**32 - 1),
    "peer_router_id": st.sampled_from(["", "192.0.2.1"]),
    "local_pref": st.none() | st.integers(0, 2**32 - 1),
    "originator_id": st.none() | st.just("192.0.2.9"),
    "cluster_list": st.just(()) | st.just(("192.0.2.7",)),
})


@given(CHANGES)
def test_same_as_dataclasses_replace(changes: dict[str, object]) -> None:
    ours, theirs = evolve_path(BASE, dict(changes)), dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]
    assert ours == theirs and hash(ours) == hash(theirs) and repr(ours) == repr(theirs)
    assert Path(prefix="10.0.0.0/26", next_hop="10.30.0.1", as_path=(65001, 65002), med=5,
                        communities=("65001:1",), peer_address="10.30.0.1", peer_as=65001) == BASE  # untouched


def test_unknown_field_refused_and_result_frozen() -> None:
    with pytest.raises(TypeError, match="nope"):
        evolve_path(BASE, {"nope": 1})
    out = evolve_path(BASE, {"stale": True})
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.stale = False  # type: ignore[misc]
