"""RIB: decision process step by step, ECMP, loop checks, withdrawals, graceful restart, change feed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp.exabgp_codec import format_announce
from bgp.rib import REJECT_AS_LOOP, REJECT_CLUSTER_LOOP, REJECT_ORIGINATOR, Rib, next_hop_check, select_best
from bgp.types import (
    AS_CONFED_SEQUENCE,
    AS_CONFED_SET,
    AS_SEQUENCE,
    AS_SET,
    GLOBAL,
    MESH,
    Announcement,
    GracefulRestart,
    Path,
    PeerSpec,
)

LOCAL_AS = 64512
P = "10.65.0.0/26"


def ibgp(address: str, rr_client: bool = False) -> PeerSpec:
    return PeerSpec(
        address=address,
        peer_as=LOCAL_AS,
        local_as=LOCAL_AS,
        type=MESH,
        name=address,
        route_reflector_client=rr_client,
    )


def ebgp(address: str, asn: int = 65000) -> PeerSpec:
    return PeerSpec(address=address, peer_as=asn, local_as=LOCAL_AS, type=GLOBAL, name=address)


def path(peer: str, **kw: object) -> Path:
    kw.setdefault("prefix", P)
    kw.setdefault("next_hop", peer)
    return Path(peer_address=peer, **kw)  # type: ignore[arg-type]


def rib_with(*peers: PeerSpec, router_id: str = "10.0.0.1", cluster_id: str | None = None) -> Rib:
    rib = Rib(LOCAL_AS, router_id, cluster_id)
    for spec in peers:
        rib.peer_up(spec, router_id=spec.address)
    return rib


# ---------------------------------------------------------------- decision process, one step per case

# Each case: two paths that differ in exactly the attribute of one step; the first one must win
# whatever order they arrive in.
DECISION_CASES = [
    pytest.param(
        (ibgp("10.0.0.9"), {"local_pref": 200}),
        (ibgp("10.0.0.2"), {"local_pref": 100}),
        id="1-highest-local-pref",
    ),
    pytest.param(
        (ibgp("10.0.0.9"), {"local_pref": 100}),
        (ibgp("10.0.0.2"), {"local_pref": 90}),
        id="1-absent-local-pref-is-100",
    ),
    pytest.param(
        (ibgp("10.0.0.9"), {"as_path": (65001,)}),
        (ibgp("10.0.0.2"), {"as_path": (65001, 65002)}),
        id="2-shortest-as-path",
    ),
    pytest.param(
        (ibgp("10.0.0.9"), {"origin": "egp"}),
        (ibgp("10.0.0.2"), {"origin": "incomplete"}),
        id="3-lowest-origin",
    ),
    pytest.param(
        (ibgp("10.0.0.9"), {"as_path": (65001,), "med": 10}),
        (ibgp("10.0.0.2"), {"as_path": (65001,), "med": 20}),
        id="4-lowest-med-same-neighbour-as",
    ),
    pytest.param(
        (ibgp("10.0.0.9"), {"as_path": (65001,)}),
        (ibgp("10.0.0.2"), {"as_path": (65001,), "med": 5}),
        id="4-absent-med-is-0",
    ),
    pytest.param(
        (ebgp("10.0.0.9"), {"as_path": (65000,)}),
        (ibgp("10.0.0.2"), {"as_path": (65000,)}),
        id="5-ebgp-over-ibgp",
    ),
    pytest.param(
        (ibgp("10.0.0.2"), {"next_hop": "10.0.0.2", "med": 0}),
        (ibgp("10.0.0.9"), {"next_hop": "10.0.0.2", "med": 0}),
        id="6-lowest-router-id",
    ),
    pytest.param(
        (ibgp("10.0.0.9"), {"originator_id": "10.0.0.3"}),
        (ibgp("10.0.0.2"), {"originator_id": "10.0.0.4"}),
        id="6-originator-id-stands-for-router-id",
    ),
    pytest.param(
        (ibgp("10.0.0.9"), {"originator_id": "10.0.0.3", "cluster_list": ("1.1.1.1",)}),
        (ibgp("10.0.0.2"), {"originator_id": "10.0.0.3", "cluster_list": ("1.1.1.1", "2.2.2.2")}),
        id="6-shorter-cluster-list",
    ),
]


@pytest.mark.parametrize(("winner", "loser"), DECISION_CASES)
@pytest.mark.parametrize("winner_first", [True, False])
def test_decision_step(
    winner: tuple[PeerSpec, dict[str, object]], loser: tuple[PeerSpec, dict[str, object]], winner_first: bool
) -> None:
    rib = rib_with(winner[0], loser[0])
    # next hops differ unless the case pins them; ECMP must not hide the decision
    order = [winner, loser] if winner_first else [loser, winner]
    for spec, attrs in order:
        rib.update(spec.address, [path(spec.address, **attrs)])
    best = rib.best()[P]
    assert best.path.peer_address == winner[0].address


def test_lowest_peer_address_breaks_the_last_tie() -> None:
    # same router id (unknown) from two sessions: the peer address decides
    rib = Rib(LOCAL_AS, "10.0.0.1")
    rib.peer_up(ibgp("10.0.0.7"))
    rib.peer_up(ibgp("10.0.0.5"))
    rib.update("10.0.0.7", [path("10.0.0.7", next_hop="10.9.9.9")])
    rib.update("10.0.0.5", [path("10.0.0.5", next_hop="10.9.9.9")])
    assert rib.best()[P].path.peer_address == "10.0.0.5"


def test_router_ids_compare_as_numbers_not_text() -> None:
    rib = rib_with(ibgp("10.0.0.10"), ibgp("10.0.0.9"))
    rib.update("10.0.0.10", [path("10.0.0.10", local_pref=100, next_hop="1.1.1.1")])
    rib.update("10.0.0.9", [path("10.0.0.9", local_pref=100, next_hop="1.1.1.1")])
    assert rib.best()[P].path.peer_address == "10.0.0.9"


def test_med_is_not_compared_across_neighbour_ases() -> None:
    # A (AS 65001, MED 50) and B (AS 65002, MED 10): both survive the MED step, ECMP over both.
    rib = rib_with(ebgp("10.0.0.2", 65001), ebgp("10.0.0.3", 65002))
    rib.update("10.0.0.2", [path("10.0.0.2", as_path=(65001,), med=50)])
    rib.update("10.0.0.3", [path("10.0.0.3", as_path=(65002,), med=10)])
    best = rib.best()[P]
    assert best.next_hops == ("10.0.0.2", "10.0.0.3")
    assert best.path.peer_address == "10.0.0.2"  # router id decides the single best


def test_deterministic_med_is_order_independent() -> None:
    # The classic non-transitive trio: pairwise comparison would depend on arrival order.
    paths = [
        path("10.0.0.2", as_path=(65001,), med=20, next_hop="10.1.0.2"),
        path("10.0.0.3", as_path=(65002,), med=5, next_hop="10.1.0.3"),
        path("10.0.0.4", as_path=(65001,), med=10, next_hop="10.1.0.4"),
    ]
    results = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]):
        best = select_best([paths[i] for i in order])
        assert best is not None
        results.add((best.path, best.next_hops))
    assert len(results) == 1
    (_, next_hops) = results.pop()
    assert next_hops == ("10.1.0.3", "10.1.0.4")  # MED 20 lost inside AS 65001 only


# ---------------------------------------------------------------- ECMP


def test_ecmp_equal_paths_give_multipath_next_hops() -> None:
    rib = rib_with(ibgp("10.0.0.3"), ibgp("10.0.0.2"), ibgp("10.0.0.4"))
    for peer in ("10.0.0.3", "10.0.0.2", "10.0.0.4"):
        rib.update(peer, [path(peer)])
    best = rib.best()[P]
    assert best.next_hops == ("10.0.0.2", "10.0.0.3", "10.0.0.4")
    assert best.path.peer_address == "10.0.0.2"
    assert len(best.paths) == 3


def test_ecmp_excludes_paths_that_lose_a_step() -> None:
    rib = rib_with(ibgp("10.0.0.2"), ibgp("10.0.0.3"), ibgp("10.0.0.4"))
    rib.update("10.0.0.2", [path("10.0.0.2", as_path=(65001,))])
    rib.update("10.0.0.3", [path("10.0.0.3", as_path=(65002,))])
    rib.update("10.0.0.4", [path("10.0.0.4", as_path=(65001, 65003))])
    assert rib.best()[P].next_hops == ("10.0.0.2", "10.0.0.3")


def test_ecmp_ebgp_paths_exclude_ibgp_paths() -> None:
    rib = rib_with(ebgp("10.0.0.2"), ibgp("10.0.0.3"))
    rib.update("10.0.0.2", [path("10.0.0.2", as_path=(65000,))])
    rib.update("10.0.0.3", [path("10.0.0.3", as_path=(65000,))])
    assert rib.best()[P].next_hops == ("10.0.0.2",)


def test_ecmp_same_next_hop_appears_once() -> None:
    rib = rib_with(ibgp("10.0.0.2"), ibgp("10.0.0.3"))
    rib.update("10.0.0.2", [path("10.0.0.2", next_hop="10.0.0.9")])
    rib.update("10.0.0.3", [path("10.0.0.3", next_hop="10.0.0.9")])
    assert rib.best()[P].next_hops == ("10.0.0.9",)


# ---------------------------------------------------------------- loop checks


def test_own_as_in_as_path_rejected_from_ebgp() -> None:
    rib = rib_with(ebgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2", as_path=(65000, LOCAL_AS))])
    assert rib.best() == {}
    assert rib.counters().rejected == {REJECT_AS_LOOP: 1}


def test_own_as_in_as_path_rejected_from_ibgp_too() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2", as_path=(65000, LOCAL_AS, 65001))])
    assert rib.best() == {}
    assert rib.counters().rejected == {REJECT_AS_LOOP: 1}


def test_own_router_id_as_originator_rejected() -> None:
    rib = rib_with(ibgp("10.0.0.2"), router_id="10.0.0.1")
    rib.update("10.0.0.2", [path("10.0.0.2", originator_id="10.0.0.1")])
    assert rib.best() == {}
    assert rib.counters().rejected == {REJECT_ORIGINATOR: 1}


def test_own_cluster_id_in_cluster_list_rejected() -> None:
    rib = rib_with(ibgp("10.0.0.2"), cluster_id="1.0.0.1")
    rib.update("10.0.0.2", [path("10.0.0.2", originator_id="10.0.0.7", cluster_list=("2.0.0.2", "1.0.0.1"))])
    assert rib.best() == {}
    assert rib.counters().rejected == {REJECT_CLUSTER_LOOP: 1}


def test_cluster_list_not_checked_without_cluster_id() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2", originator_id="10.0.0.7", cluster_list=("1.0.0.1",))])
    assert P in rib.best()


def test_rejected_replacement_removes_the_previous_path() -> None:
    rib = rib_with(ebgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2", as_path=(65000,))])
    assert P in rib.best()
    rib.update("10.0.0.2", [path("10.0.0.2", as_path=(65000, LOCAL_AS))])
    assert rib.best() == {}
    assert rib.adj_rib_in("10.0.0.2") == {}


# ---------------------------------------------------------------- updates and withdrawals


def test_withdraw_falls_back_to_next_best() -> None:
    rib = rib_with(ibgp("10.0.0.2"), ibgp("10.0.0.3"))
    rib.update("10.0.0.2", [path("10.0.0.2", local_pref=200)])
    rib.update("10.0.0.3", [path("10.0.0.3")])
    rib.update("10.0.0.2", withdraw=[P])
    assert rib.best()[P].path.peer_address == "10.0.0.3"
    rib.update("10.0.0.3", withdraw=[P])
    assert rib.best() == {}
    assert rib.counters().paths == 0


def test_withdraw_of_unknown_prefix_is_harmless() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", withdraw=["10.99.0.0/24"])
    assert rib.drain_changes() == {}


def test_new_path_from_same_peer_replaces_old() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2", next_hop="10.0.0.2")])
    rib.update("10.0.0.2", [path("10.0.0.2", next_hop="10.0.0.8")])
    assert rib.best()[P].next_hops == ("10.0.0.8",)
    assert rib.counters().paths == 1


def test_withdraw_and_announce_in_one_update_keeps_the_announcement() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2")], withdraw=[P])
    assert P in rib.best()


def test_prefixes_are_normalised() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2", prefix="10.65.0.5")])
    assert "10.65.0.5/32" in rib.best()
    rib.update("10.0.0.2", withdraw=["10.65.0.5/32"])
    assert rib.best() == {}


def test_session_facts_come_from_the_session_not_the_path() -> None:
    rib = rib_with(ebgp("10.0.0.2", 65000))
    rib.update("10.0.0.2", [Path(prefix=P, next_hop="10.0.0.2", as_path=(65000,), ibgp=True, stale=True)])
    best = rib.best()[P].path
    assert (best.peer_address, best.peer_as, best.ibgp, best.stale) == ("10.0.0.2", 65000, False, False)
    assert best.peer_router_id == "10.0.0.2"


def test_peer_down_without_graceful_restart_removes_its_paths() -> None:
    rib = rib_with(ibgp("10.0.0.2"), ibgp("10.0.0.3"))
    rib.update("10.0.0.2", [path("10.0.0.2"), path("10.0.0.2", prefix="10.65.1.0/26")])
    rib.update("10.0.0.3", [path("10.0.0.3", local_pref=50)])
    rib.drain_changes()
    rib.peer_down("10.0.0.2")
    changes = rib.drain_changes()
    assert changes["10.65.1.0/26"] is None
    assert changes[P] is not None and changes[P].path.peer_address == "10.0.0.3"
    assert rib.adj_rib_in("10.0.0.2") == {}


# ---------------------------------------------------------------- graceful restart (RFC 4724, receiving side)

V4 = "ipv4 unicast"
V6 = "ipv6 unicast"
P6 = "fd00:65::/122"


def gr_cap(restart_time: int = 120, **families: bool) -> GracefulRestart:
    """A capability listing families given as v4=True (F bit set) / v6=False (F bit clear)."""
    names = {"v4": V4, "v6": V6}
    return GracefulRestart(restart_time, tuple(sorted((names[k], f) for k, f in families.items())))


def gr_rib(cap: GracefulRestart | None = None, peer: str = "10.0.0.2") -> Rib:
    """One iBGP peer that negotiated `cap` (default: 120 s, IPv4 with F set) and sent two v4 paths."""
    rib = Rib(LOCAL_AS, "10.0.0.1")
    rib.peer_open(peer, peer, gr_cap(v4=True) if cap is None else cap)
    rib.peer_up(ibgp(peer))
    rib.update(peer, [path(peer), path(peer, prefix="10.65.1.0/26")])
    return rib


def reconnect(rib: Rib, cap: GracefulRestart | None, peer: str = "10.0.0.2", router_id: str = "") -> None:
    rib.peer_open(peer, router_id or peer, cap)
    rib.peer_up(ibgp(peer))


def test_graceful_down_keeps_paths_stale_and_routes_programmed() -> None:
    rib = gr_rib()
    rib.drain_changes()
    rib.peer_down("10.0.0.2", now=1000.0)
    assert set(rib.best()) == {P, "10.65.1.0/26"}
    assert all(p.stale for p in rib.adj_rib_in("10.0.0.2").values())
    assert rib.stale_deadline("10.0.0.2") == 1120.0
    assert rib.next_deadline() == 1120.0
    assert rib.counters().stale_per_peer == {"10.0.0.2": 2}
    # next hops did not change: the route programmer has nothing to redo beyond attributes
    assert all(c is not None and c.next_hops == ("10.0.0.2",) for c in rib.drain_changes().values())


def test_peer_without_graceful_restart_capability_loses_its_paths_at_once() -> None:
    # the critical defect: a router that never negotiated GR was kept stale for our own restart time
    rib = Rib(LOCAL_AS, "10.0.0.1")
    rib.peer_open("10.0.0.2", "10.0.0.2", None)
    rib.peer_up(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2")])
    rib.peer_down("10.0.0.2", now=0.0)
    assert rib.best() == {} and rib.next_deadline() is None


def test_peer_never_seen_opening_is_treated_as_without_capability() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2")])
    rib.peer_down("10.0.0.2", now=0.0)
    assert rib.best() == {}


def test_helper_only_capability_without_tuples_loses_its_paths_at_once() -> None:
    # FRR's default: a GR capability with a restart time but no <AFI, SAFI> (it keeps no forwarding state)
    rib = gr_rib(GracefulRestart(120, ()))
    rib.peer_down("10.0.0.2", now=0.0)
    assert rib.best() == {} and rib.next_deadline() is None


def test_zero_restart_time_loses_its_paths_at_once() -> None:
    rib = gr_rib(gr_cap(0, v4=True))
    rib.peer_down("10.0.0.2", now=0.0)
    assert rib.best() == {}


def test_only_families_listed_in_the_capability_are_kept() -> None:
    rib = gr_rib(gr_cap(v4=True))
    rib.update("10.0.0.2", [path("10.0.0.2", prefix=P6, next_hop="fd00::2")])
    rib.peer_down("10.0.0.2", now=0.0)
    assert set(rib.best()) == {P, "10.65.1.0/26"}


def test_stale_for_the_peers_restart_time_not_ours() -> None:
    rib = gr_rib(gr_cap(7, v4=True))
    rib.peer_down("10.0.0.2", now=1000.0)
    assert rib.stale_deadline("10.0.0.2") == 1007.0
    assert rib.sweep_expired(now=1006.9) == []
    assert rib.sweep_expired(now=1007.0) == ["10.0.0.2"]
    assert rib.best() == {}


def test_reconnect_with_f_bit_clear_flushes_that_family_at_once() -> None:
    rib = gr_rib(gr_cap(v4=True, v6=True))
    rib.update("10.0.0.2", [path("10.0.0.2", prefix=P6, next_hop="fd00::2")])
    rib.peer_down("10.0.0.2", now=0.0)
    reconnect(rib, gr_cap(v4=False, v6=True))
    assert set(rib.best()) == {P6}
    assert rib.adj_rib_in("10.0.0.2")[P6].stale


def test_reconnect_with_family_missing_flushes_that_family_at_once() -> None:
    rib = gr_rib(gr_cap(v4=True, v6=True))
    rib.update("10.0.0.2", [path("10.0.0.2", prefix=P6, next_hop="fd00::2")])
    rib.peer_down("10.0.0.2", now=0.0)
    reconnect(rib, gr_cap(v6=True))
    assert set(rib.best()) == {P6}


def test_reconnect_without_capability_flushes_everything_stale() -> None:
    rib = gr_rib()
    rib.peer_down("10.0.0.2", now=0.0)
    reconnect(rib, None)
    assert rib.best() == {} and rib.next_deadline() is None


def test_graceful_restart_refresh_then_eor_sweeps_only_unrefreshed() -> None:
    rib = gr_rib()
    rib.peer_down("10.0.0.2", now=1000.0)
    reconnect(rib, gr_cap(v4=True))
    rib.update("10.0.0.2", [path("10.0.0.2")])
    assert not rib.adj_rib_in("10.0.0.2")[P].stale
    rib.drain_changes()
    rib.end_of_rib("10.0.0.2", V4)
    assert set(rib.best()) == {P}
    assert rib.drain_changes() == {"10.65.1.0/26": None}
    assert rib.stale_deadline("10.0.0.2") is None


def test_end_of_rib_sweeps_only_its_family() -> None:
    rib = gr_rib(gr_cap(v4=True, v6=True))
    rib.update("10.0.0.2", [path("10.0.0.2", prefix=P6, next_hop="fd00::2")])
    rib.peer_down("10.0.0.2", now=0.0)
    reconnect(rib, gr_cap(v4=True, v6=True))
    rib.end_of_rib("10.0.0.2", V6)
    assert set(rib.best()) == {P, "10.65.1.0/26"}
    assert rib.stale_deadline("10.0.0.2") == 120.0
    rib.end_of_rib("10.0.0.2", V4)
    assert rib.best() == {} and rib.stale_deadline("10.0.0.2") is None


def test_graceful_restart_expiry_sweeps_stale_paths() -> None:
    rib = gr_rib()
    rib.peer_down("10.0.0.2", now=1000.0)
    assert rib.sweep_expired(now=1119.0) == []
    assert len(rib.best()) == 2
    assert rib.sweep_expired(now=1120.0) == ["10.0.0.2"]
    assert rib.best() == {}
    assert rib.next_deadline() is None


def test_repeated_flaps_without_end_of_rib_do_not_push_the_deadline_out() -> None:
    rib = gr_rib()
    rib.peer_down("10.0.0.2", now=1000.0)
    for t in (1030.0, 1060.0, 1090.0):
        reconnect(rib, gr_cap(v4=True))
        rib.update("10.0.0.2", [path("10.0.0.2", prefix="10.65.2.0/26")])  # a fresh path, never an EoR
        rib.peer_down("10.0.0.2", now=t)
        assert rib.stale_deadline("10.0.0.2") == 1120.0
    assert rib.sweep_expired(now=1119.0) == []
    assert rib.sweep_expired(now=1120.0) == ["10.0.0.2"]
    assert rib.best() == {}


def test_a_new_loss_after_end_of_rib_starts_a_new_restart_time() -> None:
    rib = gr_rib()
    rib.peer_down("10.0.0.2", now=1000.0)
    reconnect(rib, gr_cap(v4=True))
    rib.update("10.0.0.2", [path("10.0.0.2")])
    rib.end_of_rib("10.0.0.2", V4)
    rib.peer_down("10.0.0.2", now=2000.0)
    assert rib.stale_deadline("10.0.0.2") == 2120.0


def test_peer_up_without_a_new_open_keeps_the_capability_and_stale_paths() -> None:
    # the agent re-registers an up session whose spec changed: no OPEN, no re-establishment
    rib = gr_rib()
    rib.peer_up(ibgp("10.0.0.2", rr_client=True))
    rib.peer_down("10.0.0.2", now=0.0)
    assert len(rib.best()) == 2


def test_local_speaker_restart_keeps_every_family_for_our_restart_time() -> None:
    # our ExaBGP went away (not the peer): we are the restarting side and keep forwarding state
    rib = rib_with(ibgp("10.0.0.2"))  # no OPEN seen
    rib.update("10.0.0.2", [path("10.0.0.2")])
    rib.peer_down("10.0.0.2", local_restart_time=30, now=0.0)
    assert set(rib.best()) == {P} and rib.stale_deadline("10.0.0.2") == 30.0


def test_router_id_comes_from_the_open() -> None:
    rib = Rib(LOCAL_AS, "10.0.0.1")
    rib.peer_open("10.0.0.2", "192.0.2.99", None)
    rib.peer_up(ebgp("10.0.0.2"), router_id="")
    rib.update("10.0.0.2", [path("10.0.0.2")])
    assert rib.best()[P].path.peer_router_id == "192.0.2.99"


def test_forget_peer_drops_stale_paths_too() -> None:
    rib = gr_rib()
    rib.peer_down("10.0.0.2", now=0.0)
    rib.forget_peer("10.0.0.2")
    assert rib.best() == {}
    assert rib.next_deadline() is None


def test_stale_path_loses_nothing_in_the_decision() -> None:
    # A stale path keeps forwarding (RFC 4724: that is the point of graceful restart) and still competes,
    # also inside the ECMP set.
    rib = gr_rib(peer="10.0.0.2")
    rib.peer_up(ibgp("10.0.0.3"))
    rib.update("10.0.0.3", [path("10.0.0.3")])
    rib.peer_down("10.0.0.2", now=0.0)
    assert rib.best()[P].next_hops == ("10.0.0.2", "10.0.0.3")


# ---------------------------------------------------------------- change feed and counters


def test_drain_changes_reports_net_differences_only() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2")])
    first = rib.drain_changes()
    assert list(first) == [P] and first[P] is not None
    assert rib.drain_changes() == {}
    rib.update("10.0.0.2", withdraw=[P])
    rib.update("10.0.0.2", [path("10.0.0.2")])
    assert rib.drain_changes() == {}  # changed and changed back


def test_counters() -> None:
    rib = rib_with(ibgp("10.0.0.2"), ebgp("10.0.0.3"))
    rib.update("10.0.0.2", [path("10.0.0.2"), path("10.0.0.2", prefix="10.65.1.0/26")])
    rib.update(
        "10.0.0.3", [path("10.0.0.3", as_path=(65000,)), path("10.0.0.3", prefix="10.7.0.0/16", as_path=(1, LOCAL_AS))]
    )
    c = rib.counters()
    assert c.paths_per_peer == {"10.0.0.2": 2, "10.0.0.3": 1}
    assert c.rejected == {REJECT_AS_LOOP: 1}
    assert (c.prefixes, c.paths) == (2, 3)
    assert [p.peer_address for p in rib.paths(P)] == ["10.0.0.2", "10.0.0.3"]
    assert rib.best_for("10.65.1.0/26") is not None


# ---------------------------------------------------------------- decision process fixes (issue 11)


def test_unresolvable_next_hop_is_excluded_before_best_path() -> None:
    # the better path (LOCAL_PREF 200) has a next hop the node cannot reach: the usable one wins,
    # instead of the prefix getting a best route the dataplane then drops
    check = next_hop_check(["10.0.0.1/24"])
    rib = Rib(LOCAL_AS, "10.0.0.1", next_hop_ok=check)
    for peer in ("10.0.0.2", "10.0.0.3"):
        rib.peer_up(ibgp(peer), router_id=peer)
    rib.update("10.0.0.2", [path("10.0.0.2", local_pref=200, next_hop="192.0.2.7")])
    rib.update("10.0.0.3", [path("10.0.0.3")])
    assert rib.best()[P].path.peer_address == "10.0.0.3"
    assert rib.best()[P].next_hops == ("10.0.0.3",)


def test_no_usable_next_hop_means_no_route_and_a_new_check_re_evaluates() -> None:
    rib = Rib(LOCAL_AS, "10.0.0.1", next_hop_ok=next_hop_check(["10.0.0.1/24"]))
    rib.peer_up(ibgp("10.0.0.2"), router_id="10.0.0.2")
    rib.update("10.0.0.2", [path("10.0.0.2", next_hop="192.0.2.7")])
    assert rib.best() == {}
    rib.drain_changes()
    assert rib.has_next_hop_check
    rib.set_next_hop_check(next_hop_check(["10.0.0.1/24"], ipip_pools=["10.65.0.0/16"]))  # IPIP: via tunl0
    assert rib.drain_changes()[P] is not None


def test_next_hop_check_follows_the_route_programmer() -> None:
    check = next_hop_check(["10.0.0.1/24", "fd00::1/64"], ipip_pools=["10.65.0.0/16"])
    assert check("198.51.100.0/24", "10.0.0.9")  # on the subnet
    assert not check("198.51.100.0/24", "10.9.0.9")  # not on it, not an IPIP pool
    assert check("10.65.1.0/26", "10.9.0.9")  # IPIP pool: any IPv4 node address via tunl0 onlink
    assert check("fd00:65::/122", "fd00::9") and not check("fd00:65::/122", "fd01::9")
    assert not check("10.65.1.0/26", "not-an-address")


def test_ebgp_local_pref_is_ignored() -> None:
    # LOCAL_PREF 50 from an eBGP peer would lose to the iBGP path's 100; ignored, it is the default 100
    # and eBGP-over-iBGP picks it (RFC 4271 5.1.5)
    rib = rib_with(ebgp("10.0.0.2"), ibgp("10.0.0.3"))
    rib.update("10.0.0.2", [path("10.0.0.2", local_pref=50)])
    rib.update("10.0.0.3", [path("10.0.0.3")])
    best = rib.best()[P].path
    assert best.peer_address == "10.0.0.2" and best.local_pref is None


def test_ebgp_originator_id_and_cluster_list_are_discarded() -> None:
    # kept, ORIGINATOR_ID = our router id would drop the path as a reflection loop (RFC 7606 7.9, 7.10)
    rib = rib_with(ebgp("10.0.0.2"), router_id="10.0.0.1", cluster_id="10.0.0.1")
    rib.update("10.0.0.2", [path("10.0.0.2", originator_id="10.0.0.1", cluster_list=("10.0.0.1",))])
    best = rib.best()[P].path
    assert best.originator_id is None and best.cluster_list == ()
    assert rib.counters().rejected == {}


def test_ibgp_keeps_local_pref_and_reflection_attributes() -> None:
    rib = rib_with(ibgp("10.0.0.2"))
    rib.update("10.0.0.2", [path("10.0.0.2", local_pref=300, originator_id="10.0.0.7", cluster_list=("1.1.1.1",))])
    best = rib.best()[P].path
    assert (best.local_pref, best.originator_id, best.cluster_list) == (300, "10.0.0.7", ("1.1.1.1",))


def seg(*parts: tuple[str, tuple[int, ...]]) -> dict[str, object]:
    flat = tuple(a for _, ases in parts for a in ases)
    return {"as_path": flat, "as_path_segments": parts}


def test_as_set_counts_one() -> None:
    short = seg((AS_SEQUENCE, (65001,)), (AS_SET, (1, 2, 3)))  # length 2
    long = seg((AS_SEQUENCE, (65001, 65002, 65003)),)  # length 3
    rib = rib_with(ebgp("10.0.0.2", 65001), ebgp("10.0.0.3", 65001))
    rib.update("10.0.0.2", [path("10.0.0.2", **short)])
    rib.update("10.0.0.3", [path("10.0.0.3", **long)])
    assert rib.best()[P].path.peer_address == "10.0.0.2"


def test_confederation_segments_count_zero() -> None:
    confed = seg((AS_CONFED_SEQUENCE, (64601, 64602, 64603)), (AS_SEQUENCE, (65001,)))  # length 1
    plain = seg((AS_SEQUENCE, (65001, 65002)),)
    rib = rib_with(ebgp("10.0.0.2", 65001), ebgp("10.0.0.3", 65001))
    rib.update("10.0.0.2", [path("10.0.0.2", **plain)])
    rib.update("10.0.0.3", [path("10.0.0.3", **confed)])
    assert rib.best()[P].path.peer_address == "10.0.0.3"


@given(
    st.lists(
        st.tuples(
            st.sampled_from([AS_SEQUENCE, AS_SET, AS_CONFED_SEQUENCE, AS_CONFED_SET]),
            st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=5).map(tuple),
        ),
        max_size=5,
    )
)
def test_path_length_rule(segments: list[tuple[str, tuple[int, ...]]]) -> None:
    p = Path(prefix=P, next_hop="10.0.0.2", **seg(*segments))  # type: ignore[arg-type]
    expected = sum(len(a) for k, a in segments if k == AS_SEQUENCE) + sum(1 for k, _ in segments if k == AS_SET)
    assert p.path_length == expected


def test_as_set_is_preserved_when_reflected() -> None:
    rib = rib_with(ibgp("10.0.0.2", rr_client=True), ibgp("10.0.0.3", rr_client=True), cluster_id="10.0.0.1")
    segments = ((AS_SEQUENCE, (65001,)), (AS_SET, (1, 2)))
    rib.update("10.0.0.2", [path("10.0.0.2", **seg(*segments))])
    ((target, ann),) = rib.reflect(rib.drain_changes())
    assert target == "10.0.0.3" and ann.as_path_segments == segments
    assert "as-path [ 65001 ] ( 1 2 )" in format_announce(ann, target)


def test_reflector_does_not_reflect_what_it_originates() -> None:
    rib = rib_with(ibgp("10.0.0.2", rr_client=True), ibgp("10.0.0.3", rr_client=True), cluster_id="10.0.0.1")
    rib.update("10.0.0.2", [path("10.0.0.2")])
    assert [t for t, _ in rib.reflect(rib.drain_changes())] == ["10.0.0.3"]
    # the reflector now announces P itself (say a service CIDR every node announces): the reflected
    # copy is withdrawn, never sent beside it
    assert rib.set_originated([P]) == [("10.0.0.3", Announcement(prefix=P, withdraw=True))]
    rib.update("10.0.0.2", [path("10.0.0.2", med=5)])
    assert rib.reflect(rib.drain_changes()) == []
    assert rib.reflect_to("10.0.0.3") == []
    # and reflected again once it stops originating it
    assert [t for t, a in rib.set_originated([]) if not a.withdraw] == ["10.0.0.3"]


def test_num_allowed_local_as_numbers_lets_our_as_through_that_often() -> None:
    # Calico's "all nodes in one AS, eBGP to the ToR, mesh off": node B's block comes back from the ToR
    # as AS_PATH (65000, 64512); with numAllowedLocalASNumbers 1 it is learned, a second copy of our AS is not
    tor = PeerSpec(address="10.0.0.254", peer_as=65000, local_as=LOCAL_AS, type=GLOBAL, name="tor",
                   allowed_local_as=1)
    rib = rib_with(tor, ebgp("10.0.0.253"))
    rib.update("10.0.0.254", [path("10.0.0.254", as_path=(65000, LOCAL_AS))])
    rib.update("10.0.0.254", [path("10.0.0.254", prefix="10.65.9.0/26", as_path=(65000, LOCAL_AS, 1, LOCAL_AS))])
    rib.update("10.0.0.253", [path("10.0.0.253", prefix="10.65.8.0/26", as_path=(65000, LOCAL_AS))])
    assert set(rib.best()) == {P}
    assert rib.counters().rejected == {REJECT_AS_LOOP: 2}


def test_bfd_down_flushes_even_a_graceful_restart_peer() -> None:
    rib = gr_rib()
    rib.peer_down("10.0.0.2", forwarding_lost=True, now=0.0)
    assert rib.best() == {} and rib.next_deadline() is None
