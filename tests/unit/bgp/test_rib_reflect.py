"""Route reflection (RFC 4456): who hears a route, with which attributes, and withdrawals when that changes."""

from __future__ import annotations

from bgp.rib import REJECT_CLUSTER_LOOP, Rib
from bgp.types import GLOBAL, NODE_SPECIFIC, Announcement, Path, PeerSpec

AS = 64512
CLUSTER = "224.0.0.1"
RR_ID = "10.0.0.10"
P = "10.65.0.0/26"
C1, C2, C3, RR2, TOR = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.11", "192.168.1.1"


def spec(address: str, client: bool = False, asn: int = AS) -> PeerSpec:
    return PeerSpec(
        address=address,
        peer_as=asn,
        local_as=AS,
        type=NODE_SPECIFIC if asn == AS else GLOBAL,
        name=address,
        route_reflector_client=client,
    )


def reflector() -> Rib:
    rib = Rib(AS, RR_ID, CLUSTER)
    for address in (C1, C2, C3):
        rib.peer_up(spec(address, client=True), router_id=address)
    rib.peer_up(spec(RR2), router_id=RR2)
    rib.peer_up(spec(TOR, asn=65000), router_id="192.168.255.1")
    return rib


def step(rib: Rib) -> list[tuple[str, Announcement]]:
    return rib.reflect(rib.drain_changes())


def targets(sent: list[tuple[str, Announcement]], withdraw: bool = False) -> set[str]:
    return {t for t, a in sent if a.withdraw is withdraw}


def test_from_a_client_to_other_clients_and_non_clients() -> None:
    rib = reflector()
    rib.update(C1, [Path(prefix=P, next_hop=C1, local_pref=150, communities=("64512:1",))])
    sent = step(rib)
    assert targets(sent) == {C2, C3, RR2}
    ann = sent[0][1]
    assert ann == Announcement(
        prefix=P,
        next_hop=C1,  # the original next hop, not the reflector
        communities=("64512:1",),
        local_pref=150,
        originator_id=C1,  # absent before: the client's router id
        cluster_list=(CLUSTER,),
    )


def test_from_a_non_client_to_clients_only() -> None:
    rib = reflector()
    rib.update(RR2, [Path(prefix=P, next_hop="10.0.0.7", originator_id="10.0.0.7", cluster_list=("224.0.0.2",))])
    sent = step(rib)
    assert targets(sent) == {C1, C2, C3}
    ann = sent[0][1]
    assert ann.originator_id == "10.0.0.7"  # kept
    assert ann.cluster_list == (CLUSTER, "224.0.0.2")  # own cluster id prepended
    assert ann.next_hop == "10.0.0.7"


def test_from_ebgp_to_every_ibgp_peer_without_reflection_attributes() -> None:
    rib = reflector()
    rib.update(TOR, [Path(prefix="0.0.0.0/0", next_hop=TOR, as_path=(65000,))])
    sent = step(rib)
    assert targets(sent) == {C1, C2, C3, RR2}
    ann = sent[0][1]
    assert (ann.originator_id, ann.cluster_list, ann.next_hop, ann.as_path) == (None, (), TOR, (65000,))


def test_originator_is_excluded() -> None:
    rib = reflector()
    # C2's route reflected by another reflector comes back through RR2: C2 must not get its own route
    rib.update(RR2, [Path(prefix=P, next_hop=C2, originator_id=C2, cluster_list=("224.0.0.2",))])
    assert targets(step(rib)) == {C1, C3}


def test_own_cluster_in_cluster_list_is_dropped_not_reflected() -> None:
    rib = reflector()
    rib.update(RR2, [Path(prefix=P, next_hop="10.0.0.7", originator_id="10.0.0.7", cluster_list=(CLUSTER,))])
    assert step(rib) == []
    assert rib.counters().rejected == {REJECT_CLUSTER_LOOP: 1}


def test_withdraw_reaches_every_target() -> None:
    rib = reflector()
    rib.update(C1, [Path(prefix=P, next_hop=C1)])
    step(rib)
    rib.update(C1, withdraw=[P])
    sent = step(rib)
    assert targets(sent, withdraw=True) == {C2, C3, RR2}
    assert targets(sent) == set()


def test_target_set_change_withdraws_from_peers_that_drop_out() -> None:
    rib = reflector()
    rib.update(C1, [Path(prefix=P, next_hop=C1)])
    assert targets(step(rib)) == {C2, C3, RR2}
    # a better path from the non-client RR2: clients only; RR2 must lose the route it had from us
    rib.update(RR2, [Path(prefix=P, next_hop="10.0.0.7", local_pref=200, originator_id="10.0.0.7")])
    sent = step(rib)
    assert targets(sent, withdraw=True) == {RR2}
    assert targets(sent) == {C1, C2, C3}


def test_unchanged_announcement_is_not_resent() -> None:
    rib = reflector()
    rib.update(C1, [Path(prefix=P, next_hop=C1)])
    step(rib)
    rib.update(C2, [Path(prefix=P, next_hop=C2)])  # joins the ECMP set; C1 stays the best path
    changes = rib.drain_changes()
    assert list(changes) == [P]  # the route programmer gets a second next hop...
    assert rib.reflect(changes) == []  # ...but the reflected best path is the same for every target


def test_down_peers_get_nothing_and_a_new_session_gets_the_full_table() -> None:
    rib = reflector()
    rib.peer_down(C3)
    rib.update(C1, [Path(prefix=P, next_hop=C1), Path(prefix="10.65.1.0/26", next_hop=C1)])
    assert C3 not in targets(step(rib))
    rib.peer_up(spec(C3, client=True), router_id=C3)
    assert [a.prefix for a in rib.reflect_to(C3)] == [P, "10.65.1.0/26"]
    rib.update(C1, withdraw=[P])
    assert C3 in targets(step(rib), withdraw=True)


def test_session_loss_forgets_what_was_sent() -> None:
    rib = reflector()
    rib.update(C1, [Path(prefix=P, next_hop=C1)])
    step(rib)
    rib.peer_down(C2)
    rib.update(C1, withdraw=[P])
    assert C2 not in targets(step(rib), withdraw=True)


def test_not_a_reflector_reflects_nothing() -> None:
    rib = Rib(AS, "10.0.0.1")
    rib.peer_up(spec(C2), router_id=C2)
    rib.peer_up(spec(C3), router_id=C3)
    rib.update(C2, [Path(prefix=P, next_hop=C2)])
    assert step(rib) == []


def test_reflect_all_after_a_peer_stops_being_a_client() -> None:
    rib = reflector()
    rib.update(RR2, [Path(prefix=P, next_hop="10.0.0.7", originator_id="10.0.0.7")])
    assert targets(step(rib)) == {C1, C2, C3}
    rib.peer_up(spec(C3, client=False), router_id=C3)  # reconfigured: C3 is a non-client now
    sent = rib.reflect_all()
    assert sent == [(C3, Announcement(prefix=P, withdraw=True))]
    assert rib.reflect_all() == []
