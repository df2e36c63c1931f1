"""Properties of the RIB: the best path depends on the set of paths, never on arrival order, and
withdrawing everything leaves nothing behind (no leaked paths, every change reported)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.rib import Rib
from bgp.types import GLOBAL, MESH, GracefulRestart, Path, PeerSpec

AS = 64512
PEERS = [f"10.0.0.{i}" for i in range(1, 7)]
PREFIXES = ["10.65.0.0/26", "10.65.0.64/26", "10.65.1.0/24", "10.66.0.1/32"]


def peer_spec(address: str) -> PeerSpec:
    ebgp = address.endswith((".5", ".6"))  # two eBGP neighbours among iBGP ones
    return PeerSpec(
        address=address,
        peer_as=65000 + int(address.rsplit(".", 1)[1]) if ebgp else AS,
        local_as=AS,
        type=GLOBAL if ebgp else MESH,
        name=address,
    )


path_attrs = st.fixed_dictionaries(
    {
        "local_pref": st.sampled_from([None, 100, 200]),
        "as_path": st.lists(st.sampled_from([65001, 65002, 65003, AS]), max_size=3).map(tuple),
        "origin": st.sampled_from(["igp", "egp", "incomplete"]),
        "med": st.sampled_from([None, 0, 10, 20]),
        "originator_id": st.sampled_from([None, "10.9.0.1", "10.9.0.2", "10.0.0.100"]),
        "cluster_list": st.sampled_from([(), ("224.0.0.2",), ("224.0.0.1",)]),
        "next_hop": st.sampled_from(["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
    }
)

# one final path per (peer, prefix): the order-independence claim is about distinct paths
tables = st.dictionaries(
    keys=st.tuples(st.sampled_from(PEERS), st.sampled_from(PREFIXES)), values=path_attrs, min_size=1, max_size=20
)


def new_rib() -> Rib:
    rib = Rib(AS, "10.0.0.100", cluster_id="224.0.0.1")
    for address in PEERS:
        rib.peer_up(peer_spec(address), router_id=address)
    return rib


def load(rib: Rib, updates: list[tuple[tuple[str, str], dict[str, object]]]) -> None:
    for (peer, prefix), attrs in updates:
        rib.update(peer, [Path(prefix=prefix, **attrs)])  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(table=tables, data=st.data())
def test_best_path_is_independent_of_update_order(table: dict, data: st.DataObject) -> None:
    items = sorted(table.items())
    shuffled = data.draw(st.permutations(items))
    a, b = new_rib(), new_rib()
    load(a, items)
    load(b, list(shuffled))
    assert a.best() == b.best()
    assert a.counters() == b.counters()
    assert a.drain_changes() == b.drain_changes()


@settings(max_examples=200, deadline=None)
@given(table=tables, data=st.data())
def test_withdrawing_everything_empties_the_rib(table: dict, data: st.DataObject) -> None:
    rib = new_rib()
    load(rib, sorted(table.items()))
    announced = set(rib.best())
    rib.drain_changes()
    keys = data.draw(st.permutations(sorted(table)))
    for peer, prefix in keys:
        rib.update(peer, withdraw=[prefix])
    assert rib.best() == {}
    counters = rib.counters()
    assert (counters.paths, counters.prefixes, counters.paths_per_peer) == (0, 0, {})
    assert rib.drain_changes() == dict.fromkeys(announced)


@settings(max_examples=100, deadline=None)
@given(table=tables, down=st.sampled_from(PEERS))
def test_peer_down_equals_withdrawing_its_paths(table: dict, down: str) -> None:
    a, b = new_rib(), new_rib()
    load(a, sorted(table.items()))
    load(b, sorted(table.items()))
    a.peer_down(down)
    b.update(down, withdraw=[prefix for peer, prefix in table if peer == down])
    assert a.best() == b.best()


@settings(max_examples=100, deadline=None)
@given(table=tables)
def test_best_is_always_one_of_the_multipath_set_and_survived_loop_checks(table: dict) -> None:
    rib = new_rib()
    load(rib, sorted(table.items()))
    for best in rib.best().values():
        assert best.path in best.paths
        assert best.path.next_hop in best.next_hops
        assert AS not in best.path.as_path
        assert best.path.originator_id != "10.0.0.100"
        assert "224.0.0.1" not in best.path.cluster_list


@settings(max_examples=100, deadline=None)
@given(table=tables, down=st.sampled_from(PEERS), data=st.data())
def test_graceful_restart_refresh_and_eor_restores_the_refreshed_state(
    table: dict, down: str, data: st.DataObject
) -> None:
    """After a graceful restart the peer re-sends some of its paths and End-of-RIB: the RIB equals
    one that saw only the re-sent paths from that peer, whatever was stale in between."""
    own = sorted((k, v) for k, v in table.items() if k[0] == down)
    resent = data.draw(st.lists(st.sampled_from(own), unique_by=lambda kv: kv[0]) if own else st.just([]))
    a, b = new_rib(), new_rib()
    load(a, sorted(table.items()))
    a.peer_open(down, down, GracefulRestart(120, (("ipv4 unicast", True),)))
    a.peer_up(peer_spec(down), router_id=down)
    a.peer_down(down, now=0.0)
    a.peer_open(down, down, GracefulRestart(120, (("ipv4 unicast", True),)))
    a.peer_up(peer_spec(down), router_id=down, now=10.0)
    load(a, resent)
    a.end_of_rib(down)
    load(b, sorted((k, v) for k, v in table.items() if k[0] != down) + resent)
    assert a.best() == b.best()
    assert a.counters().stale_per_peer == {}
