"""Pods in a lab: a network namespace per pod, plumbed by the real CNI plugin as a runtime would.

Why the real plugin, run as a subprocess inside the node's namespace: ``lab pod add`` is how a
user (and every topology test) proves the whole chain a kubelet/containerd would exercise:
plugin executable, environment and stdin netconf, the node agent's local API, IPAM in etcd,
veth + routes in the kernel. Nothing here talks to etcd or the agent directly.

Crash safety follows the lab's rule: the pod's namespace is recorded in the lab state before it
is made, so ``lab destroy`` removes it even if ``pod add`` died half-way. ``destroy`` never calls
CNI DEL (that would need etcd and the agents, which destroy is tearing down); the addresses go
with the lab's etcd.

Naming: ``<node namespace>-pod-<name>`` (``-pod-<namespace>.<name>`` outside ``default``), so a
pod namespace is unique per lab and node and ``destroy --cleanup`` finds it by prefix.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from lab import kinds, netns
from lab.deploy import POD_NETNS_INFIX, Lab, load
from lab.errors import LabError
from lab.state import LabState, lab_lock
from lab.topology import Node, Topology

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILE = ROOT / "controller" / "cni" / "plugin.py"
CONFLIST = ROOT / "manifests" / "cni" / "10-tabby.conflist"
PLUGIN_ENV = "TABBY_LAB_CNI_PLUGIN"  # an installed plugin executable to use instead of the checkout's
CNI_PATH = "/opt/cni/bin"
# CNI codes a runtime retries: 11 "try again later" (agent starting, etcd slow), 50 "not available"
RETRY_CODES = (11, 50)
ADD_TIMEOUT = 60.0
PLUGIN_TIMEOUT = 45.0
PING_WORKERS = 32
_POD_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_NS_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass
class PodRecord:
    """What the lab state remembers of a pod (enough for DEL and ``check`` without etcd)."""

    name: str
    namespace: str
    node: str
    netns: str
    container_id: str
    ips: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    status: str = "creating"  # creating -> ready

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label(self) -> str:
        """How reports name the pod: ``name`` in the default namespace, ``namespace/name`` elsewhere."""
        return self.name if self.namespace == "default" else self.key

    def to_state(self) -> dict[str, Any]:
        return {"key": self.key, **asdict(self)}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> PodRecord:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields)

    def summary(self) -> dict[str, Any]:
        """The ``pod add`` output (design.md section 4): name, node, netns, ips (+ namespace)."""
        return {"name": self.name, "namespace": self.namespace, "node": self.node, "netns": self.netns,
                "ips": list(self.ips)}


# --------------------------------------------------------------------------- validation


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``k=v`` strings (Kubernetes label syntax) -> dict; a malformed one is a ``LabError``."""
    labels: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not _LABEL_KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
            raise LabError(f"--label {item!r}: expected KEY=VALUE with a Kubernetes label key (e.g. app=web)")
        if not _LABEL_VALUE_RE.match(value) or len(value) > 63:
            raise LabError(f"--label {item!r}: the value must be up to 63 of [A-Za-z0-9-_.], starting and "
                           "ending alphanumeric")
        labels[key] = value
    return labels


_PORT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def parse_ports(items: Sequence[str]) -> list[dict[str, Any]]:
    """``NAME=PROTO/PORT`` strings (a container port with its IANA-style name) -> WorkloadEndpoint
    ``ports`` entries; a malformed one is a ``LabError`` naming it."""
    out: list[dict[str, Any]] = []
    for item in items:
        name, eq, rest = item.partition("=")
        proto, slash, number = rest.partition("/")
        if not eq or not slash:
            raise LabError(f"--port {item!r}: expected NAME=PROTO/PORT (e.g. http=TCP/8080)")
        if not _PORT_NAME_RE.match(name) or len(name) > 15 or not re.search("[a-z]", name):
            raise LabError(f"--port {item!r}: the name must be up to 15 of [a-z0-9-] with a letter, as a "
                           "Kubernetes port name")
        if proto.upper() not in ("TCP", "UDP", "SCTP"):
            raise LabError(f"--port {item!r}: the protocol must be TCP, UDP or SCTP")
        if not number.isdigit() or not 1 <= int(number) <= 65535:
            raise LabError(f"--port {item!r}: the port must be a number from 1 to 65535")
        if any(p["name"] == name for p in out):
            raise LabError(f"--port {item!r}: the name {name} is given twice")
        out.append({"name": name, "protocol": proto.upper(), "port": int(number)})
    return out


