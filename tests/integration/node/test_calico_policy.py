"""Calico policy kinds enforced by the real agent on the real kernel: pods on two nodes, real etcd,
the real CNI plugin, real TCP/UDP connects; the Log action read back from NFLOG group 1 by a small
netlink reader in the node's namespace (no mock).

Expectations are written by hand (no code shared with the compiler under test).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.node.conftest import PYTHON, NodeLab, apply_pool
from tests.integration.node.test_policy import Policies, expect

pytestmark = pytest.mark.root

#: Binds NFLOG group 1 over NETLINK_NETFILTER and prints one JSON line per record (prefix, src,
#: dst) until its time is up. Written from the nfnetlink_log ABI, independent of Tabby's code.
class Calico(Policies):
    def calico(self, kind: str, name: str, spec: dict[str, Any], namespace: str | None = None,
               labels: dict[str, str] | None = None) -> None:
        meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {}),
                                **({"labels": labels} if labels else {})}
        self.apply({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        self.ctl("delete", kind, name, *(["--namespace", namespace] if namespace else []))


@pytest.fixture
def cal(node_lab: NodeLab, etcd_env: dict[str, str], tmp_path: Path) -> Any:
    p = Calico(node_lab, etcd_env, tmp_path)
    try:
        yield p
    finally:
        p.stop()


def _lab(node_lab: NodeLab, etcd_env: dict[str, str]) -> tuple[str, str]:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    for n in (a, b):
        node_lab.set_address(n)
        node_lab.start_agent(n)
    return a, b


def test_tiers_pass_deny_gnp_over_namespaces_network_sets_and_profiles(
        node_lab: NodeLab, etcd_env: dict[str, str], cal: Calico) -> None:
    a, b = _lab(node_lab, etcd_env)
    srv = cal.pod(a, "srv", "prod", {"app": "web"})
    other = cal.pod(a, "other", "prod", {})
    cli = cal.pod(a, "cli", "prod", {"role": "client"})
    bad = cal.pod(b, "bad", "prod", {"role": "client", "bad": "yes"})
    rnd = cal.pod(b, "rnd", "prod", {})
    far = cal.pod(b, "far", "dev", {})
    for p in (srv, other, far):
        cal.listen(p.netns, 80, 81)
    expect(cal, [("cli->srv", cli.netns, srv.ip, 80, True), ("bad->srv", bad.netns, srv.ip, 80, True)])

    # tier order + Pass + Deny across tiers: security (order 100) denies bad clients and passes the
    # rest on; the default tier allows clients on TCP 80; its end of tier denies everything else
    cal.calico("Tier", "security", {"order": 100})
    cal.calico("GlobalNetworkPolicy", "sec", {"tier": "security", "order": 1, "selector": "app == 'web'",
                                              "ingress": [{"action": "Deny", "source": {"selector": "bad == 'yes'"}},
                                                          {"action": "Pass"}]})
    cal.calico("NetworkPolicy", "allow-clients", {"order": 100, "selector": "app == 'web'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'client'"},
         "destination": {"ports": [80]}}]}, namespace="prod")
    expect(cal, [
        ("cli->srv:80 (passed, then allowed)", cli.netns, srv.ip, 80, True),
        ("bad->srv:80 (denied in security, before the allow)", bad.netns, srv.ip, 80, False),
        ("cli->srv:81 (default tier end: deny)", cli.netns, srv.ip, 81, False),
        ("udp cli->srv:80", cli.netns, srv.ip, 80, False),
        ("rnd->srv:80 (not a client)", rnd.netns, srv.ip, 80, False),
        ("cli->other (no policy selects it)", cli.netns, other.ip, 80, True),
    ])
    # a tier whose only policy does not Pass: its end-of-tier deny holds even though the default
    # tier would allow; then the tier's defaultAction Pass lets the default tier decide again
    cal.calico("NetworkPolicy", "sec-web", {"tier": "security", "order": 2, "selector": "app == 'web'",
                                            "ingress": [{"action": "Allow", "protocol": "UDP"}]}, namespace="prod")
    cal.delete("globalnetworkpolicy", "sec")
    expect(cal, [("cli->srv:80 (security's end of tier)", cli.netns, srv.ip, 80, False),
                 ("udp cli->srv:80 (allowed in security)", cli.netns, srv.ip, 80, True)])
    cal.calico("Tier", "security", {"order": 100, "defaultAction": "Pass"})
    expect(cal, [("cli->srv:80 (security passes at its end)", cli.netns, srv.ip, 80, True),
                 ("bad->srv:80 (a client too, no deny left)", bad.netns, srv.ip, 80, True),
                 ("cli->srv:81", cli.netns, srv.ip, 81, False)])
    cal.delete("networkpolicy", "sec-web", "prod")
    cal.delete("networkpolicy", "allow-clients", "prod")

    # a GlobalNetworkPolicy over namespaces: deny ingress to every pod of team=blue namespaces
    cal.calico("GlobalNetworkPolicy", "blue-deny", {"namespaceSelector": "team == 'blue'", "selector": "all()",
                                                    "ingress": [{"action": "Deny"}]})
    expect(cal, [("cli->far (dev not blue yet)", cli.netns, far.ip, 80, True)])
    cal.namespace("dev", {"team": "blue"})
    expect(cal, [("cli->far (dev is blue)", cli.netns, far.ip, 80, False),
                 ("cli->srv (prod is not)", cli.netns, srv.ip, 80, True)])
    cal.delete("globalnetworkpolicy", "blue-deny")
    expect(cal, [("cli->far (policy gone)", cli.netns, far.ip, 80, True)])

    # a NetworkSet matched by a selector: only the addresses in the set reach srv
    cal.calico("NetworkSet", "trusted", {"nets": [f"{rnd.ip}/32"]}, namespace="prod", labels={"kind": "trusted"})
    cal.calico("NetworkPolicy", "from-trusted", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "source": {"selector": "kind == 'trusted'"}}]}, namespace="prod")
    expect(cal, [("rnd->srv (in the set)", rnd.netns, srv.ip, 80, True),
                 ("cli->srv (not in the set)", cli.netns, srv.ip, 80, False)])
    cal.calico("NetworkSet", "trusted", {"nets": [f"{cli.ip}/32", "192.0.2.0/24"]}, namespace="prod",
               labels={"kind": "trusted"})
    expect(cal, [("rnd->srv (left the set)", rnd.netns, srv.ip, 80, False),
                 ("cli->srv (joined the set)", cli.netns, srv.ip, 80, True)])
    cal.delete("networkpolicy", "from-trusted", "prod")

    # profile default: with no policy selecting a pod, its kns.<namespace> profile decides; without
    # a Profile document it allows everything, with one its rules replace that
    cal.calico("Profile", "kns.prod", {"ingress": [{"action": "Allow", "protocol": "TCP",
                                                    "destination": {"ports": [80]}}],
                                       "egress": [{"action": "Allow"}]})
    expect(cal, [("cli->other:80 (profile allows)", cli.netns, other.ip, 80, True),
                 ("cli->other:81 (no profile rule: denied)", cli.netns, other.ip, 81, False),
                 ("cli->far:81 (dev's profile: implicit allow)", cli.netns, far.ip, 81, True)])
    cal.delete("profile", "kns.prod")
    expect(cal, [("cli->other:81 (profile document gone)", cli.netns, other.ip, 81, True)])


def test_log_rule_writes_nflog_records(node_lab: NodeLab, etcd_env: dict[str, str], cal: Calico) -> None:
    """A Log rule sends the connection's first packet to NFLOG group 1 with its rule id and goes on;
    with flow logs on, the verdict that follows is logged with its own id; established packets are
    not logged."""
    a, _b = _lab(node_lab, etcd_env)
    srv = cal.pod(a, "srv", "prod", {"app": "web"})
    cli = cal.pod(a, "cli", "prod", {})
    cal.listen(srv.netns, 80)
    cal.calico("NetworkPolicy", "log-then-allow", {"selector": "app == 'web'", "ingress": [
        {"action": "Log", "protocol": "TCP"}, {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}]},
        namespace="prod")
    expect(cal, [("cli->srv:80", cli.netns, srv.ip, 80, True), ("cli->srv:81", cli.netns, srv.ip, 81, False)])
    table = subprocess.run(["ip", "netns", "exec", node_lab.nodes[a], "nft", "list", "table", "inet",
                            "tabby-policy"], capture_output=True, text=True, check=True).stdout
    ids = {}
    for line in table.splitlines():
        if 'log prefix "tabby:' in line and "dport 80" in line:
            ids["allow"] = line.split('"tabby:')[1].split('"')[0]
        elif 'log prefix "tabby:' in line and "accept" not in line and "drop" not in line:
            ids["log"] = line.split('"tabby:')[1].split('"')[0]
    assert set(ids) == {"log", "allow"}, table
    # the node's agent reads NFLOG group 1 (felix_like/flowlog.py): the records come from its flow API
    # the listener may close its side first: a send then meets a reset (EPIPE), which is no failure here
    script = ("import socket,sys,contextlib; s=socket.create_connection((sys.argv[1], 80), timeout=2)\n"
              "with contextlib.suppress(OSError):\n    for _ in range(5): s.send(b'x')\ns.close()")
    started = time.time()  # expect() above made connections of its own: only this one counts
    subprocess.run(["ip", "netns", "exec", cli.netns, PYTHON, "-c", script, srv.ip], check=True, timeout=10)
    tabbyctl = str(Path(PYTHON).parent / "tabbyctl")
    node = json.loads(subprocess.run([tabbyctl, "get", "node", a, "-o", "json"], capture_output=True, text=True,
                                     env=etcd_env, check=True, timeout=60).stdout)
    endpoint = f"--endpoint={a}={node['metadata']['annotations']['tabby.io/flow-api']}"
    deadline = time.monotonic() + 15
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        # from the node's namespace, where its flow API listens (no etcd is reachable there: --endpoint)
        proc = subprocess.run(["ip", "netns", "exec", node_lab.nodes[a], tabbyctl, "flows", "observe", endpoint,
                               "-o", "json"], capture_output=True, text=True, env=etcd_env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        mine = [r for r in records if r["source"]["ip"] == cli.ip and r["destination"]["ip"] == srv.ip
                and r["direction"] == "ingress" and r["destination"]["port"] == 80 and r["time"] >= started]
        if mine:
            break
        time.sleep(0.3)
    # one connection with a few data packets: its first packet alone is logged, by the Log rule (in the
    # record's trace) and then by the Allow rule that decided
    assert len(mine) == 1, mine
    assert mine[0]["rule"]["rule_id"] == ids["allow"], mine
    assert [t["rule_id"] for t in mine[0]["trace"]] == [ids["log"]], mine
    assert mine[0]["protocol"] == "tcp" and mine[0]["verdict"] == "allowed"


LISTEN6 = r"""
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[2]))); s.listen(64); s.settimeout(0.5)
while time.monotonic() < end:
    try:
        c, _ = s.accept(); c.close()
    except OSError:
        pass
