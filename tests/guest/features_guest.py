"""Kernel features the host kernel lacks, exercised INSIDE the guest kernel (tests/guest/test_features.py).

Why one script: every Python process costs seconds under TCG, so one boot and one process check
vrf, gre and bonding with plain iproute2 in namespaces, then deploy a containerlab topology with
dummy and VLAN (8021q) interfaces through ``tabbyctl lab`` (its entry point, in this process)
and ping across the VLAN. Each part
writes its own result (``features``, ``lab``; tests/guest/report.py) so one failing part does
not hide the others. Everything lives in namespaces of the guest kernel, which vanishes at
power-off; the lab is destroyed with ``--cleanup`` in every case.

Shapes (all inside the guest):

    vrf:     A [vrf-blue (table 10) > v1 10.1.0.1/24] -- B v1 10.1.0.2/24
    gre:     X eth 10.2.0.1 [gre1 10.3.0.1/30] -- Y eth 10.2.0.2 [gre1 10.3.0.2/30]
    bonding: P [bond0 active-backup > p1, p2] 10.4.0.1/24 == Q [bond0 > q1, q2] 10.4.0.2/24
    sctp:    cli 10.5.0.2 -- [node: tabsctpcli, tabsctpsrv, inet tabby-policy] -- srv 10.5.0.1
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from controller.cli.main import main as tabbyctl_main
from tests.guest.report import step, write_result
from tests.uml.nslab import Lab, Netns

LAB_TOPOLOGY = sys.argv[1] if len(sys.argv) > 1 else ""


def link(ns: Netns, dev: str) -> dict[str, Any]:
    return json.loads(ns.ip("-j", "-d", "-s", "link", "show", "dev", dev).stdout)[0]


def kind(ns: Netns, dev: str) -> str | None:
    return link(ns, dev).get("linkinfo", {}).get("info_kind")


def vrf(lab: Lab, checks: dict[str, Any]) -> None:
    a, b = lab.netns("vrf-a"), lab.netns("vrf-b")
    a.ip("link", "add", "vrf-blue", "type", "vrf", "table", "10")
    a.ip("link", "set", "dev", "vrf-blue", "up")
    lab.veth(a, "v1", b, "v1")
    a.ip("link", "set", "dev", "v1", "master", "vrf-blue")
    a.ip("addr", "add", "10.1.0.1/24", "dev", "v1")
    b.ip("addr", "add", "10.1.0.2/24", "dev", "v1")
    checks["vrf_kind"] = kind(a, "vrf-blue")
    checks["vrf_table"] = link(a, "vrf-blue")["linkinfo"]["info_data"].get("table")
    checks["vrf_master"] = link(a, "v1").get("master")
    # the connected route lives in table 10, not in main
    checks["vrf_main_routes"] = [r["dst"] for r in json.loads(a.ip("-j", "route", "show", "table", "main").stdout)]
    checks["vrf_table_routes"] = [r["dst"] for r in json.loads(a.ip("-j", "route", "show", "table", "10").stdout)
                                  if r.get("type", "unicast") == "unicast"]
    checks["vrf_ping_in_vrf"] = a.exec("ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", "vrf-blue", "10.1.0.2",
                                       check=False, timeout=20).returncode == 0
    checks["vrf_ping_outside_vrf"] = a.exec("ping", "-c", "1", "-W", "1", "10.1.0.2", check=False,
                                            timeout=20).returncode == 0


def gre(lab: Lab, checks: dict[str, Any]) -> None:
    x, y = lab.netns("gre-x"), lab.netns("gre-y")
    lab.veth(x, "eth0", y, "eth0")
    for ns, me, peer, inner in ((x, "10.2.0.1", "10.2.0.2", "10.3.0.1/30"), (y, "10.2.0.2", "10.2.0.1", "10.3.0.2/30")):
        ns.ip("addr", "add", f"{me}/24", "dev", "eth0")
        ns.ip("link", "add", "gre1", "type", "gre", "local", me, "remote", peer, "ttl", "64")
        ns.ip("addr", "add", inner, "dev", "gre1")
        ns.ip("link", "set", "dev", "gre1", "up")
    checks["gre_kind"] = kind(x, "gre1")
    before_tx, before_rx = x.link_stats("gre1")["tx_packets"], y.link_stats("gre1")["rx_packets"]
    checks["gre_ping"] = x.ping("10.3.0.2", count=3)
    checks["gre_tx_x"] = x.link_stats("gre1")["tx_packets"] - before_tx
    checks["gre_rx_y"] = y.link_stats("gre1")["rx_packets"] - before_rx


def active_slave(ns: Netns) -> str | None:
    """From /proc/net/bonding/bond0, which is per network namespace."""
    text = ns.exec("cat", "/proc/net/bonding/bond0").stdout
    for line in text.splitlines():
        if line.startswith("Currently Active Slave:"):
            return line.split(":", 1)[1].strip()
    return None


def bonding(lab: Lab, checks: dict[str, Any]) -> None:
    p, q = lab.netns("bond-p"), lab.netns("bond-q")
    for ns, ports, addr in ((p, ("p1", "p2"), "10.4.0.1/24"), (q, ("q1", "q2"), "10.4.0.2/24")):
        ns.ip("link", "add", "bond0", "type", "bond", "mode", "active-backup", "miimon", "50")
        if ns is p:
            lab.veth(p, "p1", q, "q1")
            lab.veth(p, "p2", q, "q2")
        for port in ports:
            ns.ip("link", "set", "dev", port, "down")
            ns.ip("link", "set", "dev", port, "master", "bond0")
        ns.ip("link", "set", "dev", "bond0", "up")
        ns.ip("addr", "add", addr, "dev", "bond0")
    checks["bond_kind"] = kind(p, "bond0")
    checks["bond_ports"] = sorted(d["ifname"] for d in json.loads(p.ip("-j", "link", "show", "master", "bond0").stdout))
    checks["bond_ping"] = p.ping("10.4.0.2", count=3)
    first = active_slave(p)
    checks["bond_active_before"] = first
    # fail the active port on both ends: the bond moves to the other one and traffic still flows
    other = {"p1": "p2", "p2": "p1"}.get(first or "")
    if other:
        p.ip("link", "set", "dev", first, "down")
        q.ip("link", "set", "dev", "q" + first[1:], "down")
    checks["bond_ping_after_failover"] = p.ping("10.4.0.2", count=5)
    checks["bond_active_after"] = active_slave(p)


def lab_vlan(checks: dict[str, Any]) -> None:
    """``tabbyctl lab`` in the guest: dummy + VLAN interfaces from the topology's exec lines, a ping across."""
    topo = Path(LAB_TOPOLOGY)
    os.environ["TABBY_LAB_STATE_DIR"] = "/run/tabby-guest/lab"
    # this guest's root is a chroot over 9p: nodes cannot pivot into an overlay root of their own
    os.environ["TABBY_LAB_SHARED_ROOT"] = "1"

    def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
        """``tabbyctl lab ARGS`` through tabbyctl's own entry point, in this process: a tabbyctl
        process would pay the lab's imports (tens of seconds under TCG) on every call."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = tabbyctl_main(["lab", *args])
            except SystemExit as exc:  # the console script's sys.exit(), as its exit status
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return subprocess.CompletedProcess(["tabbyctl", "lab", *args], code, out.getvalue(), err.getvalue())

    step("lab-deploy")
    deployed = lab_cli("deploy", "-t", str(topo))
    checks["deploy_rc"] = deployed.returncode
    checks["deploy_err"] = deployed.stderr[-2000:]
    try:
        if deployed.returncode != 0:
            return
        name = json.loads(lab_cli("inspect", "-t", str(topo), "-f", "json").stdout)["containers"]
        checks["nodes"] = sorted(row["name"] for row in name)
        netns = {row["name"].rsplit("-", 1)[-1]: row["name"] for row in name}
        checks["netns"] = netns
        step("lab-check")
        for node, ns_name in netns.items():
            ns = Netns(ns_name)
            vlan = link(ns, "eth1.10")
            checks[f"{node}_vlan"] = {"kind": vlan["linkinfo"]["info_kind"],
                                      "id": vlan["linkinfo"]["info_data"].get("id"), "link": vlan.get("link"),
                                      "up": "UP" in vlan["flags"]}
            checks[f"{node}_dummy_kind"] = kind(ns, "d0")
        r2 = Netns(netns["r2"])
        before = r2.link_stats("eth1.10")["rx_packets"]
        ping = lab_cli("exec", "-t", str(topo), "r1", "--", "ping", "-c", "3", "-i", "0.2", "-W", "2",
                       "-I", "10.99.1.1", "10.99.2.1")
        checks["ping_rc"] = ping.returncode
        checks["ping_out"] = ping.stdout[-500:] + ping.stderr[-500:]
        checks["r2_vlan_rx"] = r2.link_stats("eth1.10")["rx_packets"] - before
    finally:
        step("lab-destroy")
        destroyed = lab_cli("destroy", "-t", str(topo), "--cleanup")
        checks["destroy_rc"] = destroyed.returncode
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=15).stdout
        checks["netns_left"] = [line.split()[0] for line in left.splitlines() if "clab-" in line]


def sctp(lab: Lab, checks: dict[str, Any]) -> None:
    """SCTP under a Kubernetes NetworkPolicy (the host kernel has no sctp module): the agent's policy
    compiler and manager in a node namespace between two pod namespaces; SCTP associations on the
    allowed port form, on another port of the same pod they do not (both formed before the policy)."""
    import socket

    from datamodel.resources.kubernetes import NetworkPolicy
    from felix_like.netns import run_in_netns
    from felix_like.policy import EndpointInfo, PolicyManager, compile_program

    node = lab.netns("sctp-node")
    srv = lab.workload(node, "sctp-srv", "10.5.0.1", "tabsctpsrv")
    cli = lab.workload(node, "sctp-cli", "10.5.0.2", "tabsctpcli")

    def listen(port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        s.bind(("10.5.0.1", port))
        s.listen(8)
        return s

    listeners = run_in_netns(srv.name, lambda: [listen(9000), listen(9001)])

    def associates(port: int) -> bool:
        def go() -> bool:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
            s.settimeout(3.0)
            try:
                s.connect(("10.5.0.1", port))
                return True
            except OSError:
                return False
            finally:
                s.close()
        return run_in_netns(cli.name, go)

    try:
        checks["sctp_9000_before"] = associates(9000)
        checks["sctp_9001_before"] = associates(9001)
        eps = [EndpointInfo("srv", "prod", (("app", "sctp"),), ("10.5.0.1",), (), "n1", "tabsctpsrv"),
               EndpointInfo("cli", "prod", (("role", "client"),), ("10.5.0.2",), (), "n1", "tabsctpcli")]
        policy = NetworkPolicy.model_validate({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "sctp-9000", "namespace": "prod"},
            "spec": {"podSelector": {"matchLabels": {"app": "sctp"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                  "ports": [{"protocol": "SCTP", "port": 9000}]}]}})
        PolicyManager(node.name).resync(compile_program([policy], eps, {}, "n1"))
        checks["sctp_9000_after"] = associates(9000)
        checks["sctp_9001_after"] = associates(9001)
    finally:
        for s in listeners:
            s.close()


def main() -> None:
    checks: dict[str, Any] = {}
    try:
        with Lab() as lab:
            for name, part in (("vrf", vrf), ("gre", gre), ("bonding", bonding)):
                step(name)
                part(lab, checks)
        checks["error"] = None
    except Exception:  # report everything to the host test instead of dying silently
        checks["error"] = traceback.format_exc()
    write_result(checks, "features")
    sctp_checks: dict[str, Any] = {}
    try:
        with Lab() as lab:
            step("sctp")
            sctp(lab, sctp_checks)
        sctp_checks["error"] = None
    except Exception:
        sctp_checks["error"] = traceback.format_exc()
    write_result(sctp_checks, "sctp")
    lab_checks: dict[str, Any] = {}
    try:
        lab_vlan(lab_checks)
        lab_checks["error"] = None
    except Exception:
        lab_checks["error"] = traceback.format_exc()
    write_result(lab_checks, "lab")


if __name__ == "__main__":
    main()
