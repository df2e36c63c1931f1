"""Lab lifecycle: several labs at once, refusals, reconfigure, etcd and env, failures reported."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import LabError, deploy, load_topology
from lab.state import LabState
from tests.topology.conftest import EXAMPLES, LABS, LabRun, lab_cli, ping, wait_for


def test_two_labs_at_once_and_a_name_in_use_is_refused(make_lab: Callable[..., LabRun], tmp_path: Path) -> None:
    one = make_lab(EXAMPLES / "line3.clab.yml")
    two = make_lab(EXAMPLES / "line3.clab.yml")
    assert one.lab and two.lab and one.lab.name != two.lab.name
    for run in (one, two):
        assert run.lab is not None
        assert ping(run.lab, "n1", "10.0.23.3")  # same addresses, separate namespaces

    with pytest.raises(LabError, match=f"lab {one.lab.name} is already deployed"):
        deploy(one.path)
    proc = lab_cli("deploy", "-t", str(one.path))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: lab {one.lab.name} is already deployed") and "--reconfigure" in proc.stderr

    # a different lab whose namespace name is taken is refused, and touches nothing
    taken = one.lab.node_netns("n1")
    clash = tmp_path / "clash.clab.yml"
    clash.write_text(f"name: clash-{one.lab.name}\nprefix: \"\"\ntopology:\n  nodes:\n"
                     f"    {taken}: {{kind: linux, image: alpine}}\n")
    with pytest.raises(LabError, match=f"namespace {taken} already exists"):
        deploy(clash)
    assert LabState.load(f"clash-{one.lab.name}") is None
    assert ping(one.lab, "n1", "10.0.23.3")

    # --reconfigure destroys and deploys again
    proc = lab_cli("deploy", "-t", str(one.path), "--reconfigure")
    assert proc.returncode == 0, proc.stderr
    assert ping(one.lab, "n1", "10.0.23.3")
    one.assert_root_untouched()


def test_etcd_node_and_node_env(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(LABS / "etcd.clab.yml")
    lab = run.lab
    assert lab is not None
    assert str(lab.mgmt_ipv4("etcd1")) == "172.20.20.2"
    endpoint = "--endpoints=http://172.20.20.2:2379"
    lab.exec("client", ["etcdctl", endpoint, "put", "/tabby/k", "v1"], check=True)
    got = lab.exec("etcd1", ["etcdctl", "--endpoints=http://127.0.0.1:2379", "get", "--print-value-only", "/tabby/k"],
                   check=True)
    assert got.stdout.strip() == "v1"

    # the node's env reaches exec and the node's main process, the caller's does not
    assert lab.exec("client", ["sh", "-c", "echo $NODENAME $AS $ETCD_ENDPOINTS"]).stdout.split() == [
        "client-1", "65010", "http://172.20.20.2:2379"]
    (cmd,) = [p for p in lab.state.processes if p.node == "client" and p.name == "cmd"]
    environ = Path(f"/proc/{cmd.pid}/environ").read_bytes().split(b"\0")
    assert b"NODENAME=client-1" in environ and b"AS=65010" in environ
    rows = {r["name"]: r["state"] for r in lab.inspect()}
    assert set(rows.values()) == {"running"}


def test_failing_exec_is_reported_not_fatal(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(LABS / "exec-fail.clab.yml", deploy_it=False)
    proc = lab_cli("deploy", "-t", str(run.path))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert any("node n1: exec 'false' failed (exit 1)" in w for w in warnings), proc.stderr
    assert any("no-such-binary-xyz" in w for w in warnings), proc.stderr
    topo = load_topology(run.path)
    proc = lab_cli("exec", "-t", str(run.path), "n1", "--", "ip", "-br", "addr", "show", "eth1")
    assert "192.0.2.1/24" in proc.stdout  # the exec after the failing ones still ran
    assert lab_cli("exec", "-t", str(run.path), "n1", "--", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    proc = lab_cli("exec", "-t", str(run.path), "n2", "--", "ip", "-br", "link")
    assert "eth0" not in proc.stdout and "eth1" in proc.stdout  # network-mode: none
    rows = json.loads(lab_cli("inspect", "-t", str(run.path), "-f", "json").stdout)["containers"]
    assert {r["name"]: r["ipv4_address"] for r in rows} == {topo.nodes["n1"].netns: "172.20.20.2/24",
                                                            topo.nodes["n2"].netns: "N/A"}


def test_a_daemon_that_dies_fails_the_deploy_naming_the_node(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(LABS / "broken-bird.clab.yml", deploy_it=False)
    proc = lab_cli("deploy", "-t", str(run.path), "--timeout", "15")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: node bird1: bird exited"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "hint: the half-built lab stays for its logs" in proc.stderr and "--cleanup" in proc.stderr
    # the half-built lab is still there for inspection until destroyed (the fixture checks it all goes)
    topo = load_topology(run.path)
    wait_for("state recorded", lambda: LabState.load(topo.name) is not None, timeout=5)


def test_a_cmd_that_exits_at_once_is_a_warning_with_its_output_kept(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(LABS / "dead-cmd.clab.yml", deploy_it=False)
    proc = lab_cli("deploy", "-t", str(run.path))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert any("node dead: cmd" in w and "exited with code 3" in w and "no such config" in w for w in warnings), \
        proc.stderr
    topo = load_topology(run.path)
    log = LabState.load(topo.name).node_dir("dead") / "cmd.log"  # type: ignore[union-attr]
    assert log.read_text().splitlines() == ["starting up", "no such config"]
    rows = json.loads(lab_cli("inspect", "-t", str(run.path), "-f", "json").stdout)["containers"]
    assert {r["name"]: r["state"] for r in rows} == {topo.nodes["dead"].netns: "exited",
                                                     topo.nodes["alive"].netns: "running"}

    # exec's own options after the node name are options, not the command
    started = time.monotonic()
    proc = lab_cli("exec", "-t", str(run.path), "alive", "--timeout", "1", "--", "sleep", "10")
    assert proc.returncode == 1 and "timed out after 1.0s" in proc.stderr, proc.stderr
    assert time.monotonic() - started < 8


def test_two_copies_differing_only_in_name_run_side_by_side(make_lab: Callable[..., LabRun]) -> None:
    """Every per-node path derives from the lab name: two copies of a Tabby example never share an
    agent's run directory, destroying one leaves the other working, and a lab pointed at a running
    lab's run root is refused."""
    import yaml

    from lab.state import lab_dir

    one = make_lab(EXAMPLES / "two-node-native.clab.yml")
    two = make_lab(EXAMPLES / "two-node-native.clab.yml")
    assert one.lab is not None and two.lab is not None
    for run in (one, two):
        assert run.lab is not None
        root = lab_dir(run.lab.name) / "run"
        assert run.lab.nodes["native1"].env["TABBY_RUN_ROOT"] == str(root)
        assert (root / "native1" / "agent.sock").exists()

    clash = make_lab(EXAMPLES / "two-node-native.clab.yml", deploy_it=False)
    data = yaml.safe_load(clash.path.read_text())
    data["topology"]["defaults"]["env"]["TABBY_RUN_ROOT"] = str(lab_dir(one.lab.name) / "run")
    clash.path.write_text(yaml.safe_dump(data))
    with pytest.raises(LabError, match=f"is used by running lab {one.lab.name}"):
        deploy(clash.path)

    processes = [p for p in two.lab.state.processes]
    one.lab.destroy(cleanup=True)
    assert all(p.alive() for p in processes), "destroying one lab killed the other's processes"
    assert (lab_dir(two.lab.name) / "run" / "native1" / "agent.sock").exists()
    assert ping(two.lab, "native1", "10.10.1.12")