"""
PROBE6 = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError:
    sys.exit(1)
"""


def test_ipv6_is_policed_like_ipv4(node_lab: NodeLab, etcd_env: dict[str, str], cal: Calico) -> None:
    """Dual-stack pods on one node (Tabby routes no IPv6 between nodes yet): a Kubernetes policy and
    a Calico policy hold for IPv6 connects as for IPv4; an isolated pod's IPv6 is not let through."""
    from tests.integration.node.conftest import Pod, in_ns, sh
    from tests.integration.node.test_agent_ipv6 import addresses, apply_pool6

    apply_pool(etcd_env)
    apply_pool6(etcd_env)
    node_lab.add_nodes(2)
    a = next(iter(node_lab.nodes))
    node_lab.set_address(a)
    node_lab.start_agent(a)

    def dual(name: str, labels: dict[str, str]) -> tuple[Pod, str, str]:
        ns = f"tbp-{node_lab.tag}-{name}"
        sh("ip", "netns", "add", ns)
        pod = Pod(name, ns, a, f"c{name}{node_lab.tag}")
        node_lab.pods.append(pod)
        conf = node_lab.netconf(labels=labels, ipam={"type": "tabby-ipam", "assign_ipv4": "true",
                                                      "assign_ipv6": "true"})
        code, out = node_lab.plugin(a, "ADD", container_id=pod.container_id, netns=f"/run/netns/{ns}",
                                    args=f"K8S_POD_NAMESPACE=prod;K8S_POD_NAME={name}", conf=conf)
        assert code == 0, (out, node_lab.debug(a))
        pod.result = out
        in_ns(ns, "ip", "link", "set", "lo", "up")
        v4, v6 = addresses(pod)
        return pod, v4, v6

    srv, srv4, srv6 = dual("srv", {"app": "web"})
    cli, _cli4, _cli6 = dual("cli", {"role": "client"})
    rnd, _rnd4, _rnd6 = dual("rnd", {})
    (cal.tmp / "listen6.py").write_text(LISTEN6)
    (cal.tmp / "probe6.py").write_text(PROBE6)
    cal.listeners.append(subprocess.Popen(["ip", "netns", "exec", srv.netns, PYTHON, str(cal.tmp / "listen6.py"),
                                           "600", "80"]))

    def v6(client: Pod) -> bool:
        return in_ns(client.netns, PYTHON, str(cal.tmp / "probe6.py"), srv6, "80", "0.7", check=False).returncode == 0

    def holds(cells: list[tuple[str, Pod, bool]], timeout: float = 8.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            wrong = [(label, want) for label, pod, want in cells if v6(pod) != want]
            if not wrong:
                return
            assert time.monotonic() < deadline, f"wrong IPv6 verdicts: {wrong}"
            time.sleep(0.2)

    holds([("cli->srv v6 (no policy)", cli, True), ("rnd->srv v6 (no policy)", rnd, True)])
    cal.policy("allow-client", "prod", {"podSelector": {"matchLabels": {"app": "web"}},
                                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]})
    holds([("cli->srv v6 (selected peer)", cli, True), ("rnd->srv v6 (isolated)", rnd, False)])
    expect(cal, [("cli->srv v4", cli.netns, srv4, 80, True), ("rnd->srv v4", rnd.netns, srv4, 80, False)])
    cal.delete_policy("allow-client", "prod")
    # a Calico rule restricted to IPv4: IPv6 from the same client is denied at the end of the tier
    cal.calico("NetworkPolicy", "v4-only", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "ipVersion": 4, "source": {"selector": "role == 'client'"}}]}, namespace="prod")
    holds([("cli->srv v6 (ipVersion 4 rule)", cli, False)])
    expect(cal, [("cli->srv v4 (ipVersion 4 rule)", cli.netns, srv4, 80, True)])

    # policy explain answers for IPv6 as the probes did (-6: the pods' IPv6 addresses)
    def explain(*args: str) -> dict[str, Any]:
        return json.loads(cal.ctl("policy", "explain", "-o", "json", "--from", "prod/cli", "--to", "prod/srv",
                                  *args))

    e6 = explain("-6", "--port", "80")
    assert (e6["source_ip"], e6["destination_ip"], e6["verdict"]) == (_cli6, srv6, "denied"), e6
    assert e6["ingress"]["rule"]["action"] == "end-of-tier-deny" and e6["ingress"]["rule"]["tier"] == "default", e6
    e4 = explain("--port", "80")
    assert e4["verdict"] == "allowed" and e4["ingress"]["rule"]["name"] == "v4-only", e4
    assert explain("-6", "--protocol", "icmp")["protocol"] == "icmpv6"
