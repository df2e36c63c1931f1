"""Kubernetes NetworkPolicy enforced by the real agent on the real kernel: pods in namespaces on two
nodes, real etcd, the real CNI plugin; every verdict is a real TCP connect (or its failure).

Expectations are written by hand (no code shared with the compiler under test).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.node.conftest import PYTHON, NodeLab, Pod, apply_pool, in_ns, sh

pytestmark = pytest.mark.root

LISTENER = """
import socket, sys, threading, time
end = time.monotonic() + float(sys.argv[1])
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); s.settimeout(0.5)
    while time.monotonic() < end:
        try:
            c, _ = s.accept(); c.close()
        except OSError:
            pass
def echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port)); s.settimeout(0.5)
    while time.monotonic() < end:
        try:
            data, peer = s.recvfrom(2048); s.sendto(data, peer)
        except OSError:
            pass
for p in sys.argv[2:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
    threading.Thread(target=echo, args=(int(p),), daemon=True).start()
while time.monotonic() < end:
    time.sleep(0.5)
"""

PROBE = """
import socket, sys
ip, port, timeout, proto = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    if proto == "tcp":
        socket.create_connection((ip, port), timeout=timeout).close()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
        s.sendto(b"x", (ip, port)); s.recvfrom(16)
except OSError:
    sys.exit(1)
"""


class Policies:
    def __init__(self, lab: NodeLab, env: dict[str, str], tmp: Path) -> None:
        self.lab, self.env, self.tmp = lab, env, tmp
        self.listeners: list[subprocess.Popen[bytes]] = []
        (tmp / "listen.py").write_text(LISTENER)
        (tmp / "probe.py").write_text(PROBE)

    def ctl(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), *args], input=input, capture_output=True,
                              text=True, env=self.env, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def apply(self, doc: dict[str, Any]) -> None:
        self.ctl("apply", "-f", "-", input=json.dumps(doc))

    def policy(self, name: str, namespace: str, spec: dict[str, Any]) -> None:
        self.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": name, "namespace": namespace}, "spec": spec})

    def delete_policy(self, name: str, namespace: str) -> None:
        self.ctl("delete", "netpol", name, "--namespace", namespace)

    def namespace(self, name: str, labels: dict[str, str]) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})

    def pod(self, node: str, name: str, namespace: str, labels: dict[str, str]) -> Pod:
        ns = f"tbp-{self.lab.tag}-{name}"
        sh("ip", "netns", "add", ns)
        pod = Pod(name, ns, node, uuid.uuid4().hex)
        self.lab.pods.append(pod)
        code, out = self.lab.plugin(node, "ADD", container_id=pod.container_id, netns=f"/run/netns/{ns}",
                                    args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}",
                                    conf=self.lab.netconf(labels=labels))
        assert code == 0, (out, self.lab.debug(node))
        pod.result = out
        in_ns(ns, "ip", "link", "set", "lo", "up")
        return pod

    def listen(self, netns: str, *ports: int) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, PYTHON, str(self.tmp / "listen.py"), "600",
                                 *map(str, ports)])
        self.listeners.append(proc)

    def connects(self, netns: str, ip: str, port: int, timeout: float = 0.5, proto: str = "tcp") -> bool:
        """A TCP connect, a UDP echo (port > 0) or an ICMP echo (proto "icmp") that got through."""
        if proto == "icmp":
            return in_ns(netns, "ping", "-c1", "-W1", ip, check=False).returncode == 0
        return in_ns(netns, PYTHON, str(self.tmp / "probe.py"), ip, str(port), str(timeout), proto,
                     check=False).returncode == 0

    def wep(self, pod: Pod, namespace: str) -> dict[str, Any]:
        items = json.loads(self.ctl("get", "workloadendpoints", "--namespace", namespace, "-o", "json"))["items"]
        return next(w for w in items if w["spec"].get("pod") == pod.name)

    def stop(self) -> None:
        for proc in self.listeners:
            proc.kill()
            proc.wait()


def expect(pol: Policies, cells: list[tuple[str, str, str, int, bool]], timeout: float = 5.0) -> None:
    """Every (label, client netns, server ip, port, allowed) cell holds within ``timeout``; a label
    starting with "udp " or "icmp " probes that protocol, TCP otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = [c for c in cells if pol.connects(c[1], c[2], c[3], proto=c[0].split()[0] if c[0].split()[0]
                                                  in ("udp", "icmp") else "tcp") != c[4]]
        if not wrong:
            return
        if time.monotonic() > deadline:
            table = {n: in_ns(ns, "nft", "list", "table", "inet", "tabby-policy", check=False).stdout
                     for n, ns in pol.lab.nodes.items()}
            raise AssertionError(f"wrong verdicts: {[(c[0], c[4]) for c in wrong]}\n{table}")
        time.sleep(0.2)


@pytest.fixture
def pol(node_lab: NodeLab, etcd_env: dict[str, str], tmp_path: Path) -> Any:
    p = Policies(node_lab, etcd_env, tmp_path)
    try:
        yield p
    finally:
        p.stop()


def test_networkpolicy_enforcement(node_lab: NodeLab, etcd_env: dict[str, str], pol: Policies) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    node_lab.set_address(a)
    node_lab.set_address(b)
    node_lab.start_agent(a)
    node_lab.start_agent(b)
    srv = pol.pod(a, "srv", "prod", {"app": "web"})
    other = pol.pod(a, "other", "prod", {})
    cli = pol.pod(a, "cli", "prod", {"role": "client"})
    rnd = pol.pod(a, "rnd", "prod", {})
    far = pol.pod(b, "far", "dev", {"role": "client"})  # another node, another namespace
    for p in (srv, other):
        pol.listen(p.netns, 80, 81)
    pol.listen(node_lab.nodes[a], 9090)  # a listener on node a itself
    node_a_ns = node_lab.nodes[a]
    node_a_ip = node_lab.node_ip(a)

    # no policy: everyone connects, same node and across nodes
    expect(pol, [("cli->srv", cli.netns, srv.ip, 80, True), ("far->srv", far.netns, srv.ip, 80, True),
                 ("udp cli->srv", cli.netns, srv.ip, 80, True), ("icmp cli->srv", cli.netns, srv.ip, 0, True)])

    # default deny for app=web: srv isolated, the non-selected pod still reachable, the node always
    pol.policy("deny-web", "prod", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []})
    expect(pol, [
        ("cli->srv", cli.netns, srv.ip, 80, False), ("far->srv", far.netns, srv.ip, 80, False),
        ("cli->other", cli.netns, other.ip, 80, True), ("far->other", far.netns, other.ip, 80, True),
        ("node->srv", node_a_ns, srv.ip, 80, True),
    ])

    # allow by podSelector: only the labelled client of the policy's own namespace, port 80 only
    pol.policy("allow-client", "prod", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 80}]}]})
    expect(pol, [
        ("cli->srv:80", cli.netns, srv.ip, 80, True), ("cli->srv:81", cli.netns, srv.ip, 81, False),
        ("udp cli->srv:80 (TCP only)", cli.netns, srv.ip, 80, False), ("icmp cli->srv", cli.netns, srv.ip, 0, False),
        ("rnd->srv", rnd.netns, srv.ip, 80, False), ("far->srv (other namespace)", far.netns, srv.ip, 80, False),
    ])

    # namespaceSelector: a namespace's labels change enforcement at once
    pol.policy("allow-blue", "prod", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]})
    expect(pol, [("far->srv", far.netns, srv.ip, 80, False)])
    pol.namespace("dev", {"team": "blue"})
    expect(pol, [("far->srv (dev is blue)", far.netns, srv.ip, 80, True),
                 ("udp far->srv (no ports: every protocol)", far.netns, srv.ip, 81, True),
                 ("icmp far->srv", far.netns, srv.ip, 0, True),
                 ("rnd->srv", rnd.netns, srv.ip, 80, False)])
    pol.namespace("dev", {"team": "red"})
    expect(pol, [("far->srv (dev is red)", far.netns, srv.ip, 80, False)])
    for name in ("allow-blue", "allow-client"):
        pol.delete_policy(name, "prod")

    # ipBlock with except: the pool, except rnd's address
    pol.policy("allow-pool", "prod", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.246.0.0/16", "except": [f"{rnd.ip}/32"]}}]}]})
    expect(pol, [("cli->srv", cli.netns, srv.ip, 80, True), ("far->srv", far.netns, srv.ip, 80, True),
                 ("rnd->srv (excepted)", rnd.netns, srv.ip, 80, False)])
    pol.delete_policy("allow-pool", "prod")

    # named port: srv's WorkloadEndpoint names port 81 "web"; the policy allows "web" only
    wep = pol.wep(srv, "prod")
    wep["spec"]["ports"] = [{"name": "web", "protocol": "TCP", "port": 81}]
    pol.apply(wep)
    pol.policy("allow-named", "prod", {"podSelector": {"matchLabels": {"app": "web"}},
                                       "ingress": [{"ports": [{"port": "web"}]}]})
    expect(pol, [("cli->srv:web", cli.netns, srv.ip, 81, True), ("cli->srv:80", cli.netns, srv.ip, 80, False)])

    # a label change on a live pod: srv loses app=web, no policy selects it any more
    wep = pol.wep(srv, "prod")
    wep["metadata"]["labels"] = {k: v for k, v in wep["metadata"]["labels"].items() if k != "app"}
    pol.apply(wep)
    expect(pol, [("cli->srv:80 (unselected)", cli.netns, srv.ip, 80, True)])

    # egress isolation of cli: other pods unreachable, its own node still reachable
    pol.policy("cli-egress", "prod", {"podSelector": {"matchLabels": {"role": "client"}},
                                      "policyTypes": ["Egress"], "egress": []})
    expect(pol, [("cli->other", cli.netns, other.ip, 80, False), ("cli->srv", cli.netns, srv.ip, 80, False),
                 ("cli->own node", cli.netns, node_a_ip, 9090, True),
                 ("rnd->other", rnd.netns, other.ip, 80, True)])
    # deleting the policy restores reachability
    pol.delete_policy("cli-egress", "prod")
    expect(pol, [("cli->other", cli.netns, other.ip, 80, True)])


def test_pod_is_enforced_when_cni_add_returns(node_lab: NodeLab, etcd_env: dict[str, str], pol: Policies) -> None:
    """The fast lane: the new pod's policy is in the kernel before ADD returns, and an interface the
    agent has not programmed is dropped (fail-closed)."""
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a = next(iter(node_lab.nodes))
    node_lab.set_address(a)
    node_lab.start_agent(a)
    pol.policy("deny-all", "prod", {"podSelector": {}, "ingress": []})
    cli = pol.pod(a, "cli", "other", {})
    time.sleep(0.5)  # the policy reached the agent (no local pod selected yet: nothing to program)
    srv = pol.pod(a, "srv", "prod", {})
    # read at once after ADD returned: the pod's verdict-map entry is already in the kernel
    table = in_ns(node_lab.nodes[a], "nft", "list", "table", "inet", "tabby-policy").stdout
    iface = pol.wep(srv, "prod")["spec"]["interfaceName"]
    assert f'"{iface}" : jump e-{iface}-i' in table, table
    pol.listen(srv.netns, 80)
    pol.listen(cli.netns, 80)
    time.sleep(0.3)  # the listeners start
    assert not pol.connects(cli.netns, srv.ip, 80, timeout=1.0)
    assert pol.connects(srv.netns, cli.ip, 80, timeout=1.0)  # cli's namespace has no policy

    # fail-closed: a workload interface the agent never programmed carries nothing
    node_ns = node_lab.nodes[a]
    rogue = f"tbp-{node_lab.tag}-rogue"
    sh("ip", "netns", "add", rogue)
    node_lab.extra_ns.append(rogue)
    host_if = f"tab{node_lab.tag}zz"
    sh("ip", "link", "add", host_if, "netns", node_ns, "type", "veth", "peer", "name", "eth0", "netns", rogue)
    in_ns(rogue, "ip", "addr", "add", "10.246.250.1/32", "dev", "eth0")
    in_ns(rogue, "ip", "link", "set", "eth0", "up")
    in_ns(rogue, "ip", "link", "set", "lo", "up")
    in_ns(rogue, "ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    in_ns(rogue, "ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    in_ns(node_ns, "ip", "link", "set", host_if, "up")
    in_ns(node_ns, "sysctl", "-qw", f"net.ipv4.conf.{host_if}.proxy_arp=1")
    in_ns(node_ns, "ip", "route", "add", "10.246.250.1/32", "dev", host_if, "scope", "link")
    mac = json.loads(in_ns(node_ns, "ip", "-j", "link", "show", host_if).stdout)[0]["address"]
    in_ns(rogue, "ip", "neigh", "replace", "169.254.1.1", "lladdr", mac, "dev", "eth0", "nud", "permanent")
    assert not pol.connects(rogue, cli.ip, 80, timeout=1.0)
    # ... and the drop is the policy table's: without it the same connect goes through (the agent
    # stopped first: a running agent puts a deleted policy table back at once)
    node_lab.agents[a].stop(signal.SIGKILL)
    in_ns(node_ns, "nft", "delete", "table", "inet", "tabby-policy")
    assert pol.connects(rogue, cli.ip, 80, timeout=2.0)


def _resyncs(log: str, reason: str) -> int:
    """How many policy rebuilds the agent logged for ``reason``."""
    n = 0
    for line in log.splitlines():
        if "dataplane.policy_resync" in line and "policy_resync_failed" not in line:
            with_reason = json.loads(line[line.index("{"):]) if "{" in line else {}
            n += with_reason.get("reason") == reason
    return n


def test_agent_restart_keeps_enforcement(node_lab: NodeLab, etcd_env: dict[str, str], pol: Policies) -> None:
    """SIGKILL the agent under a running deny and start it again: the table stays in the kernel and
    the new agent adopts it atomically; no denied connect gets through, no allowed one fails."""
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a = next(iter(node_lab.nodes))
    node_lab.set_address(a)
    node_lab.start_agent(a, TABBY_RESYNC_INTERVAL="2")
    srv = pol.pod(a, "srv", "prod", {"app": "web"})
    other = pol.pod(a, "other", "prod", {})
    cli = pol.pod(a, "cli", "prod", {})
    for p in (srv, other):
        pol.listen(p.netns, 80)
    pol.policy("deny-web", "prod", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []})
    expect(pol, [("cli->srv", cli.netns, srv.ip, 80, False), ("cli->other", cli.netns, other.ip, 80, True)])
    node_lab.agents[a].stop(signal.SIGKILL)
    mark = len(node_lab.agents[a].log_text())  # the log file goes on with the next agent's lines
    verdicts: list[tuple[bool, bool]] = []

    def probe_round() -> None:
        verdicts.append((pol.connects(cli.netns, srv.ip, 80, timeout=0.3),
                         pol.connects(cli.netns, other.ip, 80, timeout=1.0)))

    for _ in range(3):
        probe_round()
    node_lab.start_agent(a, wait=False, TABBY_RESYNC_INTERVAL="2")
    deadline = time.monotonic() + 8  # the start, the first sync and at least one periodic rebuild
    while time.monotonic() < deadline:
        probe_round()
    node_lab.wait_ready(a)
    probe_round()
    assert len(verdicts) >= 6
    assert not any(denied for denied, _ in verdicts), verdicts
    assert all(allowed for _, allowed in verdicts), verdicts
    log = node_lab.agents[a].log_text()[mark:]
    assert _resyncs(log, "start") == 1, log[-2000:]  # the new agent adopted the table in one rebuild
    # nobody else committed to nf_tables: the periodic refresh (every 2 s here) leaves the table alone
    assert _resyncs(log, "periodic") == 0, log[-2000:]
    status = subprocess.run([PYTHON, "-m", "controller.cli.main", "node", "status", "--nodename", a, "-o", "json"],
                            env={**etcd_env, "TABBY_RUN_ROOT": str(node_lab.run_root)}, capture_output=True,
                            text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["dataplane"]["policy_refresh_skipped"] >= 2, status.stdout

    # a hand edit inside the table is undone by the next periodic refresh
    chain = next(line.split()[1] for line in in_ns(node_lab.nodes[a], "nft", "list", "table", "inet",
                                                   "tabby-policy").stdout.splitlines()
                 if line.strip().startswith("chain "))
    in_ns(node_lab.nodes[a], "nft", "insert", "rule", "inet", "tabby-policy", chain, "counter", "accept")
    deadline = time.monotonic() + 6
    while "counter packets" in in_ns(node_lab.nodes[a], "nft", "list", "chain", "inet", "tabby-policy",
                                     chain).stdout:
        assert time.monotonic() < deadline, f"the hand-inserted rule in {chain} was not removed"
        time.sleep(0.1)
    assert _resyncs(node_lab.agents[a].log_text()[mark:], "periodic") >= 1

    # the table deleted by hand: no policy means no enforcement, so it is back at once (not one
    # refresh interval later: restart with a long interval to tell the two apart)
    node_lab.agents[a].stop(signal.SIGTERM)
    mark = len(node_lab.agents[a].log_text())
    node_lab.start_agent(a, TABBY_RESYNC_INTERVAL="600")
    t0 = time.monotonic()
    in_ns(node_lab.nodes[a], "nft", "delete", "table", "inet", "tabby-policy")
    while in_ns(node_lab.nodes[a], "nft", "list", "table", "inet", "tabby-policy", check=False).returncode != 0:
        assert time.monotonic() < t0 + 3, "the policy table was not restored"
        time.sleep(0.05)
    assert _resyncs(node_lab.agents[a].log_text()[mark:], "table_replaced") == 1
    expect(pol, [("cli->srv (restored)", cli.netns, srv.ip, 80, False),
                 ("cli->other", cli.netns, other.ip, 80, True)], timeout=2.0)