def check_names(name: str, namespace: str) -> None:
    if not _POD_RE.match(name) or len(name) > 63:
        raise LabError(f"pod name {name!r} is not valid: lower case alphanumerics, '-' and '.', up to 63 characters")
    if not _NS_RE.match(namespace) or len(namespace) > 63:
        raise LabError(f"--namespace {namespace!r} is not valid: lower case alphanumerics and '-', up to 63 "
                       "characters")


def pod_netns(node: Node, namespace: str, name: str) -> str:
    suffix = name if namespace == "default" else f"{namespace}.{name}"
    return f"{node.netns}{POD_NETNS_INFIX}{suffix}"


def nodename(node: Node) -> str:
    """The Tabby node name the agent of ``node`` registers under (calico-node's NODENAME)."""
    return (node.env.get("NODENAME") or node.name).strip().lower()


def is_tabby_node(node: Node) -> bool:
    """A node whose image runs the real agent (not the placeholder used when the agent is absent)."""
    handler = kinds.handler_for(node.image)
    return handler.name == "tabby-node" and not isinstance(handler, kinds.TabbyNodePlaceholder)


# --------------------------------------------------------------------------- the plugin call


def netconf(node: Node, labels: dict[str, str], ports: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The single-plugin netconf a runtime builds from ``manifests/cni/10-tabby.conflist``.

    As libcni does: the list's ``cniVersion`` and ``name`` go into the plugin's entry, and a
    capability the plugin declares (``labels``) arrives as ``runtimeConfig``. A node with ``IP6`` in its
    env also gets an IPv6 address per pod (``ipam.assign_ipv6``). ``nodename`` is
    set as the installer on that node would set it, so the plugin finds this node's agent.
    """
    try:
        conflist = json.loads(CONFLIST.read_text())
        entry = next(p for p in conflist["plugins"] if p.get("type") == "tabby")
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise LabError(f"{CONFLIST}: cannot read the tabby network configuration ({exc})") from None
    conf: dict[str, Any] = {"cniVersion": conflist.get("cniVersion", "1.0.0"), "name": conflist.get("name", "tabby"),
                            **entry, "nodename": nodename(node)}
    if node.env.get("IP6", "").strip().lower() not in ("", "none") and isinstance(conf.get("ipam"), dict):
        # a dual-stack node (calico-node's IP6 set): its CNI config asks for an IPv6 address too, as the one
        # calico's installer writes with assign_ipv6 "true" for a dual-stack cluster
        conf["ipam"] = {**conf["ipam"], "assign_ipv6": "true"}
    if node.env.get("TABBY_RUN_DIR"):
        conf["agent_socket"] = str(Path(node.env["TABBY_RUN_DIR"]) / "agent.sock")
    if (entry.get("capabilities") or {}).get("labels"):
        conf["runtimeConfig"] = {"labels": dict(labels)}
    if ports:  # the pod's named container ports (what a kubelet knows from the pod spec)
        conf.setdefault("runtimeConfig", {})["ports"] = [dict(p) for p in ports]
    return conf


def plugin_argv() -> list[str]:
    """The checkout's plugin with this interpreter (what install.sh installs), or ``$TABBY_LAB_CNI_PLUGIN``."""
    installed = os.environ.get(PLUGIN_ENV)
    if installed:
        if not os.access(installed, os.X_OK):
            raise LabError(f"{PLUGIN_ENV}={installed}: not an executable CNI plugin")
        return [installed]
    return [sys.executable, "-I", "-S", str(PLUGIN_FILE), "tabby"]


def call_plugin(lab: Lab, pod: PodRecord, command: str, conf: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run the plugin in the pod's node namespace, env + stdin as the CNI spec says; (exit, JSON out)."""
    node = lab.topology.node(pod.node)
    env = {
        **kinds.node_env(node),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": f"/var/run/netns/{pod.netns}",  # as runtimes pass it (/var/run -> /run)
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name}",
        "CNI_PATH": CNI_PATH,
    }
    argv = netns.netns_argv(node.netns, plugin_argv())
    try:
        proc = subprocess.run(argv, input=json.dumps(conf), capture_output=True, text=True, env=env,
                              timeout=PLUGIN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"node {pod.node}: CNI {command} for pod {pod.key} did not finish in {PLUGIN_TIMEOUT:.0f}s") \
            from None
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        detail = (proc.stdout + proc.stderr).strip().splitlines()
        raise LabError(f"node {pod.node}: CNI {command} for pod {pod.key} printed no JSON (exit {proc.returncode})"
                       + (f": {detail[-1]}" if detail else "")) from None
    return proc.returncode, out if isinstance(out, dict) else {}


def _error_line(command: str, pod: PodRecord, out: dict[str, Any]) -> str:
    msg = str(out.get("msg") or "no error message")
    details = str(out.get("details") or "")
    return (f"node {pod.node}: CNI {command} for pod {pod.key} failed (code {out.get('code', '?')}): {msg}"
            + (f" ({details})" if details else ""))


# --------------------------------------------------------------------------- add / del / list


def _locked_state(topo: Topology) -> LabState:
    state = LabState.load(topo.name)
    if state is None:
        raise LabError(f"lab {topo.name} is not deployed (tabbyctl lab deploy -t {topo.path})")
    return state


def pods(lab: Lab) -> list[PodRecord]:
    """The lab's pods as recorded (fresh from disk: another command may have added some)."""
    state = LabState.load(lab.name)
    return [PodRecord.from_state(p) for p in (state.pods if state else [])]


def add_pod(topology: Topology | str | Path | None, node_name: str, name: str, *, namespace: str = "default",
            labels: dict[str, str] | None = None, timeout: float = ADD_TIMEOUT,
            ports: Sequence[dict[str, Any]] = ()) -> PodRecord:
    """Create the pod's namespace and run CNI ADD in ``node_name``; retries codes 11/50 until ``timeout``.

    A failed ADD is undone (DEL, namespace deleted, record dropped) and raised as one line.
    """
    lab = load(topology)
    topo = lab.topology
    check_names(name, namespace)
    if node_name not in topo.nodes:
        raise LabError(f"lab {topo.name} has no node {node_name!r} (nodes: {', '.join(topo.nodes)})")
    node = topo.nodes[node_name]
    if not is_tabby_node(node):
        raise LabError(f"node {node_name} runs image {node.image}, not tabby/node: pods need a Tabby node agent")
    if not netns.exists(node.netns):
        raise LabError(f"node {node_name}: namespace {node.netns} is missing (lab not fully deployed)")
    labels = dict(labels or {})
    conf = netconf(node, labels, ports)
    pod = PodRecord(name=name, namespace=namespace, node=node_name, netns=pod_netns(node, namespace, name),
                    container_id=uuid.uuid4().hex, labels=labels)
    with lab_lock(topo.name):
        state = _locked_state(topo)
        for other in state.pods:
            if other.get("key") == pod.key:
                raise LabError(f"pod {pod.key} already exists in lab {topo.name} (on node {other.get('node')}); "
                               f"tabbyctl lab pod del -t {topo.path} {other.get('node')} {name}")
        if netns.exists(pod.netns):
            raise LabError(f"namespace {pod.netns} already exists (a leftover? ip netns del {pod.netns})")
        state.record_netns(pod.netns)  # before it exists: destroy must find it whatever happens next
        state.record_pod(pod.to_state())
    try:
        netns.add(pod.netns)  # a failure here is undone like a failed ADD: no record left behind
        out = _add_with_retry(lab, pod, conf, timeout)
    except BaseException:
        _undo(lab, pod, conf)
        raise
    pod.ips = [str(ip["address"]) for ip in out.get("ips") or [] if isinstance(ip, dict) and "address" in ip]
    pod.status = "ready"
    with lab_lock(topo.name):
        _locked_state(topo).record_pod(pod.to_state())
    log.info("pod added", lab=topo.name, node=node_name, pod=pod.key, ips=pod.ips)
    return pod


def _add_with_retry(lab: Lab, pod: PodRecord, conf: dict[str, Any], timeout: float) -> dict[str, Any]:
    """What a kubelet does with "try again later": retry, bounded by ``timeout``, with backoff."""
    deadline = time.monotonic() + timeout
    delay = 0.25
    while True:
        code, out = call_plugin(lab, pod, "ADD", conf)
        if code == 0:
            return out
        if out.get("code") not in RETRY_CODES or time.monotonic() + delay > deadline:
            raise LabError(_error_line("ADD", pod, out))
        log.debug("pod add retry", pod=pod.key, code=out.get("code"), msg=out.get("msg"))
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _undo(lab: Lab, pod: PodRecord, conf: dict[str, Any]) -> None:
    """After a failed ADD: DEL (as a runtime must), then the namespace and the record go."""
    try:
        call_plugin(lab, pod, "DEL", conf)
    except LabError as exc:
        log.warning("pod add: DEL after a failed ADD failed", pod=pod.key, error=str(exc))
    try:
        netns.delete(pod.netns)
    except LabError as exc:
        log.warning("pod add: cannot delete the namespace", pod=pod.key, error=str(exc))
    with lab_lock(lab.name):
        state = LabState.load(lab.name)
        if state is not None:
            state.forget_pod(pod.key)


def find_pod(lab: Lab, node_name: str, name: str, namespace: str) -> PodRecord:
    for pod in pods(lab):
        if pod.name == name and pod.namespace == namespace:
            if pod.node != node_name:
                raise LabError(f"pod {pod.key} is on node {pod.node}, not {node_name}")
            return pod
    raise LabError(f"lab {lab.name} has no pod {namespace}/{name} (tabbyctl lab pod list -t {lab.topology.path})")


def del_pod(topology: Topology | str | Path | None, node_name: str, name: str, *, namespace: str = "default",
            force: bool = False) -> PodRecord:
    """CNI DEL, then the namespace and the record go. A failed DEL keeps both unless ``force``."""
    lab = load(topology)
    check_names(name, namespace)
    pod = find_pod(lab, node_name, name, namespace)
    node = lab.topology.node(pod.node)
    code, out = call_plugin(lab, pod, "DEL", netconf(node, pod.labels))
    if code != 0 and not force:
        raise LabError(_error_line("DEL", pod, out) + "; the pod stays (retry, or --force to remove it anyway)")
    netns.delete(pod.netns)
    with lab_lock(lab.name):
        state = _locked_state(lab.topology)
        state.forget_pod(pod.key)
        if pod.netns in state.netns:
            state.netns.remove(pod.netns)
            state.save()
    log.info("pod deleted", lab=lab.name, pod=pod.key)
    return pod


def _tabbyctl(lab: Lab, node: Node, args: Sequence[str]) -> str:
    """``tabbyctl ARGS`` inside ``node`` (its environment names the lab's etcd); stdout, or a LabError
    with tabbyctl's own message."""
    argv = kinds.node_argv(node, lab.state, [str(Path(sys.executable).parent / "tabbyctl"), *args])
    try:
        proc = subprocess.run(argv, env=kinds.node_env(node), capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"node {node.name}: tabbyctl {' '.join(args)} timed out") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"node {node.name}: tabbyctl {' '.join(args[:2])}: {detail[-1] if detail else 'failed'}")
    return proc.stdout


