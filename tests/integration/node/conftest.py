"""Namespace setups for the node agent and CNI plugin tests: everything lives in throw-away
network namespaces (two "nodes" joined by a veth on a private /24, pod namespaces), the agents
run as real processes, the plugin runs as a runtime would run it (subprocess, env + stdin) inside
a node's namespace. Fixtures delete every namespace, process and run directory they created,
also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
PLUGIN = ROOT / "controller" / "cni" / "plugin.py"
SUBNET = "10.213.77"
POOL_CIDR = "10.246.0.0/16"

pytestmark = pytest.mark.root


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)


def kill_netns_processes(ns: str) -> None:
    """SIGKILL every process living in a namespace (``ip netns pids``) and wait, bounded, until gone."""
    pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.05)


@dataclass
class AgentProc:
    name: str
    netns: str
    ip: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "controller.node"], env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,
        )
        out.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Pod:
    name: str
    netns: str
    node: str
    container_id: str
    result: dict = field(default_factory=dict)

    @property
    def ip(self) -> str:
        return self.result["ips"][0]["address"].split("/")[0]


class NodeLab:
    """Two node namespaces (a, b) on SUBNET.0/24, agents, pods and the plugin."""

    def __init__(self, tmp: Path, etcd_env: dict[str, str]) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.tmp = tmp
        self.run_root = tmp / "run"
        self.etcd_env = etcd_env
        self.nodes: dict[str, str] = {}  # node name -> netns
        self.agents: dict[str, AgentProc] = {}
        self.pods: list[Pod] = []
        self.extra_ns: list[str] = []

    # -- topology ------------------------------------------------------------------------------
    def add_nodes(self, count: int = 2) -> None:
        names = [f"tn{self.tag}{chr(ord('a') + i)}" for i in range(count)]
        for _i, name in enumerate(names):
            ns = f"tbn-{name}"
            sh("ip", "netns", "add", ns)
            self.nodes[name] = ns
            in_ns(ns, "ip", "link", "set", "lo", "up")
        # a veth between node a and node b (eth0 in each), addresses added later by set_addresses
        if count >= 2:
            a, b = (self.nodes[n] for n in names[:2])
            sh("ip", "link", "add", f"tv{self.tag}a", "netns", a, "type", "veth", "peer", "name",
               f"tv{self.tag}b", "netns", b)
            in_ns(a, "ip", "link", "set", f"tv{self.tag}a", "name", "eth0")
            in_ns(b, "ip", "link", "set", f"tv{self.tag}b", "name", "eth0")
            for ns in (a, b):
                in_ns(ns, "ip", "link", "set", "eth0", "up")

    def node_ip(self, name: str) -> str:
        return f"{SUBNET}.{list(self.nodes).index(name) + 1}"

    def set_address(self, name: str) -> None:
        in_ns(self.nodes[name], "ip", "addr", "add", f"{self.node_ip(name)}/24", "dev", "eth0")

    # -- agents -------------------------------------------------------------------------------
    def agent_env(self, name: str, **extra: str) -> dict[str, str]:
        env = dict(self.etcd_env)
        env.update({
            "NODENAME": name, "TABBY_NETNS": self.nodes[name], "TABBY_RUN_ROOT": str(self.run_root),
            "TABBY_LOG_FORMAT": "json", "TABBY_LOG_LEVEL": "info", "IP_AUTODETECTION_METHOD": "interface=eth0",
            "PYTHONPATH": str(ROOT),
            # These tests are about CNI and datastore-driven routes: no BGP, every remote block from the
            # datastore. BGP agents are tested in tests/integration/bgp/test_agent_bgp*.py.
            "CALICO_NETWORKING_BACKEND": "vxlan",
        })
        env.update(extra)
        return env

    def start_agent(self, name: str, wait: bool = True, **extra: str) -> AgentProc:
        agent = self.agents.get(name)
        if agent is None:
            agent = AgentProc(name, self.nodes[name], self.node_ip(name), self.agent_env(name, **extra),
                              self.tmp / f"agent-{name}.log")
            self.agents[name] = agent
        agent.start()
        if wait:
            self.wait_ready(name)
        return agent

    def wait_ready(self, name: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            agent = self.agents[name]
            assert agent.proc is not None and agent.proc.poll() is None, f"agent {name} died:\n{agent.log_text()}"
            if (self.run_root / name / "agent.sock").exists():
                code, _out = self.plugin(name, "STATUS", cni_version="1.1.0")
                if code == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"agent {name} not ready in {timeout}s:\n{self.agents[name].log_text()[-3000:]}")

    # -- plugin ---------------------------------------------------------------------------------
    def netconf(self, cni_version: str = "1.0.0", **extra: object) -> dict:
        conf = {"cniVersion": cni_version, "name": "tabbynet", "type": "tabby", "ipam": {"type": "tabby-ipam"}}
        conf.update(extra)
        return conf

    def plugin(
        self, node: str, command: str, *, container_id: str = "", netns: str = "", ifname: str = "eth0",
        args: str = "", cni_version: str = "1.0.0", conf: dict | None = None, plugin_type: str = "tabby",
        timeout: float = 30,
    ) -> tuple[int, dict]:
        env = {
            "PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": "/opt/cni/bin",
            "TABBY_RUN_ROOT": str(self.run_root),
        }
        stdin = json.dumps(conf if conf is not None else self.netconf(cni_version))
        # TABBY_TEST_CNI_BIN: a bin directory of an installed plugin (manifests/cni/install.sh, with
        # its native forwarder) to run these tests against instead of the checkout's plugin.py.
        installed = os.environ.get("TABBY_TEST_CNI_BIN")
        argv = [str(Path(installed) / plugin_type)] if installed else [PYTHON, "-I", "-S", str(PLUGIN), plugin_type]
        proc = subprocess.run(
            ["ip", "netns", "exec", self.nodes[node], *argv],
            input=stdin, capture_output=True, text=True, env=env, timeout=timeout,
        )
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
        return proc.returncode, out

    def add_pod(self, node: str, name: str, namespace: str = "default", expect_ok: bool = True) -> Pod:
        ns = f"tbp-{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        pod = Pod(name, ns, node, uuid.uuid4().hex)
        self.pods.append(pod)
        code, out = self.plugin(node, "ADD", container_id=pod.container_id, netns=f"/run/netns/{ns}",
                                args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
        if expect_ok:
            assert code == 0, (out, self.debug(node))
        pod.result = out
        return pod

    def debug(self, node: str) -> str:
        """What the plugin could have found, for failure messages."""
        by_netns = self.run_root / "by-netns"
        links = {p.name: os.readlink(p) for p in by_netns.iterdir()} if by_netns.exists() else {}
        inode = in_ns(self.nodes[node], "stat", "-L", "-c", "%i", "/proc/self/ns/net", check=False).stdout.strip()
        agent = self.agents.get(node)
        return f"netns inode {inode}, by-netns {links}, agent log tail: {agent.log_text()[-1500:] if agent else ''}"

    def pod_args(self, pod: Pod, namespace: str = "default") -> str:
        return f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod.name}"

    def del_pod(self, pod: Pod) -> tuple[int, dict]:
        return self.plugin(pod.node, "DEL", container_id=pod.container_id, netns=f"/run/netns/{pod.netns}",
                           args=self.pod_args(pod))

    def ping(self, ns: str, ip: str, count: int = 1, wait: int = 2) -> bool:
        return in_ns(ns, "ping", "-c", str(count), "-W", str(wait), ip, check=False).returncode == 0

    def cleanup(self) -> None:
        for agent in self.agents.values():
            agent.stop(signal.SIGKILL)
        for ns in self.nodes.values():
            kill_netns_processes(ns)  # ExaBGP outlives its agent by design
        for pod in self.pods:
            sh("ip", "netns", "del", pod.netns, check=False)
        for ns in [*self.nodes.values(), *self.extra_ns]:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def node_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[NodeLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = NodeLab(tmp_path, etcd_env)
    try:
        yield lab
    finally:
        lab.cleanup()


def apply_pool(etcd_env: dict[str, str], cidr: str = POOL_CIDR, **spec: object) -> None:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool1"},
           "spec": {"cidr": cidr, "blockSize": 26, **spec}}
    proc = subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), "apply", "-f", "-"], input=json.dumps(doc),
                          capture_output=True, text=True, env=etcd_env, timeout=30)
    assert proc.returncode == 0, proc.stderr
