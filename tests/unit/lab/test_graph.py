"""Pictures from the file alone: Graphviz text, Mermaid, and svg/png through `dot`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.graph import render, to_dot, to_mermaid
from lab.topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture
def triangle():
    return load_topology(EXAMPLES / "triangle.clab.yml")


def test_dot_has_every_node_and_link_with_interfaces(triangle) -> None:
    dot = to_dot(triangle)
    assert dot.startswith('graph "triangle" {')
    for name in ("frr", "bird", "gobgp"):
        assert f'  "{name}" [label="{name}\\n' in dot
    assert '"frr" -- "bird" [taillabel="eth1", headlabel="eth1"];' in dot
    assert '"bird" -- "gobgp" [taillabel="eth2", headlabel="eth2", label="mtu 1500"];' in dot
    assert "172.20.20.2" in dot


def test_mermaid(triangle) -> None:
    md = to_mermaid(triangle)
    assert "```mermaid\ngraph LR\n" in md
    assert 'n0["frr<br/>frr: quay.io/frrouting/frr:8.4.1<br/>172.20.20.2"]' in md
    assert 'n0 ---|"eth2 — eth1"| n2' in md


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")
@pytest.mark.parametrize("ext", ["svg", "png", "dot", "md"])
def test_render_each_format(triangle, tmp_path: Path, ext: str) -> None:
    out = render(triangle, tmp_path / f"lab.{ext}")
    data = out.read_bytes()
    assert data
    if ext == "svg":
        assert b"<svg" in data and b"gobgp" in data
    if ext == "png":
        assert data.startswith(b"\x89PNG")


def test_unknown_format_is_a_user_error(triangle, tmp_path: Path) -> None:
    with pytest.raises(LabError, match="unknown picture format 'gif'"):
        render(triangle, tmp_path / "lab.gif")


def test_live_view_shows_addresses_as_sessions_pods_and_the_mgmt_network(triangle) -> None:
    from lab.graph import NodeLive

    live = {
        "frr": NodeLive(addresses=["eth1 10.0.12.1/30"], asn="65001", sessions={"10.0.12.2": "Established",
                                                                                "10.9.9.9": "Active"}),
        "bird": NodeLive(addresses=["eth1 10.0.12.2/30"], asn="65002", sessions={"10.0.12.1": "Established"},
                         pods=["web-1"]),
        "gobgp": NodeLive(),
    }
    dot = to_dot(triangle, live)
    assert "AS 65001\\neth1 10.0.12.1/30" in dot and "pods: web-1" in dot
    # one dashed edge per session between lab nodes (the pair once; a peer outside the lab has none)
    assert dot.count('label="BGP Established"') == 1 and "BGP Active" not in dot
    # every node hangs off the management network: none floats
    for name in ("frr", "bird", "gobgp"):
        assert f'"{name}" -- "__mgmt__"' in dot
    md = to_mermaid(triangle, live)
    assert '-.-|"BGP Established"|' in md and "n0 -.- mgmt" in md


def test_pods_are_named_as_lab_pod_list_names_them() -> None:
    from lab.live import _pod_label

    assert _pod_label({"name": "web-1", "namespace": "default", "ips": ["10.244.0.5/32"]}) == "web-1 10.244.0.5"
    assert _pod_label({"name": "db", "namespace": "shop", "ips": []}) == "shop/db"
