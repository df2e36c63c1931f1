"""BGPFilter: the kind's validation, rule matching (first match decides, default Accept), and the RIB
applying import filters (with soft reconfiguration) and export filters on reflection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp.filters import RouteFilter, compile_filters
from bgp.peers import compute_peers
from bgp.rib import REJECT_FILTERED, Rib
from bgp.types import GLOBAL, MESH, Path, PeerSpec
from datamodel.resources import BGPFilter, BGPPeer, Node, ResourceError, parse_documents

LOCAL_AS = 64512


def bgp_filter(name: str, **spec: object) -> BGPFilter:
    return BGPFilter(metadata={"name": name}, spec=spec)


def compiled(**spec: object) -> RouteFilter:
    flt = compile_filters(["f"], {"f": bgp_filter("f", **spec)})
    assert flt is not None
    return flt


def test_the_kind_parses_calicos_sample_and_names_bad_fields() -> None:
    text = """apiVersion: projectcalico.org/v3
kind: BGPFilter
metadata:
  name: my-filter
spec:
  importV4:
    - action: Accept
      matchOperator: In
      cidr: 55.0.0.0/16
      prefixLength:
        min: 30
    - action: Reject
  exportV6:
    - action: Reject
      source: RemotePeers
"""
    (res,) = parse_documents(text, "t")
    assert isinstance(res, BGPFilter) and res.spec.importV4 and res.spec.importV4[0].prefixLength
    bad = text.replace("55.0.0.0/16", "5000::/64").replace("action: Reject\n  export", "action: Drop\n  export")
    with pytest.raises(ResourceError) as err:
        parse_documents(bad, "t")
    assert "spec.importV4[0].cidr: must be an IPv4 network" in str(err.value)
    assert "spec.importV4[1].action" in str(err.value)
    with pytest.raises(ResourceError, match="cidr and matchOperator go together"):
        parse_documents(text.replace("      matchOperator: In\n", ""), "t")


@pytest.mark.parametrize(
    ("operator", "prefix", "matched"),
    [
        ("Equal", "10.1.0.0/16", True),
        ("Equal", "10.1.2.0/24", False),
        ("NotEqual", "10.1.2.0/24", True),
        ("In", "10.1.2.0/24", True),
        ("In", "10.1.0.0/16", True),
        ("In", "10.2.0.0/24", False),
        ("NotIn", "10.2.0.0/24", True),
        ("NotIn", "10.1.2.0/24", False),
    ],
)
def test_match_operators(operator: str, prefix: str, matched: bool) -> None:
    flt = compiled(importV4=[{"action": "Reject", "cidr": "10.1.0.0/16", "matchOperator": operator}])
    assert flt.accepts_import(prefix) is not matched


def test_prefix_length_bounds_and_first_match_wins() -> None:
    flt = compiled(
        importV4=[
            {"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In", "prefixLength": {"min": 24, "max": 26}},
            {"action": "Reject", "cidr": "10.0.0.0/8", "matchOperator": "In"},
        ]
    )
    assert flt.accepts_import("10.9.9.0/24") and flt.accepts_import("10.9.9.64/26")
    assert not flt.accepts_import("10.9.0.0/16") and not flt.accepts_import("10.9.9.9/32")
    assert flt.accepts_import("192.0.2.0/24")  # no rule matches: Accept


def test_families_source_and_missing_filters() -> None:
    flt = compiled(exportV4=[{"action": "Reject", "source": "RemotePeers"}], importV6=[{"action": "Reject"}])
    assert flt.accepts_export("10.65.0.0/26") and not flt.accepts_export("10.65.0.0/26", remote=True)
    assert not flt.accepts_import("fd00::/64") and flt.accepts_import("10.0.0.0/24")
    missing = compile_filters(["nope"], {})
    assert missing is not None and not missing.accepts_import("10.0.0.0/24")
    assert not missing.accepts_export("10.0.0.0/24")
    assert compile_filters([], {}) is None and compile_filters(None, {}) is None


def test_filters_are_evaluated_in_the_peers_order() -> None:
    a = bgp_filter("a", importV4=[{"action": "Accept", "cidr": "10.1.0.0/16", "matchOperator": "Equal"}])
    b = bgp_filter("b", importV4=[{"action": "Reject"}])
    ab = compile_filters(["a", "b"], {"a": a, "b": b})
    ba = compile_filters(["b", "a"], {"a": a, "b": b})
    assert ab is not None and ab.accepts_import("10.1.0.0/16") and not ab.accepts_import("10.2.0.0/16")
    assert ba is not None and not ba.accepts_import("10.1.0.0/16")


@given(st.integers(0, 32), st.integers(0, 32), st.integers(8, 32))
def test_in_and_not_in_are_complements(lo: int, hi: int, length: int) -> None:
    rule = {"cidr": "10.0.0.0/8", "prefixLength": {"min": min(lo, hi), "max": max(lo, hi)}}
    flt_in = compiled(importV4=[{"action": "Reject", "matchOperator": "In", **rule}])
    flt_out = compiled(importV4=[{"action": "Reject", "matchOperator": "NotIn", **rule}])
    prefix = f"10.0.0.0/{length}"
    assert flt_in.accepts_import(prefix) != flt_out.accepts_import(prefix)


def test_compute_peers_compiles_the_peers_filters() -> None:
    node = Node(metadata={"name": "n1"}, spec={"bgp": {"ipv4Address": "10.0.0.1/24"}})
    tor = BGPPeer(metadata={"name": "tor"}, spec={"peerIP": "10.0.0.254", "asNumber": 65000, "filters": ["f"]})
    flt = bgp_filter("f", importV4=[{"action": "Reject"}])
    (spec,) = compute_peers(node, [node], None, [tor], bgp_filters=[flt])
    assert spec.route_filter is not None and not spec.route_filter.accepts_import("10.9.0.0/24")


# ---------------------------------------------------------------- in the RIB

P = "198.51.100.0/24"


def tor(route_filter: RouteFilter | None) -> PeerSpec:
    return PeerSpec(address="10.0.0.254", peer_as=65000, local_as=LOCAL_AS, type=GLOBAL, name="tor",
                    route_filter=route_filter)


def test_import_reject_keeps_the_prefix_out_and_a_filter_change_brings_it_back() -> None:
    rib = Rib(LOCAL_AS, "10.0.0.1")
    rib.peer_up(tor(compiled(importV4=[{"action": "Reject", "cidr": P, "matchOperator": "Equal"}])))
    rib.update("10.0.0.254", [Path(prefix=P, next_hop="10.0.0.254", as_path=(65000,)),
                              Path(prefix="203.0.113.0/24", next_hop="10.0.0.254", as_path=(65000,))])
    assert set(rib.best()) == {"203.0.113.0/24"}
    assert rib.counters().rejected == {REJECT_FILTERED: 1}
    rib.drain_changes()
    rib.peer_up(tor(None))  # the filter was removed from the BGPPeer: no ROUTE-REFRESH needed
    assert set(rib.drain_changes()) == {P}
    rib.peer_up(tor(compiled(importV4=[{"action": "Reject"}])))
    assert rib.best() == {}
    rib.update("10.0.0.254", withdraw=[P])
    rib.peer_up(tor(None))
    assert set(rib.best()) == {"203.0.113.0/24"}  # the withdrawn one stays gone


def test_export_reject_keeps_a_reflected_route_from_that_client() -> None:
    def client(address: str, flt: RouteFilter | None = None) -> PeerSpec:
        return PeerSpec(address=address, peer_as=LOCAL_AS, local_as=LOCAL_AS, type=MESH, name=address,
                        route_reflector_client=True, route_filter=flt)

    rib = Rib(LOCAL_AS, "10.0.0.1", cluster_id="10.0.0.1")
    rib.peer_up(client("10.0.0.2"), router_id="10.0.0.2")
    rib.peer_up(client("10.0.0.3", compiled(exportV4=[{"action": "Reject", "source": "RemotePeers"}])),
                router_id="10.0.0.3")
    rib.peer_up(client("10.0.0.4"), router_id="10.0.0.4")
    rib.update("10.0.0.2", [Path(prefix=P, next_hop="10.0.0.2")])
    assert [t for t, _ in rib.reflect(rib.drain_changes())] == ["10.0.0.4"]
