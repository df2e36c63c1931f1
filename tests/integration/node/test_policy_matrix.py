"""The policy truth table: for each scenario, every (client, server, port, protocol) cell probed with
real TCP, UDP and ICMP against the expectation of a reference evaluator (tests/policy_oracle) that
shares no code with the compiler under test.

One lab for the whole module (two nodes with real agents, real etcd, pods created by the real CNI
plugin, three namespaces, pods on both nodes: every scenario has same-node and cross-node cells);
each scenario starts from "no policy, every cell open" (checked), applies its documents with
tabbyctl, then probes every cell in parallel with short timeouts until the table matches, and once
more to confirm it holds. Host cells: a node reaches its own pods whatever the policy.

Every scenario (and every no-policy baseline) also asks ``policy explain`` -- in-process, through
the function the CLI uses (controller.cli.policy_cmd: read_inputs + explain_packet, one datastore
read and one compile per node per table) -- for every pod-to-pod cell and holds its verdict equal
to the probe's; a cell explain refuses fails the test. Host cells are asked from the address the
node's kernel picks as source towards that pod (``ip route get``): explain must know it is the
node's own (a Node resource address) and not police it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.cli.context import CliState, UserError
from controller.cli.policy_cmd import Answer, explain_packet, read_inputs
from felix_like.policy_eval import Packet
from tests.helpers.etcd import EtcdServer
from tests.helpers.netprobe import Listeners, Probe, Prober
from tests.integration.node.conftest import PYTHON, NodeLab, Pod, apply_pool, in_ns, sh
from tests.policy_oracle import calico as coracle
from tests.policy_oracle import k8s as oracle

pytestmark = pytest.mark.root

TCP_PORTS = (80, 81, 8080, 8081)
UDP_PORTS = (53, 80)
KINDS: tuple[tuple[str, int], ...] = (*(("TCP", p) for p in TCP_PORTS), *(("UDP", p) for p in UDP_PORTS),
                                      ("ICMP", 0))
TIMEOUT = 0.5  # a denied cell costs this; an allowed one answers in milliseconds
CONVERGE_S = 8.0

# name: (namespace, node index, labels, named ports)
PODS: dict[str, tuple[str, int, dict[str, str], list[tuple[str, str, int]]]] = {
    "web-a": ("prod", 0, {"app": "web"}, [("web", "TCP", 8080), ("dns", "UDP", 53)]),
    "web-b": ("prod", 1, {"app": "web"}, [("web", "TCP", 8081)]),
    "db-a": ("prod", 0, {"app": "db", "tier": "backend"}, [("web", "TCP", 81)]),
    "cli-p": ("prod", 1, {"role": "client"}, []),
    "cli-a": ("dev", 0, {"role": "client"}, []),
    "other-b": ("dev", 1, {"app": "other"}, []),
    "mon-a": ("ops", 0, {"role": "monitor"}, []),
}
NAMESPACES = ("prod", "dev", "ops")


def knp(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def nsdoc(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


WEB = {"matchLabels": {"app": "web"}}


@dataclass(frozen=True)
class Scenario:
    """Documents to apply (namespaces first), built from the pods' IPs (for ipBlock scenarios).
    ``calico``: judged by the Calico oracle (tiers, order, actions, network sets)."""

    docs: Callable[[dict[str, str]], list[dict[str, Any]]]
    namespaces: dict[str, dict[str, str]] | None = None
    calico: bool = False


def cal(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {}),
                            **({"labels": labels} if labels else {})}
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec}


SCENARIOS: dict[str, Scenario] = {
    # https://github.com/ahmetb/kubernetes-network-policy-recipes (the numbers are the recipes')
    "01-deny-all-to-web": Scenario(lambda ip: [knp("web-deny-all", "prod", {"podSelector": WEB, "ingress": []})]),
    "02-allow-by-label": Scenario(lambda ip: [knp("api-allow", "prod", {
        "podSelector": WEB, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]})]),
    "03-default-deny-namespace": Scenario(lambda ip: [
        knp("default-deny-all", "prod", {"podSelector": {}, "ingress": []})]),
    "04-deny-other-namespaces": Scenario(lambda ip: [knp("deny-from-other-namespaces", "prod", {
        "podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})]),
    "05-allow-from-namespace-by-label": Scenario(lambda ip: [knp("web-allow-blue", "prod", {
        "podSelector": WEB, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]})],
        namespaces={"dev": {"team": "blue"}, "ops": {"team": "red"}}),
    "06-pod-and-namespace-AND": Scenario(lambda ip: [knp("web-and", "prod", {
        "podSelector": WEB, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}},
                                                   "podSelector": {"matchLabels": {"role": "client"}}}]}]})],
        namespaces={"dev": {"team": "blue"}, "ops": {"team": "blue"}}),
    "07-pod-or-namespace-OR": Scenario(lambda ip: [knp("web-or", "prod", {
        "podSelector": WEB, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}},
                                                  {"podSelector": {"matchLabels": {"role": "client"}}}]}]})],
        namespaces={"ops": {"team": "blue"}}),
    "08-ipblock-except": Scenario(lambda ip: [knp("web-ipblock", "prod", {
        "podSelector": WEB, "ingress": [{"from": [{"ipBlock": {
            "cidr": "10.246.0.0/16", "except": [f"{ip['cli-a']}/32", f"{ip['mon-a']}/32"]}}]}]})]),
    "09-egress-deny-dns-allowed": Scenario(lambda ip: [knp("dev-egress-dns-only", "dev", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]})]),
    "10-port-range-endport": Scenario(lambda ip: [knp("web-range", "prod", {
        "podSelector": WEB, "ingress": [{"ports": [{"protocol": "TCP", "port": 8080, "endPort": 8081}]}]})]),
    "11-named-ports-ingress": Scenario(lambda ip: [knp("named-web", "prod", {
        "podSelector": {}, "ingress": [{"ports": [{"port": "web"}, {"protocol": "UDP", "port": "dns"}]}]})]),
    "12-named-port-egress": Scenario(lambda ip: [knp("cli-egress-named", "dev", {
        "podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {}, "podSelector": WEB}], "ports": [{"port": "web"}]}]})]),
    "13-allow-all-beats-deny": Scenario(lambda ip: [
        knp("deny-all", "prod", {"podSelector": {}, "ingress": []}),
        knp("db-allow-all", "prod", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]})]),
    "14-union-of-policies": Scenario(lambda ip: [
        knp("web-tcp80-clients", "prod", {"podSelector": WEB, "ingress": [{
            "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}],
            "ports": [{"port": 80}]}]}),
        knp("web-udp53-monitor", "prod", {"podSelector": WEB, "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}],
            "ports": [{"protocol": "UDP", "port": 53}]}]})]),
    "15-match-expressions": Scenario(lambda ip: [knp("exprs", "prod", {
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["ops"]}]},
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}}]}]})]),
    "16-ingress-and-egress-isolation": Scenario(lambda ip: [
        knp("ops-deny-all", "ops", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        knp("dev-egress-to-prod", "dev", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prod"}}}],
             "ports": [{"protocol": "TCP", "port": 80}]}]})]),
    # Calico's policy docs (tiers, order, Pass/Deny/Log, GlobalNetworkPolicy, NetworkSet)
    "21-calico-tier-order-pass-deny": Scenario(lambda ip: [
        cal("Tier", "security", {"order": 100}),
        cal("GlobalNetworkPolicy", "sec", {"tier": "security", "order": 1, "selector": "app == 'web'",
                                           "types": ["Ingress"], "ingress": [
                                               {"action": "Deny", "source": {"namespaceSelector": "team == 'red'"}},
                                               {"action": "Pass", "source": {"selector": "role == 'client'",
                                                                             "namespaceSelector": "all()"}}]}),
        knp("web-clients-80", "prod", {"podSelector": WEB, "ingress": [{
            "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}],
            "ports": [{"port": 80}]}]})],
        namespaces={"ops": {"team": "red"}}, calico=True),
    "22-calico-gnp-over-namespaces-egress": Scenario(lambda ip: [
        cal("GlobalNetworkPolicy", "blue-clients-dns-only", {
            "selector": "role == 'client'", "namespaceSelector": "team == 'blue'", "types": ["Egress"],
            "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
                       {"action": "Deny"}]})],
        namespaces={"dev": {"team": "blue"}}, calico=True),
    "23-calico-networkset": Scenario(lambda ip: [
        cal("NetworkSet", "trusted", {"nets": [f"{ip['cli-a']}/32", f"{ip['mon-a']}/32"]}, namespace="prod",
            labels={"kind": "trusted"}),
        cal("NetworkPolicy", "web-from-trusted", {"selector": "app == 'web'", "types": ["Ingress"], "ingress": [
            {"action": "Allow", "source": {"selector": "kind == 'trusted'"}}]}, namespace="prod")],
        calico=True),
    "24-calico-log-notports-order": Scenario(lambda ip: [
        cal("NetworkPolicy", "b-allow-rest", {"order": 20, "selector": "app == 'web'", "types": ["Ingress"],
                                              "ingress": [{"action": "Allow"}]}, namespace="prod"),
        cal("NetworkPolicy", "a-deny-tcp-not-80", {"order": 10, "selector": "app == 'web'", "types": ["Ingress"],
                                                   "ingress": [{"action": "Log"},
                                                               {"action": "Deny", "protocol": "TCP",
                                                                "destination": {"notPorts": [80]}}]},
            namespace="prod")],
        calico=True),
}


class MatrixLab:
    def __init__(self, lab: NodeLab, env: dict[str, str]) -> None:
        self.lab, self.env = lab, env
        self.pods: dict[str, Pod] = {}
        self.cluster = coracle.CalicoCluster(pods={})
        self.calico = False
        self.applied: list[dict[str, Any]] = []
        self.listeners = Listeners()
        self.prober = Prober(workers=192)
        self.explain_s = 0.0  # time spent in the explain check (all tables)
        self._host_src: dict[tuple[str, str], str] = {}

    def ctl(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), *args], input=input, capture_output=True,
                              text=True, env=self.env, timeout=60)
        assert proc.returncode == 0, (args, proc.stderr)
        return proc.stdout

    def apply(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            self.ctl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def add_pod(self, name: str) -> None:
        namespace, node_i, labels, _ports = PODS[name]
        node = list(self.lab.nodes)[node_i]
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
        self.pods[name] = pod

    def name_ports(self) -> None:
        """Named container ports on the WorkloadEndpoints (what a pod spec's ports would give)."""
        weps = []
        for namespace in NAMESPACES:
            listing = self.ctl("get", "workloadendpoints", "--namespace", namespace, "-o", "json")
            for wep in json.loads(listing)["items"]:
                ports = PODS[wep["spec"]["pod"]][3]
                if ports:
                    wep["spec"]["ports"] = [{"name": n, "protocol": p, "port": num} for n, p, num in ports]
                    weps.append(wep)
        self.apply(weps)

    def oracle_pods(self) -> None:
        for name, pod in self.pods.items():
            namespace, _i, labels, ports = PODS[name]
            self.cluster.pods[name] = oracle.PodSpec(name, namespace, pod.node, labels, pod.ip, tuple(ports))

    # -- the table -----------------------------------------------------------------------------
    def cells(self) -> dict[tuple[str, str, str, int], Probe]:
        out: dict[tuple[str, str, str, int], Probe] = {}
        for c, cp in self.pods.items():
            for s, sp in self.pods.items():
                for proto, port in KINDS:
                    out[(c, s, proto, port)] = Probe(cp.netns, sp.ip, proto, port)
        for s, sp in self.pods.items():  # each node to its own pods
            for proto, port in (("TCP", 80), ("ICMP", 0)):
                out[(f"node:{sp.node}", s, proto, port)] = Probe(self.lab.nodes[sp.node], sp.ip, proto, port)
        return out

    def expected(self, cells: dict[tuple[str, str, str, int], Probe]) -> dict[tuple[str, str, str, int], bool]:
        judge = coracle.allowed if self.calico else oracle.allowed
        return {k: judge(self.cluster, k[0], k[1], k[2], k[3]) for k in cells}

    def converge(self, want: dict[tuple[str, str, str, int], bool], label: str) -> dict[tuple[str, str, str, int],
                                                                                        bool]:
        """Probe every cell until all match ``want`` (re-probing only the wrong ones), then once more
        all of them; an allowed cell that fails the confirm round gets two more tries (a lost SYN
        under load), a denied one that got through is a failure. Returns what the probes saw (the
        confirm round, with the retries' answers), which then equals ``want``."""
        cells = self.cells()
        start = time.monotonic()
        pending = dict(cells)
        got: dict[tuple[str, str, str, int], bool] = {}
        while pending:
            res = self.prober.run(pending.values(), TIMEOUT)
            for k, p in list(pending.items()):
                got[k] = res[p]
                if got[k] == want[k]:
                    del pending[k]
            if pending and time.monotonic() - start > CONVERGE_S:
                break
        wrong = {k for k in cells if got.get(k) != want[k]}
        if not wrong:
            time.sleep(0.3)
            res = self.prober.run(cells.values(), TIMEOUT)
            got = {k: res[p] for k, p in cells.items()}
            wrong = {k for k in cells if got[k] != want[k]}
            for _ in range(2):
                retry = [k for k in wrong if want[k]]
                if not retry:
                    break
                again = self.prober.run((cells[k] for k in retry), 2.0)
                for k in retry:
                    got[k] = again[cells[k]]
                wrong -= {k for k in retry if again[cells[k]]}
        if wrong:
            tables = {n: in_ns(ns, "nft", "list", "table", "inet", "tabby-policy", check=False).stdout[-4000:]
                      for n, ns in self.lab.nodes.items()}
            lines = [f"{c}->{s} {proto}/{port}: want {'allow' if want[(c, s, proto, port)] else 'deny'}"
                     for c, s, proto, port in sorted(wrong)]
            raise AssertionError(f"{label}: {len(wrong)} of {len(cells)} cells wrong:\n" + "\n".join(lines[:60])
                                 + f"\n{tables}")
        return got

    def host_source(self, node: str, dst: str) -> str:
        """The source address node ``node``'s own stack uses towards ``dst`` (what its probes send from)."""
        key = (node, dst)
        if key not in self._host_src:
            route = json.loads(in_ns(self.lab.nodes[node], "ip", "-j", "route", "get", dst).stdout)
            self._host_src[key] = route[0]["prefsrc"]
        return self._host_src[key]

    def explain_agrees(self, probed: dict[tuple[str, str, str, int], bool], label: str) -> None:
        """``policy explain``'s verdict of every cell equals what the probes saw.

        In-process through the CLI's own functions (one datastore read, one compile per node), not
        one tabbyctl process per cell; host cells from the node's own source address. A cell explain
        refuses (a rule text the walker cannot read) is a failure, never a skip."""
        start = time.monotonic()
        inputs = CliState(environ=dict(self.env), initialise=False).run(read_inputs)
        bad: list[str] = []
        for (c, s, proto, port), seen in sorted(probed.items()):
            src = self.host_source(c[5:], self.pods[s].ip) if c.startswith("node:") else self.pods[c].ip
            pkt = Packet(src, self.pods[s].ip, proto.lower(), port if proto != "ICMP" else None)
            cell = f"{c}->{s} {proto}/{port}"
            try:
                eg, ing, _sn, _dn = explain_packet(inputs, pkt)
            except UserError as exc:
                bad.append(f"{cell}: explain refused: {exc}")
                continue
            said = Answer(c, s, pkt, eg, ing).verdict == "allowed"
            if said != seen:
                why = "; ".join(f"{d.direction} {d.verdict} {d.rule_id or d.note}" for d in (eg, ing) if d)
                bad.append(f"{cell}: probe {'allowed' if seen else 'denied'}, explain "
                           f"{'allowed' if said else 'denied'} ({why})")
        self.explain_s += time.monotonic() - start
        assert not bad, f"{label}: explain disagrees with the probes on {len(bad)} cells:\n" + "\n".join(bad[:60])

    def reset(self) -> None:
        """No policy, no namespace labels: every cell open (checked)."""
        policies = [d for d in reversed(self.applied) if d["kind"] != "Namespace"]  # tiers after their policies
        if policies:
            self.ctl("delete", "-f", "-", "--skip-not-exists",
                     input="\n---\n".join(json.dumps(d) for d in policies))
        self.apply([nsdoc(n, {}) for n in NAMESPACES])
        self.applied = []
        self.cluster.policies, self.cluster.namespaces, self.cluster.netsets = [], {}, []
        self.calico = False
        probed = self.converge({k: True for k in self.cells()}, "baseline (no policy)")
        self.explain_agrees(probed, "baseline (no policy)")

    def close(self) -> None:
        self.prober.close()
        self.listeners.close()


@pytest.fixture(scope="module")
def matrix(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixLab]:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    env = dict(os.environ)
    for var in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_USERNAME", "ETCD_PASSWORD"):
        env.pop(var, None)
    env["ETCD_ENDPOINTS"] = etcd_server.endpoint
    env["TABBY_ETCD_PREFIX"] = f"/tabby-test-{uuid.uuid4().hex[:10]}/"
    lab = NodeLab(tmp_path_factory.mktemp("matrix"), env)
    m = MatrixLab(lab, env)
    try:
        apply_pool(env)
        lab.add_nodes(2)
        for node in lab.nodes:
            lab.set_address(node)
            lab.start_agent(node)
        for name in PODS:
            m.add_pod(name)
        m.name_ports()
        m.oracle_pods()
        for pod in m.pods.values():
            m.listeners.add(pod.netns, tcp=TCP_PORTS, udp=UDP_PORTS)
        yield m
    finally:
        print(f"\npolicy explain check: {m.explain_s:.2f} s in all", file=sys.stderr)
        m.close()
        lab.cleanup()


def test_lab_spans_two_nodes(matrix: MatrixLab) -> None:
    """Same-node and cross-node cells exist; with no policy every cell is open."""
    nodes = {p.node for p in matrix.pods.values()}
    assert len(nodes) == 2
    matrix.reset()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(matrix: MatrixLab, name: str) -> None:
    scenario = SCENARIOS[name]
    matrix.reset()
    ips = {n: p.ip for n, p in matrix.pods.items()}
    docs = [nsdoc(n, labels) for n, labels in (scenario.namespaces or {}).items()]
    policies = scenario.docs(ips)
    matrix.cluster.namespaces = dict(scenario.namespaces or {})
    matrix.cluster.policies = policies
    matrix.cluster.netsets = [coracle.NetSet(d["metadata"]["name"], d["metadata"].get("namespace"),
                                             d["metadata"].get("labels") or {}, tuple(d["spec"]["nets"]))
                              for d in policies if d["kind"] in ("NetworkSet", "GlobalNetworkSet")]
    matrix.calico = scenario.calico
    want = matrix.expected(matrix.cells())
    # a scenario that denies nothing, or nothing across nodes, would prove nothing
    denied = [k for k, v in want.items() if not v]
    assert denied, f"{name}: the oracle denies no cell"
    assert any(matrix.pods[c].node != matrix.pods[s].node for c, s, *_ in denied if not c.startswith("node:"))
    matrix.apply(docs)
    matrix.apply(policies)
    matrix.applied = docs + policies
    matrix.explain_agrees(matrix.converge(want, name), name)


def _echo(sock: Any, timeout: float) -> bool:
    sock.settimeout(timeout)
    token = uuid.uuid4().bytes
    try:
        sock.sendall(token)
        got = b""
        while len(got) < len(token):
            chunk = sock.recv(len(token) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == token
    except OSError:
        return False


def _connect(matrix: MatrixLab, pairs: dict[str, tuple[str, str, bool]], conns: dict[str, Any], when: str) -> None:
    """A TCP connection to port 80 per pair (label: client pod, server pod, _), each echoing once."""
    import socket

    from tests.helpers.netprobe import in_netns

    for label, (c, srv, _ok) in pairs.items():
        ip = matrix.pods[srv].ip
        conns[label] = in_netns(matrix.pods[c].netns, lambda ip=ip: socket.create_connection((ip, 80), timeout=2))
    for label, sock in conns.items():
        assert _echo(sock, 2.0), f"{label}: no echo {when}"


def _until_denied(matrix: MatrixLab, client: str, server: str, what: str) -> None:
    """Until a new TCP connect client -> server:80 is denied (the change is in the kernel)."""
    probe = Probe(matrix.pods[client].netns, matrix.pods[server].ip, "TCP", 80)
    deadline = time.monotonic() + CONVERGE_S
    while matrix.prober.run([probe], TIMEOUT)[probe]:
        assert time.monotonic() < deadline, what


def test_established_connection_cut_by_new_deny(matrix: MatrixLab) -> None:
    """Beyond Calico: established TCP connections a new policy denies are cut (their conntrack
    entries deleted, a mid-stream segment then INVALID and dropped), allowed ones carry on; same
    node and across nodes."""
    matrix.reset()
    pairs = {"cli-a->web-a": ("cli-a", "web-a", False), "cli-p->web-a": ("cli-p", "web-a", False),
             "other-b->web-b": ("other-b", "web-b", False),
             "mon-a->web-a": ("mon-a", "web-a", True), "mon-a->web-b": ("mon-a", "web-b", True),
             "cli-a->db-a": ("cli-a", "db-a", True)}
    conns: dict[str, Any] = {}
    try:
        _connect(matrix, pairs, conns, "before the policy")
        matrix.apply([knp("web-monitor-only", "prod", {"podSelector": WEB, "ingress": [
            {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "monitor"}}}]}]})])
        matrix.applied = [knp("web-monitor-only", "prod", {})]
        _until_denied(matrix, "cli-a", "web-a", "the deny never reached the kernel")
        time.sleep(0.3)  # the cut follows the same apply
        verdicts = {label: _echo(sock, 1.0 if pairs[label][2] else 0.6) for label, sock in conns.items()}
        ct = "\n".join(in_ns(ns, "grep", "-v", "dport=2379", "/proc/net/nf_conntrack", check=False).stdout
                       for ns in matrix.lab.nodes.values())
        assert verdicts == {label: ok for label, (_c, _s, ok) in pairs.items()}, (verdicts, ct[-3000:])
        # still cut a moment later (no pickup from either side), still alive the allowed ones
        time.sleep(0.5)
        again = {label: _echo(sock, 1.0 if pairs[label][2] else 0.6) for label, sock in conns.items()}
        assert again == verdicts, again
    finally:
        for sock in conns.values():
            sock.close()


