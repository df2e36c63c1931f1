"""IPIP with the REAL node agents, run INSIDE the guest kernel (the host kernel has no ipip).

Started by tests/guest/test_agent_ipip.py after veth, bridge and ipip are loaded (so ``tunl0``
exists in every namespace). Unlike tests/guest/ipip_guest.py, which drives felix_like directly,
everything here goes through the product: an etcd (the Debian binary from the host filesystem,
data on the guest's /tmp tmpfs), ``tabbyctl apply/patch/get`` for the pool and the nodes (its
entry point called in this process: see :meth:`Guest.tabbyctl`), ``python -m controller.node``
per node (``CALICO_NETWORKING_BACKEND=vxlan``: no BGP, remote blocks routed from the datastore,
which is where IPIP routes come from with that backend too) and pods from the real CNI plugin.
Progress steps go to the console and one JSON result to the host (tests/guest/report.py); the
host test asserts on it. Every process is killed and every namespace deleted at the end; the
guest itself vanishes at power-off.

Shape: a, b on one /24 (bridged in the router namespace), c on another /24:

    pa -- node-a 192.168.10.2 --+
                                br0 192.168.10.1  router  192.168.20.1 -- node-c 192.168.20.2 -- pc
    pb -- node-b 192.168.10.3 --+
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common.logs  # noqa: F401 - pre-imported for the forked agents (see Forked)
import controller.node.agent
import controller.node.config  # noqa: F401 - idem
from common.etcd_process import EtcdServer
from controller.cli.main import main as tabbyctl_main
from tests.guest.report import START, step, write_result
from tests.uml.nslab import Lab, Netns

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PLUGIN = REPO / "controller" / "cni" / "plugin.py"
RUN_ROOT = Path("/tmp/tabby-run")
POOL = "10.65.0.0/16"
NODES = {  # name -> (eth0 address, default gateway)
    "a": ("192.168.10.2/24", "192.168.10.1"),
    "b": ("192.168.10.3/24", "192.168.10.1"),
    "c": ("192.168.20.2/24", "192.168.20.1"),
}
#: Under TCG (or UML) Python runs 10-20 times slower than on the host: generous, but bounded, waits.
AGENT_READY_S = 240
CONVERGE_S = 90
#: CNI error 11 ("try again later", e.g. etcd slower than the agent's deadline on a loaded guest):
#: a runtime retries the ADD; so does this scenario, a bounded number of times.
CNI_TRY_AGAIN = 11
ADD_ATTEMPTS = 3


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until truthy (bounded); raise naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    value = predicate()
    if not value:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
    return value


class Forked:
    """A child forked from this (pre-imported) interpreter, with the part of Popen's API used here.

    Why: under TCG each Python process pays a minute or more of imports for the agent's modules,
    and three agents starting together on two vCPUs pay it three times over. Forking this
    process, which imported them once and has not started gRPC or an event loop yet, gives each
    agent a warm interpreter; the child then runs ``controller.node`` exactly as ``python -m``
    does (runpy, ``__main__``), with its own environment, working directory and log file.
    """

    def __init__(self, target: Callable[[], int], log: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                code = target()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.returncode


def run_module_as_main(module: str, env: dict[str, str]) -> Callable[[], int]:
    """In a forked child: ``python -m module`` with ``env`` as the whole environment, cwd the checkout."""

    def target() -> int:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(REPO)
        sys.argv = [module]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0

    return target


class Guest:
    """The processes and namespaces of the scenario; :meth:`close` removes all of them."""

    def __init__(self, lab: Lab, env: dict[str, str]) -> None:
        self.lab = lab
        self.env = env
        self.nodes: dict[str, Netns] = {}
        self.agents: dict[str, Forked] = {}

    def tabbyctl(self, *args: str) -> str:
        """tabbyctl's own entry point (``controller.cli.main.main``, the console script) with ``args``.

        In a child forked from this interpreter rather than as a ``tabbyctl`` process: under TCG
        every Python process pays tens of seconds of imports. Same code, same argv, this
        environment; stdout is returned, a non-zero exit raises. Forked (not called in this
        process) so that this process never starts gRPC and can still fork the agents.
        """
        out = Path(f"/tmp/tabbyctl-{time.monotonic_ns()}.out")
        child = Forked(lambda: tabbyctl_main(list(args)), out)
        code = child.wait(timeout=240)
        text = out.read_text(errors="replace") if out.exists() else ""
        if code is None:
            child.kill()
            child.wait(timeout=10)
            raise RuntimeError(f"tabbyctl {' '.join(args)}: no answer in 240s: {text[-2000:]}")
        if code != 0:
            raise RuntimeError(f"tabbyctl {' '.join(args)}: exit {code}: {text[-2000:]}")
        return text

    def topology(self) -> None:
        router = self.lab.netns("router")
        router.ip("link", "add", "br0", "type", "bridge")
        router.ip("addr", "add", "192.168.10.1/24", "dev", "br0")
        router.ip("link", "set", "br0", "up")
        for name, (cidr, gw) in NODES.items():
            ns = self.lab.netns(f"node-{name}")
            self.nodes[name] = ns
            self.lab.veth(router, f"r{name}", ns, "eth0")
            ns.ip("addr", "add", cidr, "dev", "eth0")
            if gw == "192.168.10.1":
                router.ip("link", "set", f"r{name}", "master", "br0")
            else:
                router.ip("addr", "add", f"{gw}/24", "dev", f"r{name}")
            ns.ip("route", "add", "default", "via", gw)

    def agent_env(self, name: str) -> dict[str, str]:
        env = dict(self.env)
        env.update({
            "NODENAME": f"node-{name}", "TABBY_NETNS": self.nodes[name].name, "TABBY_RUN_ROOT": str(RUN_ROOT),
            "TABBY_LOG_FORMAT": "json", "TABBY_LOG_LEVEL": "info", "IP_AUTODETECTION_METHOD": "interface=eth0",
            "PYTHONPATH": str(REPO), "CALICO_NETWORKING_BACKEND": "vxlan",
        })
        return env

    def start_agents(self) -> None:
        for name in NODES:
            self.agents[name] = Forked(run_module_as_main("controller.node", self.agent_env(name)),
                                       agent_log_path(name))
        up: set[str] = set()

        def all_ready() -> bool:  # one deadline for all three (they start together); each checked until ready
            up.update(n for n in NODES if n not in up and self.ready(n))
            return len(up) == len(NODES)

        wait_for(all_ready, AGENT_READY_S, "agents ready", interval=0.5)
        step("agents-ready")

    def ready(self, name: str) -> bool:
        proc = self.agents[name]
        if proc.poll() is not None:
            raise RuntimeError(f"agent node-{name} exited {proc.returncode}:\n{agent_log(name)[-2000:]}")
        if not (RUN_ROOT / f"node-{name}" / "agent.sock").exists():
            return False
        code, _out = self.plugin(name, "STATUS", cni_version="1.1.0")
        return code == 0

    def plugin(self, name: str, command: str, *, container_id: str = "", netns: str = "", args: str = "",
               cni_version: str = "1.0.0") -> tuple[int, dict]:
        env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_ARGS": args, "CNI_PATH": "/opt/cni/bin",
               "TABBY_RUN_ROOT": str(RUN_ROOT)}
        conf = {"cniVersion": cni_version, "name": "tabbynet", "type": "tabby", "ipam": {"type": "tabby-ipam"}}
        proc = subprocess.run([*self.nodes[name].enter, PYTHON, "-I", "-S", str(PLUGIN), "tabby"],
                              input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=60)
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}

    def add_pod(self, name: str) -> tuple[Netns, str]:
        pod = self.lab.netns(f"pod-{name}")
        for _attempt in range(ADD_ATTEMPTS):
            code, out = self.plugin(name, "ADD", container_id=f"ctr-{name}", netns=f"/run/netns/{pod.name}",
                                    args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p{name}")
            if code == 0 or out.get("code") != CNI_TRY_AGAIN:
                break
            step(f"add-{name}-retry")  # the plugin undid the ADD and asked for a retry, as kubelet would
        if code != 0:
            raise RuntimeError(f"CNI ADD on node-{name}: {out}\n{agent_log(name)[-2000:]}")
        return pod, out["ips"][0]["address"].split("/")[0]

    def routes(self, name: str) -> dict[str, dict]:
        """The agent's routes (proto 81) in a node namespace, by destination."""
        data = json.loads(self.nodes[name].ip("-j", "route", "show", "proto", "81").stdout)
        return {r["dst"]: {"gateway": r.get("gateway"), "dev": r.get("dev"), "flags": r.get("flags", []),
                           "type": r.get("type", "unicast")} for r in data}

    def close(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def agent_log_path(name: str) -> Path:
    """In the host-visible work directory when there is one: a failed run leaves the full logs there."""
    return Path(os.environ.get("TABBY_GUEST_OUT", "/tmp")) / f"agent-{name}.log"


def agent_log(name: str) -> str:
    path = agent_log_path(name)
    return path.read_text(errors="replace") if path.exists() else ""


def ping_counted(g: Guest, src: str, pod: Netns, dst_ip: str, dst: str) -> dict[str, Any]:
    """Ping ``dst_ip`` from ``pod`` (on node ``src``); tunl0 packets sent by ``src``/received by ``dst`` meanwhile."""
    before_tx = g.nodes[src].link_stats("tunl0")["tx_packets"]
    before_rx = g.nodes[dst].link_stats("tunl0")["rx_packets"]
    ok = pod.ping(dst_ip, count=3)
    return {
        "ok": ok,
        "tunl0_tx": g.nodes[src].link_stats("tunl0")["tx_packets"] - before_tx,
        "tunl0_rx": g.nodes[dst].link_stats("tunl0")["rx_packets"] - before_rx,
    }


def blocks(g: Guest) -> dict[str, str]:
    """node name (a/b/c) -> its block, read from its own blackhole route."""
    out = {}
    for name in NODES:
        holes = [dst for dst, r in g.routes(name).items() if r["type"] == "blackhole"]
        if len(holes) == 1:
            out[name] = holes[0]
    return out if len(out) == len(NODES) else {}


def scenario(checks: dict[str, Any]) -> None:
    env = dict(os.environ)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)  # the guest's root namespace
    step("etcd")
    etcd = EtcdServer(Path("/tmp/etcd"))
    Path("/tmp/etcd").mkdir(parents=True, exist_ok=True)
    etcd.start(timeout=60)
    env.update({"ETCD_ENDPOINTS": etcd.endpoint, "TABBY_ETCD_PREFIX": "/tabby/"})
    os.environ.update({"ETCD_ENDPOINTS": etcd.endpoint, "TABBY_ETCD_PREFIX": "/tabby/"})  # for tabbyctl()
    with Lab() as lab:
        g = Guest(lab, env)
        try:
            step("topology")
            g.topology()
            pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool1"},
                    "spec": {"cidr": POOL, "blockSize": 26, "ipipMode": "Always"}}
            Path("/tmp/pool.json").write_text(json.dumps(pool))
            g.tabbyctl("apply", "-f", "/tmp/pool.json")
            step("agents")
            g.start_agents()
            step("pods")
            pods = {name: g.add_pod(name) for name in NODES}
            checks["pod_ips"] = {name: ip for name, (_ns, ip) in pods.items()}
            checks["pod_mtu"] = json.loads(pods["a"][0].ip("-j", "link", "show", "eth0").stdout)[0]["mtu"]
            step("always-converge")
            blk = wait_for(lambda: blocks(g), CONVERGE_S, "one block per node")
            checks["blocks"] = blk
            step("always-blocks")

            def tunnelled() -> bool:
                return all(g.routes(n).get(blk[m], {}).get("dev") == "tunl0" for n in NODES for m in NODES if m != n)

            wait_for(tunnelled, CONVERGE_S, "every remote block via tunl0")
            step("always-routes")
            listed = json.loads(g.tabbyctl("get", "nodes", "-o", "json"))
            items = listed.get("items", listed) if isinstance(listed, dict) else listed
            nodes = {doc["metadata"]["name"][len("node-"):]: doc for doc in items}
            checks["node_tunnel_addr"] = {n: nodes[n]["spec"]["bgp"].get("ipv4IPIPTunnelAddr") for n in NODES}
            checks["node_ipv4"] = {n: nodes[n]["spec"]["bgp"].get("ipv4Address") for n in NODES}

            def tunl0_addrs() -> dict[str, list[str]]:
                out = {}
                for n, ns in g.nodes.items():
                    data = json.loads(ns.ip("-j", "-4", "addr", "show", "dev", "tunl0").stdout)
                    out[n] = [f"{x['local']}/{x['prefixlen']}" for x in data[0]["addr_info"] if "local" in x]
                return out

            want = {n: [f"{checks['node_tunnel_addr'][n]}/32"] for n in NODES}
            wait_for(lambda: tunl0_addrs() == want, CONVERGE_S, "tunl0 addresses")
            checks["tunl0_addrs"] = tunl0_addrs()
            step("always-tunl0")
            checks["tunl0_mtu"] = json.loads(g.nodes["a"].ip("-j", "link", "show", "tunl0").stdout)[0]["mtu"]
            checks["always_routes_a"] = {m: g.routes("a")[blk[m]] for m in ("b", "c")}
            step("always-ping")
            checks["always_ping_ab"] = ping_counted(g, "a", pods["a"][0], pods["b"][1], "b")
            checks["always_ping_ac"] = ping_counted(g, "a", pods["a"][0], pods["c"][1], "c")
            checks["always_tcp_peer_ac"] = lab.tcp_peer(pods["c"][0], pods["a"][0], pods["c"][1], 8080)

            step("crosssubnet")
            g.tabbyctl("patch", "ippool", "pool1", "-p", '{"spec": {"ipipMode": "CrossSubnet"}}')

            def cross() -> bool:
                ra, rc = g.routes("a"), g.routes("c")
                return (ra.get(blk["b"], {}).get("dev") == "eth0" and ra.get(blk["c"], {}).get("dev") == "tunl0"
                        and g.routes("b").get(blk["a"], {}).get("dev") == "eth0"
                        and rc.get(blk["a"], {}).get("dev") == "tunl0")

            wait_for(cross, CONVERGE_S, "CrossSubnet routes (native within 192.168.10/24, tunl0 across)")
            checks["cross_routes_a"] = {m: g.routes("a")[blk[m]] for m in ("b", "c")}
            checks["cross_routes_c"] = {m: g.routes("c")[blk[m]] for m in ("a", "b")}
            step("crosssubnet-ping")
            checks["cross_ping_ab"] = ping_counted(g, "a", pods["a"][0], pods["b"][1], "b")
            checks["cross_ping_ac"] = ping_counted(g, "a", pods["a"][0], pods["c"][1], "c")
            checks["cross_ping_bc"] = ping_counted(g, "b", pods["b"][0], pods["c"][1], "c")
            checks["agents_alive"] = {n: p.poll() is None for n, p in g.agents.items()}
        except Exception:
            checks["agent_logs"] = {n: agent_log(n)[-1500:] for n in NODES}
            try:
                checks["routes"] = {n: g.routes(n) for n in g.nodes}
            except Exception as exc:  # the original failure matters more
                checks["routes"] = repr(exc)
            raise
        finally:
            step("cleanup")
            g.close()
            etcd.stop()


def main() -> None:
    checks: dict[str, Any] = {}
    try:
        scenario(checks)
        checks["error"] = None
    except Exception:  # report everything to the host test instead of dying silently
        checks["error"] = traceback.format_exc()
    checks["elapsed_s"] = round(time.monotonic() - START, 1)
    write_result(checks)


if __name__ == "__main__":
    main()