def label_pod(topology: Topology | str | Path | None, node_name: str, name: str, *, namespace: str = "default",
              labels: dict[str, str] | None = None, remove: Sequence[str] = ()) -> PodRecord:
    """Change a live pod's labels as a Kubernetes sync would: its WorkloadEndpoint's labels, through
    ``tabbyctl label workloadendpoint`` (read-modify-write on the revision), set (overwriting) or
    removed; the lab's record follows. Policy sees the change at once."""
    lab = load(topology)
    check_names(name, namespace)
    pod = find_pod(lab, node_name, name, namespace)
    node = lab.topology.node(pod.node)
    items = json.loads(_tabbyctl(lab, node, ["get", "workloadendpoints", "--namespace", namespace, "-o", "json"]))
    weps = [w for w in items.get("items", []) if (w.get("spec") or {}).get("containerID") == pod.container_id]
    if not weps:
        raise LabError(f"pod {pod.key}: no WorkloadEndpoint with its container id in the datastore")
    wep = weps[0]["metadata"]["name"]
    for key, value in (labels or {}).items():
        _tabbyctl(lab, node, ["label", "workloadendpoint", wep, "--namespace", namespace, f"{key}={value}",
                              "--overwrite"])
        pod.labels[key] = value
    for key in remove:
        _tabbyctl(lab, node, ["label", "workloadendpoint", wep, "--namespace", namespace, key, "--remove"])
        pod.labels.pop(key, None)
    with lab_lock(lab.name):
        _locked_state(lab.topology).record_pod(pod.to_state())
    log.info("pod labelled", lab=lab.name, pod=pod.key, labels=pod.labels)
    return pod


