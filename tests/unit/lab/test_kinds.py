"""Image -> program mapping, the registry later issues use, and exec rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import kinds
from lab.kinds import ImageHandler, handler_for, register_image, unregister_image
from lab.topology import Bind, Node


@pytest.mark.parametrize(
    ("image", "handler"),
    [
        ("quay.io/frrouting/frr:8.4.1", "frr"),
        ("frrouting/frr", "frr"),
        ("pierky/bird:2.0.12", "bird"),
        ("jauderho/gobgp:v3.10.0", "gobgp"),
        ("quay.io/coreos/etcd:v3.4", "etcd"),
        ("alpine:3", "linux"),
        ("nicolaka/netshoot", "linux"),
    ],
)
def test_builtin_mapping(image: str, handler: str) -> None:
    assert handler_for(image).name == handler


@pytest.mark.parametrize("image", ["tabby/node", "tabby/node:dev"])
def test_tabby_node_is_the_agent_or_its_placeholder(image: str) -> None:
    # the node-agent package registers the real handler; without it the lab keeps a plain namespace
    assert handler_for(image).name in ("tabby-node", "tabby-node (placeholder)")
    assert handler_for(image) is not handler_for("alpine")


def test_placeholder_is_builtin() -> None:
    assert any(p == "tabby/node" and isinstance(h, kinds.TabbyNodePlaceholder) for p, h in kinds._BUILTIN)


def test_registered_handler_wins_and_can_be_removed() -> None:
    class Agent(ImageHandler):
        name = "test-agent"

    before = handler_for("tabby/node:v1")
    register_image("tabby/node*", Agent())
    try:
        assert handler_for("tabby/node:v1").name == "test-agent"
        assert handler_for("TABBY/NODE").name == "test-agent"
    finally:
        unregister_image("tabby/node*")
    assert handler_for("tabby/node:v1") is before


def node(image: str, netns: str = "clab-x-r1", binds: tuple[Bind, ...] = ()) -> Node:
    return Node(name="r1", kind="linux", image=image, netns=netns, binds=binds)


def test_vtysh_and_birdc_reach_the_nodes_own_daemon(tmp_path: Path) -> None:
    frr = handler_for("frr")
    # FRR nodes have their own /var/run/frr (mount namespace): plain vtysh reaches them
    assert frr.exec_argv(node("frr"), tmp_path, ["vtysh", "-c", "show bgp summary json"]) == [
        "vtysh", "-c", "show bgp summary json"]
    assert frr.exec_argv(node("frr"), tmp_path, ["ip", "route"]) == ["ip", "route"]
    bird = handler_for("bird")
    assert bird.exec_argv(node("bird"), tmp_path, ["birdc", "show", "protocols"]) == [
        "birdc", "-s", str(tmp_path / "bird.ctl"), "show", "protocols"]


def test_frr_daemons_file_adds_daemons(tmp_path: Path) -> None:
    daemons = tmp_path / "daemons"
    daemons.write_text("zebra=yes\nbgpd=yes\nospfd=yes\nisisd=no\nvtysh_enable=yes\n")
    handler = kinds.FrrHandler()
    n = node("frr", binds=(Bind(source=daemons, target="/etc/frr/daemons"),))
    assert handler.daemons(n) == ["zebra", "bgpd", "staticd", "ospfd"]
    assert handler.host_paths(n) == []  # nothing of FRR's is made in the host's /etc or /run


def test_frr_daemons_file_in_a_bound_directory(tmp_path: Path) -> None:
    (tmp_path / "daemons").write_text("bfdd=yes\n")
    n = node("frr", binds=(Bind(source=tmp_path, target="/etc/frr/"),))
    assert kinds.FrrHandler().daemons(n) == ["zebra", "bgpd", "staticd", "bfdd"]
    assert kinds.bound_host_path(n, "/etc/frr/frr.conf") == tmp_path / "frr.conf"
    assert kinds.bound_host_path(n, "/etc/other") is None


def test_node_env_is_a_containers_not_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_ENDPOINTS", "http://host-only:2379")
    n = Node(name="r1", kind="linux", image="a", netns="x", env={"AS": "65001"})
    env = kinds.node_env(n)
    assert env["AS"] == "65001" and "PATH" in env and "ETCD_ENDPOINTS" not in env
