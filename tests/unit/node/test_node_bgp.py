"""Pure parts of the agent's BGP wiring: which routes each backend programs, the backend setting, the
`tabbyctl node status` table and the Prometheus text."""

from __future__ import annotations

import pytest

from controller.cli.node import render_status, render_table
from controller.node.bgp import backend_inputs, disabled_status, metrics_text
from controller.node.config import NodeConfig, NodeConfigError
from felix_like.routes import (
    BlockInfo,
    BorrowedIP,
    EncapMode,
    LearnedRoute,
    LocalNodeInfo,
    PoolInfo,
    RemoteNodeInfo,
    RouteInputs,
    calculate_routes,
)


def _inputs() -> RouteInputs:
    return RouteInputs(
        local_node=LocalNodeInfo("a", "10.0.0.1/24", "eth0"),
        pools=(PoolInfo("10.1.0.0/16"), PoolInfo("10.2.0.0/16", vxlan_mode=EncapMode.ALWAYS),
               PoolInfo("10.3.0.0/16", ipip_mode=EncapMode.ALWAYS)),
        blocks=(BlockInfo("10.1.0.0/26", "a"), BlockInfo("10.1.0.64/26", "b"), BlockInfo("10.2.0.0/26", "b"),
                BlockInfo("10.3.0.0/26", "b")),
        remote_nodes=(RemoteNodeInfo("b", "10.0.0.2/24", vxlan_tunnel_address="10.2.255.1"),),
        borrowed=(BorrowedIP("10.1.0.5", "b"), BorrowedIP("10.2.0.70", "c")),
    )


def _dsts(inputs: RouteInputs) -> dict[str, str]:
    return {r.dst: f"{r.type} {r.gateway} {r.oif}" for r in calculate_routes(inputs)}


def test_vxlan_backend_is_datastore_driven() -> None:
    assert backend_inputs(_inputs(), "vxlan", (LearnedRoute("10.9.0.0/24", "10.0.0.9"),)) == _inputs()


def test_bird_backend_routes_native_and_ipip_only_from_bgp() -> None:
    learned = (LearnedRoute("10.1.0.64/26", "10.0.0.2"), LearnedRoute("10.3.0.0/26", "10.0.0.2"))
    got = backend_inputs(_inputs(), "bird", learned)
    assert [b.cidr for b in got.blocks] == ["10.1.0.0/26", "10.2.0.0/26"]  # own + VXLAN pool
    assert [b.ip for b in got.borrowed] == ["10.2.0.70"]
    routes = _dsts(got)
    assert routes["10.1.0.64/26"] == "unicast 10.0.0.2 eth0"
    assert routes["10.3.0.0/26"] == "unicast 10.0.0.2 tunl0"  # IPIP pool: via tunl0 onlink, as BIRD
    assert routes["10.2.0.0/26"] == "unicast 10.2.255.1 vxlan.tabby"
    assert routes["10.1.0.0/26"].startswith("blackhole")
    # without BGP the native remote block is simply absent (no datastore fallback in this mode)
    assert "10.1.0.64/26" not in _dsts(backend_inputs(_inputs(), "bird", ()))


def test_none_backend_has_no_inter_node_routes() -> None:
    got = backend_inputs(_inputs(), "none", (LearnedRoute("10.9.0.0/24", "10.0.0.9"),))
    assert [b.cidr for b in got.blocks] == ["10.1.0.0/26"] and got.borrowed == () and got.learned == ()


@pytest.mark.parametrize("value,expected", [("", "bird"), ("bird", "bird"), ("VXLAN", "vxlan"), ("none", "none")])
def test_backend_setting(value: str, expected: str) -> None:
    cfg = NodeConfig.from_env({"NODENAME": "n1", "CALICO_NETWORKING_BACKEND": value, "ETCD_ENDPOINTS": "http://x:1"})
    assert cfg.networking_backend == expected
    assert cfg.bgp_enabled == (expected == "bird")


def test_backend_setting_refuses_unknown() -> None:
    with pytest.raises(NodeConfigError, match=r"^CALICO_NETWORKING_BACKEND: "):
        NodeConfig.from_env({"NODENAME": "n1", "CALICO_NETWORKING_BACKEND": "gobgp", "ETCD_ENDPOINTS": "http://x:1"})


def test_mesh_bfd_switch() -> None:
    base = {"NODENAME": "n1", "ETCD_ENDPOINTS": "http://x:1"}
    assert not NodeConfig.from_env(base).mesh_bfd
    assert NodeConfig.from_env({**base, "TABBY_BGP_MESH_BFD": "True"}).mesh_bfd
    with pytest.raises(NodeConfigError, match=r"^TABBY_BGP_MESH_BFD: "):
        NodeConfig.from_env({**base, "TABBY_BGP_MESH_BFD": "yes"})