def test_established_connection_cut_when_its_peer_leaves_a_set(matrix: MatrixLab) -> None:
    """A namespace relabel takes its pods out of an allow's set (a delta of element deletions only):
    the cut judges just the flows of the addresses removed and cuts those the program now denies,
    same node and across nodes, while the flows of the pods still allowed carry on."""
    matrix.reset()
    trusted = {"team": "trusted"}
    policy = knp("web-from-trusted", "prod", {"podSelector": WEB, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": trusted}}]}]})
    matrix.apply([nsdoc("dev", trusted), nsdoc("ops", trusted), policy])
    matrix.applied = [policy]
    _until_denied(matrix, "cli-p", "web-a", "the policy never reached the kernel")  # prod is not trusted
    pairs = {"cli-a->web-a": ("cli-a", "web-a", False), "cli-a->web-b": ("cli-a", "web-b", False),
             "other-b->web-b": ("other-b", "web-b", False), "mon-a->web-a": ("mon-a", "web-a", True),
             "mon-a->web-b": ("mon-a", "web-b", True), "cli-p->db-a": ("cli-p", "db-a", True)}
    conns: dict[str, Any] = {}
    try:
        _connect(matrix, pairs, conns, "before the relabel")
        matrix.apply([nsdoc("dev", {})])  # dev's pods leave the trusted set; nothing else changes
        _until_denied(matrix, "cli-a", "web-a", "the relabel never reached the kernel")
        time.sleep(0.3)  # the cut follows the same apply
        verdicts = {label: _echo(sock, 1.0 if pairs[label][2] else 0.6) for label, sock in conns.items()}
        assert verdicts == {label: ok for label, (_c, _s, ok) in pairs.items()}, verdicts
        cuts = [json.loads(line) for agent in matrix.lab.agents.values()
                for line in agent.log_text().splitlines() if '"conntrack.cut"' in line]
        assert cuts, "no conntrack.cut logged"
        # the element-only delta judged the removed addresses' flows only: mon-a's and cli-p's
        # established flows on node a were left unjudged
        assert any(c["untouched"] >= 2 and c["cut"] >= 1 for c in cuts), cuts
    finally:
        for sock in conns.values():
            sock.close()


def test_established_connection_cut_when_its_peer_joins_a_deny_set(matrix: MatrixLab) -> None:
    """The other way round: a namespace relabel puts its pods INTO the set of a Deny rule (a delta of
    element additions only). An added member takes an allow away when the set sits under a Deny (or a
    negated match), so those flows are judged and cut too; the flows of pods not added carry on."""
    matrix.reset()
    policy = cal("NetworkPolicy", "web-deny-quarantined", {
        "selector": "app == 'web'", "types": ["Ingress"], "ingress": [
            {"action": "Deny", "source": {"namespaceSelector": "quarantine == 'yes'"}},
            {"action": "Allow"}]}, namespace="prod")
    matrix.apply([policy])
    matrix.applied = [policy]
    pairs = {"cli-a->web-a": ("cli-a", "web-a", False), "cli-a->web-b": ("cli-a", "web-b", False),
             "other-b->web-b": ("other-b", "web-b", False), "mon-a->web-a": ("mon-a", "web-a", True),
             "mon-a->web-b": ("mon-a", "web-b", True), "cli-p->web-a": ("cli-p", "web-a", True)}
    conns: dict[str, Any] = {}
    try:
        _connect(matrix, pairs, conns, "before the relabel")
        matrix.apply([nsdoc("dev", {"quarantine": "yes"})])  # dev's pods join the Deny's set; nothing else
        _until_denied(matrix, "cli-a", "web-a", "the relabel never reached the kernel")
        time.sleep(0.3)  # the cut follows the same apply
        verdicts = {label: _echo(sock, 1.0 if pairs[label][2] else 0.6) for label, sock in conns.items()}
        assert verdicts == {label: ok for label, (_c, _s, ok) in pairs.items()}, verdicts
    finally:
        for sock in conns.values():
            sock.close()