# --------------------------------------------------------------------------- check


def _ping(source: str, ip: str, count: int, wait: int) -> bool:
    argv = netns.netns_argv(source, ["ping", "-n", "-q", "-c", str(count), "-W", str(wait), ip])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=count * (wait + 1) + 5, check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def check(topology: Topology | str | Path | None, *, count: int = 2, wait: int = 2,
          workers: int = PING_WORKERS) -> dict[str, Any]:
    """All-pairs ping between the lab's pods (each pod to every IP of every other pod), in parallel.

    Returns ``{"pods", "pairs", "ok", "failed": [{"from", "to", "ip"}], "matrix": {from: {to: bool}}}``;
    a pair counts as ok only when every IP of the target answered.
    """
    lab = load(topology)
    ready = [p for p in pods(lab) if p.status == "ready"]
    if not ready:
        raise LabError(f"lab {lab.name} has no pods (tabbyctl lab pod add -t {lab.topology.path} NODE NAME)")
    missing = [p.label for p in ready if not netns.exists(p.netns)]
    if missing:
        raise LabError(f"pod namespace(s) missing: {', '.join(missing)} (deleted by hand? pod del --force)")
    probes = [(src, dst, ip.split("/")[0]) for src in ready for dst in ready if src.key != dst.key for ip in dst.ips]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(probes) or 1))) as pool:
        results = list(pool.map(lambda probe: _ping(probe[0].netns, probe[2], count, wait), probes))
    matrix: dict[str, dict[str, bool]] = {p.label: {} for p in ready}
    failed: list[dict[str, str]] = []
    for (src, dst, ip), ok in zip(probes, results, strict=True):
        matrix[src.label][dst.label] = matrix[src.label].get(dst.label, True) and ok
        if not ok:
            failed.append({"from": src.label, "to": dst.label, "ip": ip})
    pairs = sum(len(row) for row in matrix.values())
    good = sum(1 for row in matrix.values() for ok in row.values() if ok)
    return {"pods": len(ready), "pairs": pairs, "ok": good, "failed": failed, "matrix": matrix}