def _session(addr: str, state: str = "Established") -> dict:
    return {"peer_address": addr, "peer_type": "node-to-node mesh", "state": "up" if state == "Established" else
            "start", "bgp_state": state, "since": 0, "info": state, "prefixes_received": 2, "prefixes_stale": 0}


def test_table_is_calicoctl_shaped() -> None:
    text = render_table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
                        [["172.17.8.102", "node-to-node mesh", "up", "23:30:04", "Established"]])
    assert text == (
        "+--------------+-------------------+-------+----------+-------------+\n"
        "| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n"
        "+--------------+-------------------+-------+----------+-------------+\n"
        "| 172.17.8.102 | node-to-node mesh | up    | 23:30:04 | Established |\n"
        "+--------------+-------------------+-------+----------+-------------+"
    )


def test_status_text() -> None:
    out = render_status({"enabled": True, "sessions": [_session("10.0.0.2"), _session("10.0.0.3", "Idle")]})
    assert out.startswith("Tabby process is running.\n\nIPv4 BGP status\n+")
    assert "| 10.0.0.3     | node-to-node mesh | start |       | Idle        |" in out
    assert out.endswith("IPv6 BGP status\nNo IPv6 peers found.\n")
    assert "BGP is not in use (CALICO_NETWORKING_BACKEND=vxlan)" in render_status(disabled_status("vxlan"))


def test_metrics_text() -> None:
    counters = {"sessions_by_state": {"Established": 1, "Idle": 1}, "prefixes_advertised": 3, "rib_prefixes": 4,
                "rib_paths": 5, "rejected": {"as_path_loop": 2}, "exabgp_restarts": 0}
    text = metrics_text('n"1', [_session("10.0.0.2"), _session("10.0.0.3", "Idle")], counters)
    lines = text.splitlines()
    assert 'tabby_bgp_session_up{node="n\\"1",peer="10.0.0.2",type="node-to-node mesh"} 1' in lines
    assert 'tabby_bgp_session_up{node="n\\"1",peer="10.0.0.3",type="node-to-node mesh"} 0' in lines
    assert 'tabby_bgp_rejected_total{node="n\\"1",reason="as_path_loop"} 2' in lines
    assert 'tabby_bgp_rib_prefixes{node="n\\"1"} 4' in lines
    for line in lines:
        assert line.startswith("#") or line.split()[-1].isdigit()


def test_ecmp_best_route_gives_every_next_hop_to_the_dataplane() -> None:
    """An ECMP set from the RIB reaches calculate_routes whole and becomes one multipath route."""
    from types import SimpleNamespace

    import structlog

    from bgp.rib import select_best
    from bgp.types import Path
    from controller.node.bgp import NodeBgp

    paths = [Path("198.51.100.0/24", nh, as_path=(65001,), peer_address=nh, peer_as=65001)
             for nh in ("10.0.0.3", "10.0.0.2")]
    best = select_best(paths)
    assert best is not None and best.next_hops == ("10.0.0.2", "10.0.0.3")
    stub = SimpleNamespace(log=structlog.get_logger("test"), learned={})
    learned = NodeBgp._learned_route(stub, best)  # type: ignore[arg-type]
    assert learned.hops == ("10.0.0.2", "10.0.0.3") and learned.next_hop == best.path.next_hop
    single = NodeBgp._learned_route(stub, select_best(paths[:1]))  # type: ignore[arg-type]
    assert single == LearnedRoute("198.51.100.0/24", "10.0.0.3")
    stub.learned = {"a": learned, "b": single}
    assert NodeBgp.ecmp_routes(stub) == 1  # type: ignore[arg-type]
    route = next(r for r in calculate_routes(backend_inputs(_inputs(), "bird", (learned,)))
                 if r.dst == "198.51.100.0/24")
    assert [(h.gateway, h.oif) for h in route.nexthops] == [("10.0.0.2", "eth0"), ("10.0.0.3", "eth0")]


def test_metrics_text_has_the_ecmp_gauge() -> None:
    counters = {"sessions_by_state": {}, "prefixes_advertised": 0, "rib_prefixes": 0, "rib_paths": 0,
                "rejected": {}, "exabgp_restarts": 0, "ecmp_routes": 2}
    assert 'tabby_bgp_ecmp_routes{node="n"} 2' in metrics_text("n", [], counters).splitlines()
