"""Topology files written for containerlab on a Docker host deploy unchanged and work end to end.

Each file under ``labs/fidelity/`` is in the style of the public containerlab FRR labs (two FRR
routers in eBGP, a host behind each) and relies on one behaviour of a container on a Docker
host: forwarding on without sysctls, an undeclared group, a directory bind of ``/etc/frr``, a
script bound to ``/setup.sh`` and run by ``cmd``, an FRR configuration with rejected lines.
Every lab is checked the same way (sessions Established, a routed ping from host to host across
both routers), then destroyed by the fixture with nothing left; the host's ``/`` must not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.topology.conftest import LABS, LabRun, frr_peers, lab_cli, ping, wait_for

FIDELITY = LABS / "fidelity"


def host_root_snapshot() -> dict[str, str]:
    """What a node must never change on the host: the names in ``/`` and FRR's own ``/etc/frr``."""
    snap = {f"/{p.name}": "" for p in Path("/").iterdir()}
    # files only: other FRR tests on this machine make pathspace directories (/etc/frr/<ns>) meanwhile
    for path in sorted(p for p in Path("/etc/frr").iterdir() if p.is_file()):
        snap[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snap


def check_routed_lab(run: LabRun) -> None:
    lab = run.lab
    assert lab is not None
    assert lab.exec_failures == []
    for router, peer in (("r1", "10.0.12.2"), ("r2", "10.0.12.1")):
        wait_for(f"{router} session to {peer}", lambda r=router, p=peer: frr_peers(lab, r).get(p) == "Established",
                 timeout=30)
    wait_for("h1 -> h2 routed through r1 and r2", lambda: ping(lab, "h1", "10.2.2.2"), timeout=20)
    assert ping(lab, "h2", "10.1.1.2")
    run.assert_root_untouched()


@pytest.fixture
def host_root_unchanged() -> Iterator[Callable[[], None]]:
    """Check while deployed (call it) and again after destroy (teardown; request it before make_lab)."""
    before = host_root_snapshot()

    def check() -> None:
        assert host_root_snapshot() == before, "a lab node changed the host's / or /etc/frr"

    yield check
    check()


def test_routers_forward_without_sysctls(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(FIDELITY / "forwarding.clab.yml")
    check_routed_lab(run)
    assert run.lab is not None
    assert run.lab.exec("r1", ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    # IPv6 settings are the kernel's defaults, not the host's
    assert run.lab.exec("r1", ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip() == "0"

    # the picture of the deployed lab: addresses, AS numbers, sessions with their state
    picture = run.path.parent / "fwd.dot"
    proc = lab_cli("graph", "-t", str(run.path), "-o", str(picture))
    assert proc.returncode == 0, proc.stderr
    dot = picture.read_text()
    assert "AS 65001" in dot and "AS 65002" in dot and "eth1 10.0.12.1/30" in dot
    assert '"r1" -- "r2" [style=dashed, color="#2e7d32", label="BGP Established"' in dot
    assert '"h1" -- "__mgmt__"' in dot


def test_undeclared_group(make_lab: Callable[..., LabRun]) -> None:
    check_routed_lab(make_lab(FIDELITY / "group.clab.yml"))


def test_directory_bind_of_etc_frr(host_root_unchanged: Callable[[], None], make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(FIDELITY / "dir-bind.clab.yml")
    check_routed_lab(run)
    lab = run.lab
    assert lab is not None
    # FRR read /etc/frr/daemons from the bound directory: bfdd=yes started bfdd
    assert {p.name for p in lab.state.node_processes("r1")} >= {"zebra", "bgpd", "staticd", "bfdd"}
    # the node sees its own /etc/frr, the host's is untouched
    assert "hostname r2" in lab.exec("r2", ["cat", "/etc/frr/frr.conf"]).stdout
    assert "hostname r1" in lab.exec("r1", ["vtysh", "-c", "show running-config"]).stdout
    host_root_unchanged()


def test_script_bind_run_by_cmd(host_root_unchanged: Callable[[], None], make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(FIDELITY / "script-cmd.clab.yml")
    check_routed_lab(run)
    lab = run.lab
    assert lab is not None
    assert not Path("/setup.sh").exists(), "a bind target was created in the host's /"
    # :ro is honoured; a file written outside the binds stays in the node's own root
    assert lab.exec("h1", ["sh", "-c", "echo x >> /setup.sh"]).returncode != 0
    assert lab.exec("h1", ["sh", "-c", "echo x > /only-in-h1"]).returncode == 0
    assert lab.exec("h2", ["test", "-e", "/only-in-h1"]).returncode != 0
    assert not Path("/only-in-h1").exists()
    assert "h1 configured" in (lab.node_dir("h1") / "cmd.log").read_text()
    host_root_unchanged()


def test_frr_config_with_rejected_lines(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(FIDELITY / "bad-line.clab.yml")
    check_routed_lab(run)
    assert run.lab is not None
    rejected = [w for w in run.lab.state.warnings if "FRR rejected" in w]
    assert rejected and all(w.startswith("node r1: ") for w in rejected), run.lab.state.warnings
    assert any("multipath-relax-typo" in w for w in rejected), rejected


def test_env_defaults_and_magic_variables(make_lab: Callable[..., LabRun], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HOST_IMAGE", "FRR_IMAGE", "CONFIG_DIR", "H1_ADDR", "FAR_SIDE", "H2_ADDR"):
        monkeypatch.delenv(var, raising=False)
    run = make_lab(FIDELITY / "env.clab.yml")
    check_routed_lab(run)
    assert run.lab is not None
    assert run.lab.topology.nodes["r1"].image == "quay.io/frrouting/frr:8.4.1"
    assert run.lab.exec("h1", ["cat", "/tmp/whoami"]).stdout.strip() == "h1"


def test_stages_wait_for_a_healthy_node(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(FIDELITY / "stages.clab.yml")
    check_routed_lab(run)  # h2's addresses come from its configure stage's exec
    assert run.lab is not None
    healthy = float((run.lab.state.dir / "r1-healthy").read_text())
    started = float((run.lab.state.dir / "h1-started").read_text())
    assert started >= healthy, "h1 started before r1 was healthy"
