"""What a node shares and what it owns: ``network-mode: container:<node>`` and the private ``/run``.

``labs/namespaces/shared.clab.yml``: a and b linked, s in a's network namespace (docker's container
mode, which containerlab passes through) with its own mount and UTS namespaces.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from tests.topology.conftest import LABS, LabRun, ping, wait_for

SHARED = LABS / "namespaces" / "shared.clab.yml"


def ns_id(run: LabRun, node: str, kind: str) -> str:
    assert run.lab is not None
    return run.lab.exec(node, ["readlink", f"/proc/self/ns/{kind}"], check=True).stdout.strip()


def test_network_mode_container_shares_the_network_namespace_only(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(SHARED)
    lab = run.lab
    assert lab is not None and lab.exec_failures == []
    topo = lab.topology
    assert topo.nodes["s"].netns == topo.nodes["a"].netns and topo.nodes["s"].mgmt_ipv4 is None
    assert topo.netns_names().count(topo.nodes["a"].netns) == 1

    assert ns_id(run, "s", "net") == ns_id(run, "a", "net") != ns_id(run, "b", "net")
    assert ns_id(run, "s", "mnt") != ns_id(run, "a", "mnt")
    assert lab.exec("s", ["hostname"], check=True).stdout.strip() == "s"
    assert lab.exec("a", ["hostname"], check=True).stdout.strip() == "a"
    # s sees a's interfaces and addresses, and reaches b over a's link
    assert "192.0.2.1/30" in lab.exec("s", ["ip", "-o", "addr", "show", "dev", "eth1"], check=True).stdout
    assert ping(lab, "s", "192.0.2.2")
    # what s listens on in that namespace, a reaches on its own loopback
    fetch = ["python3", "-c", "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/hostname').read())"]
    wait_for("a reaches s's server on 127.0.0.1", lambda: lab.exec("a", fetch, timeout=10).returncode == 0, timeout=15)
    assert lab.exec("b", fetch, timeout=10).returncode != 0  # b is another namespace
    # inspect lists s, running, without a management address of its own
    rows = {r["name"]: r for r in lab.inspect()}
    assert {r["state"] for r in rows.values()} == {"running"}
    run.assert_root_untouched()


def test_each_node_has_its_own_run(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(SHARED)
    lab = run.lab
    assert lab is not None
    name = f"tabby-test-{uuid.uuid4().hex[:8]}"
    for node in ("a", "b", "s"):
        lab.exec(node, ["sh", "-c", f"echo {node} > /run/{name}"], check=True)
    for node in ("a", "b", "s"):  # s shares a's network, not a's files
        assert lab.exec(node, ["cat", f"/run/{name}"], check=True).stdout.strip() == node
        assert lab.exec(node, ["ls", "/run"], check=True).stdout.split().count(name) == 1
    assert not (Path("/run") / name).exists(), "a node's /run write reached the host"
    # what a node must still see of the host's /run: the namespaces (pods) and the lab's shared directory
    assert lab.exec("a", ["test", "-e", f"/run/netns/{lab.topology.nodes['b'].netns}"]).returncode == 0
    assert lab.exec("a", ["test", "-d", str(lab.state.dir)]).returncode == 0
    lab.exec("a", ["sh", "-c", f"echo from-a > {lab.state.dir}/{name}"], check=True)
    assert (lab.state.dir / name).read_text().strip() == "from-a"
    lab.destroy(cleanup=True)
    assert not (Path("/run") / name).exists()
