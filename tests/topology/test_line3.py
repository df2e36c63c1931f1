"""examples/line3: three plain namespaces, driven entirely through the CLI as a user would."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from lab import load_topology
from tests.topology.conftest import EXAMPLES, LabRun, lab_cli, leftovers, netns_list


def ip_json(netns: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", netns, "-j", "-d", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def addresses(netns: str) -> dict[str, list[str]]:
    return {a["ifname"]: [f"{i['local']}/{i['prefixlen']}" for i in a["addr_info"] if i["family"] == "inet"]
            for a in ip_json(netns, "addr")}


def test_line3_deploy_inspect_exec_ping_destroy(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(EXAMPLES / "line3.clab.yml", deploy_it=False)
    topo = load_topology(run.path)
    ns = {name: node.netns for name, node in topo.nodes.items()}

    proc = lab_cli("deploy", "-t", str(run.path))
    assert proc.returncode == 0, proc.stderr
    assert ns["n1"] in proc.stdout and "running" in proc.stdout
    assert "Traceback" not in proc.stderr

    # links and addresses, read from the kernel
    links = {link["ifname"]: link for link in ip_json(ns["n2"], "link")}
    assert links["lo"]["operstate"] == "UNKNOWN" and "UP" in links["lo"]["flags"]
    for ifname in ("eth0", "eth1", "eth2"):
        assert links[ifname]["linkinfo"]["info_kind"] == "veth"
        assert links[ifname]["operstate"] == "UP"
    assert addresses(ns["n1"])["eth1"] == ["10.0.12.1/24"]
    assert addresses(ns["n2"]) | {} == {
        "lo": ["127.0.0.1/8"], "eth0": ["172.20.20.3/24"], "eth1": ["10.0.12.2/24"], "eth2": ["10.0.23.2/24"]}
    assert addresses(ns["n3"])["eth0"] == ["172.20.20.4/24"]
    bridge_ports = [link["ifname"] for link in ip_json(topo.mgmt_netns, "link") if link.get("master") == "br-mgmt"]
    assert len(bridge_ports) == 3
    run.assert_root_untouched()

    # inspect, containerlab's JSON shape
    proc = lab_cli("inspect", "-t", str(run.path), "-f", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["containers"]
    assert [(r["name"], r["state"], r["ipv4_address"]) for r in rows] == [
        (ns["n1"], "running", "172.20.20.2/24"), (ns["n2"], "running", "172.20.20.3/24"),
        (ns["n3"], "running", "172.20.20.4/24")]
    assert {r["lab_name"] for r in rows} == {topo.name} and {r["kind"] for r in rows} == {"linux"}

    # exec: one node (exit code and output passed through), then all nodes
    proc = lab_cli("exec", "-t", str(run.path), "n2", "--", "sysctl", "-n", "net.ipv4.ip_forward")
    assert (proc.returncode, proc.stdout.strip()) == (0, "1")
    proc = lab_cli("exec", "-t", str(run.path), "n1", "--", "ping", "-c", "1", "-W", "2", "10.0.23.3")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # across n2
    proc = lab_cli("exec", "-t", str(run.path), "n3", "--", "ping", "-c", "1", "-W", "2", "172.20.20.2")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # over the management bridge
    assert lab_cli("exec", "-t", str(run.path), "n1", "--", "false").returncode == 1
    proc = lab_cli("exec", "-t", str(run.path), "--all", "--", "ip", "-br", "addr", "show", "eth1")
    assert proc.returncode == 0 and proc.stdout.count("== n") == 3 and "10.0.23.3/24" in proc.stdout

    # destroy through the CLI leaves nothing
    proc = lab_cli("destroy", "-t", str(run.path), "--cleanup", "--purge")
    assert proc.returncode == 0, proc.stderr
    assert not [n for n in netns_list() if n in topo.netns_names()]
    assert leftovers(run.path) == []
    proc = lab_cli("inspect", "-t", str(run.path), "-f", "json")
    assert json.loads(proc.stdout) == {"containers": []}
