"""CNI benchmark: pod ADD/DEL through the real ``tabby`` plugin and agent vs ``ptp`` + ``host-local``.

Run: ``.venv/bin/python tests/bench/cni.py [--quick]`` (root: network namespaces). Starts its own
etcd, one node namespace with a real Tabby agent (``python -m controller.node``), and executes the
plugins as a container runtime does: a fresh process per call, CNI_* environment variables and the
network configuration on stdin, running in the node's network namespace (entered with setns(2) in
the child, so no ``ip netns exec`` wrapper is timed). The tabby plugin is the installed form a
runtime executes (manifests/cni/install.sh into the bench's own bin directory: the /bin/sh
launcher running the node's python3 on the precompiled plugin), not the checkout's plugin.py.
Progress on stderr; the last stdout line is one JSON object (design.md benchmark contract).

(a) N sequential ADDs, then N sequential DELs (N = 200; 40 with --quick). Tabby and the reference
    (``/usr/lib/cni/ptp`` with ``host-local``) alternate pod by pod, so both see the same load on a
    shared machine. p50/p99 of each.
(b) burst: 30 pods ADDed at once on the node (kubelet starting a node full of pods): the time until
    all 30 ADDs have returned successfully, Tabby then the reference, same run.
    ``plugin_version_p50_ms``: the tabby plugin answering VERSION alone (its interpreter start,
    no agent), timed beside them: the floor no agent work can go below.
(c) where Tabby's ADD time goes: the agent logs ``phases_ms`` with every ``cni.added`` /
    ``cni.deleted`` (controller/node/cni_handlers.py ``Phases``); medians per phase are reported
    for the sequential and the burst ADDs.

``ratio`` = Tabby ADD p50 / ptp ADD p50 (target <= 2.0); ``del_ratio`` the same for DEL;
``burst30_s`` Tabby's burst time and ``burst30_ratio`` against the reference's (target <= 2.0).
Every namespace, process and file the bench creates is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.etcd import EtcdServer  # noqa: E402

PYTHON = sys.executable
TABBYCTL = str(Path(PYTHON).parent / "tabbyctl")
INSTALL = ROOT / "manifests" / "cni" / "install.sh"
# The PATH a kubelet/containerd gives plugins: the node's python3, not a developer's shims.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REF_DIR = Path("/usr/lib/cni")
TARGET = 2.0
BURST = 30
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def progress(msg: str) -> None:
    print(f"[bench cni] {msg}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


class Node:
    """One node namespace, its agent, and a runner for plugin calls inside it."""

    def __init__(self, tmp: Path, etcd_endpoint: str) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.name = f"bn{self.tag}"
        self.ns = f"tbb-{self.tag}"
        self.tmp = tmp
        self.run_root = tmp / "run"
        self.log = tmp / "agent.log"
        self.etcd_endpoint = etcd_endpoint
        self.prefix = f"/bench-cni-{self.tag}/"
        self.pod_ns: list[str] = []
        self.agent: subprocess.Popen[bytes] | None = None
        self._ns_fd: int | None = None
        self.bin_dir = tmp / "cni-bin"

    def install_plugin(self) -> None:
        proc = subprocess.run(["sh", str(INSTALL), "--bin-dir", str(self.bin_dir), "--no-conf"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PATH": SYSTEM_PATH})
        if proc.returncode != 0:
            raise RuntimeError(f"install.sh failed: {proc.stderr.strip()}")

    # -- setup / teardown ------------------------------------------------------------------------
    def create(self) -> None:
        sh("ip", "netns", "add", self.ns)
        self._ns_fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        # The node's uplink: a veth pair with both ends inside the node namespace (nothing leaves it).
        sh("ip", "-n", self.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        sh("ip", "-n", self.ns, "link", "set", "eth0p", "up")
        sh("ip", "-n", self.ns, "addr", "add", "10.213.99.1/24", "dev", "eth0")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "TABBY_"))}
        env.update({"ETCD_ENDPOINTS": self.etcd_endpoint, "TABBY_ETCD_PREFIX": self.prefix})
        return env

    def apply_pool(self) -> None:
        doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "benchpool"},
               "spec": {"cidr": "10.246.0.0/16", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never"}}
        proc = subprocess.run([TABBYCTL, "apply", "-f", "-"], input=json.dumps(doc), capture_output=True,
                              text=True, env=self.env(), timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"tabbyctl apply failed: {proc.stderr.strip()}")

    def start_agent(self) -> None:
        env = self.env()
        env.update({
            "NODENAME": self.name, "TABBY_NETNS": self.ns, "TABBY_RUN_ROOT": str(self.run_root),
            "TABBY_LOG_FORMAT": "json", "TABBY_LOG_LEVEL": "info", "IP_AUTODETECTION_METHOD": "interface=eth0",
            "PYTHONPATH": str(ROOT), "CALICO_NETWORKING_BACKEND": "vxlan",
        })
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.agent = subprocess.Popen([PYTHON, "-m", "controller.node"], env=env, stdout=out,
                                      stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise RuntimeError(f"agent died: {self.log.read_text(errors='replace')[-2000:]}")
            if (self.run_root / self.name / "agent.sock").exists():
                code, _ = self.tabby("STATUS", "", "", cni_version="1.1.0")
                if code == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"agent not ready in 60 s: {self.log.read_text(errors='replace')[-2000:]}")

    def new_pod_ns(self, label: str) -> str:
        ns = f"tbbp-{self.tag}-{label}"
        sh("ip", "netns", "add", ns)
        self.pod_ns.append(ns)
        return ns

    def cleanup(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.agent.wait(timeout=10)
        if self._ns_fd is not None:
            os.close(self._ns_fd)
        for ns in [*self.pod_ns, self.ns]:
            sh("ip", "netns", "del", ns, check=False)

    # -- plugin calls ----------------------------------------------------------------------------
    def _enter(self) -> None:  # runs in the child between fork and exec
        assert self._ns_fd is not None
        if _libc.setns(self._ns_fd, CLONE_NEWNET) != 0:
            os._exit(97)

    def _cni_env(self, command: str, container_id: str, netns: str, cni_path: str, args: str = "") -> dict[str, str]:
        return {"PATH": SYSTEM_PATH, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_ARGS": args, "CNI_PATH": cni_path,
                "TABBY_RUN_ROOT": str(self.run_root)}

    def spawn(self, argv: list[str], env: dict[str, str], conf: dict[str, Any]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=self._enter)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(conf))
        proc.stdin.close()
        proc.stdin = None  # written in full: communicate() only reads
        return proc

    def tabby_proc(self, command: str, cid: str, netns: str, cni_version: str = "1.0.0",
                   pod: str = "") -> subprocess.Popen[str]:
        conf = {"cniVersion": cni_version, "name": "tabbynet", "type": "tabby", "ipam": {"type": "tabby-ipam"}}
        args = f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}" if pod else ""
        return self.spawn([str(self.bin_dir / "tabby")], self._cni_env(command, cid, netns, str(self.bin_dir), args),
                          conf)

    def ref_proc(self, command: str, cid: str, netns: str) -> subprocess.Popen[str]:
        conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "ptp", "ipMasq": False, "mtu": 1500,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.247.0.0/16"}]],
                         "dataDir": str(self.tmp / "host-local")}}
        return self.spawn([str(REF_DIR / "ptp")], self._cni_env(command, cid, netns, str(REF_DIR)), conf)

    def tabby(self, command: str, cid: str, netns: str, cni_version: str = "1.0.0", pod: str = "") -> tuple[int, str]:
        return finish(self.tabby_proc(command, cid, netns, cni_version, pod))


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out or err


def timed(proc_fn: Any, what: str) -> float:
    t = time.perf_counter()
    code, out = finish(proc_fn())
    dt = time.perf_counter() - t
    if code != 0:
        raise RuntimeError(f"{what} failed ({code}): {out.strip()[:500]}")
    return dt


def burst(procs_fn: list[Any], what: str) -> float:
    t = time.perf_counter()
    procs = [fn() for fn in procs_fn]
    results = [finish(p) for p in procs]
    dt = time.perf_counter() - t
    bad = [out for code, out in results if code != 0]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} of {len(procs)} failed, first: {bad[0].strip()[:500]}")
    return dt


def agent_phases(log: Path, event: str, skip: int, count: int) -> dict[str, Any]:
    """Median per phase over ``count`` ``event`` lines of the agent log after the first ``skip``."""
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == event and isinstance(rec.get("phases_ms"), dict):
            rows.append(rec)
    rows = rows[skip:skip + count]
    phases: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r["phases_ms"].items():
            phases.setdefault(k, []).append(float(v))
    out: dict[str, Any] = {k: round(statistics.median(v), 2) for k, v in phases.items()}
    if rows:
        out["total"] = round(statistics.median(float(r.get("ms", 0)) for r in rows), 2)
    out["n"] = len(rows)
    return out


def ms(v: float) -> float:
    return round(v * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 sequential pods instead of 200 (under two minutes)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("tests/bench/cni.py: needs root (network namespaces)")
    if not (REF_DIR / "ptp").exists() or not (REF_DIR / "host-local").exists():
        sys.exit(f"tests/bench/cni.py: the reference plugins are missing in {REF_DIR}"
                 " (apt-get install containernetworking-plugins)")
    n = 40 if args.quick else 200
    with tempfile.TemporaryDirectory(prefix="tabby-bench-cni-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "etcd").mkdir()
        etcd = EtcdServer(tmp / "etcd")
        etcd.start()
        node = Node(tmp, etcd.endpoint)
        try:
            node.create()
            node.install_plugin()
            node.apply_pool()
            node.start_agent()
            progress(f"agent {node.name} ready in {node.ns}; creating {2 * (n + BURST) + 2} pod namespaces")
            t_ns = [node.new_pod_ns(f"t{i}") for i in range(n)]
            r_ns = [node.new_pod_ns(f"r{i}") for i in range(n)]
            tb_ns = [node.new_pod_ns(f"tb{i}") for i in range(BURST)]
            rb_ns = [node.new_pod_ns(f"rb{i}") for i in range(BURST)]
            warm_t, warm_r = node.new_pod_ns("tw"), node.new_pod_ns("rw")
            # Warm-up outside the measurement: the agent's first block claim, the page cache.
            timed(lambda: node.tabby_proc("ADD", "warm", f"/run/netns/{warm_t}", pod="warm"), "warm-up ADD")
            timed(lambda: node.ref_proc("ADD", "warm", f"/run/netns/{warm_r}"), "warm-up ptp ADD")
            warm_logs = 1
            progress(f"(a) {n} sequential ADDs, tabby and ptp alternating")
            t_add, r_add, t_del, r_del, t_ver = [], [], [], [], []
            for i in range(n):
                # The floor: the tabby plugin answering VERSION itself (interpreter start, no agent).
                t_ver.append(timed(lambda: node.tabby_proc("VERSION", "", ""), "tabby VERSION"))
                t_add.append(timed(lambda i=i: node.tabby_proc("ADD", f"t{i}", f"/run/netns/{t_ns[i]}", pod=f"p{i}"),
                                   f"tabby ADD {i}"))
                r_add.append(timed(lambda i=i: node.ref_proc("ADD", f"r{i}", f"/run/netns/{r_ns[i]}"), f"ptp ADD {i}"))
            progress(f"    tabby p50 {ms(statistics.median(t_add))} ms, ptp p50 {ms(statistics.median(r_add))} ms")
            progress(f"(a) {n} sequential DELs")
            for i in range(n):
                t_del.append(timed(lambda i=i: node.tabby_proc("DEL", f"t{i}", f"/run/netns/{t_ns[i]}", pod=f"p{i}"),
                                   f"tabby DEL {i}"))
                r_del.append(timed(lambda i=i: node.ref_proc("DEL", f"r{i}", f"/run/netns/{r_ns[i]}"), f"ptp DEL {i}"))
            progress(f"    tabby p50 {ms(statistics.median(t_del))} ms, ptp p50 {ms(statistics.median(r_del))} ms")
            progress(f"(b) burst: {BURST} ADDs at once")
            t_burst = burst([lambda i=i: node.tabby_proc("ADD", f"tb{i}", f"/run/netns/{tb_ns[i]}", pod=f"b{i}")
                             for i in range(BURST)], "tabby burst ADD")
            r_burst = burst([lambda i=i: node.ref_proc("ADD", f"rb{i}", f"/run/netns/{rb_ns[i]}")
                             for i in range(BURST)], "ptp burst ADD")
            progress(f"    tabby {t_burst:.3f} s, ptp {r_burst:.3f} s")
            t_bdel = burst([lambda i=i: node.tabby_proc("DEL", f"tb{i}", f"/run/netns/{tb_ns[i]}", pod=f"b{i}")
                            for i in range(BURST)], "tabby burst DEL")
            r_bdel = burst([lambda i=i: node.ref_proc("DEL", f"rb{i}", f"/run/netns/{rb_ns[i]}")
                            for i in range(BURST)], "ptp burst DEL")
            time.sleep(0.5)  # the last log lines
            phases = {
                "add_sequential": agent_phases(node.log, "cni.added", warm_logs, n),
                "del_sequential": agent_phases(node.log, "cni.deleted", 0, n),
                "add_burst": agent_phases(node.log, "cni.added", warm_logs + n, BURST),
            }
            agent_ok = node.agent is not None and node.agent.poll() is None
        finally:
            node.cleanup()
            etcd.stop()
    ours, base = statistics.median(t_add), statistics.median(r_add)
    ratio = ours / base
    del_ratio = statistics.median(t_del) / statistics.median(r_del)
    burst_ratio = t_burst / r_burst
    result = {
        "bench": "cni",
        "quick": args.quick,
        "ours": ms(ours),
        "baseline": ms(base),
        "unit": "ms, CNI ADD p50 (tabby plugin + agent vs ptp + host-local, one node, sequential)",
        "ratio": round(ratio, 3),
        "target": TARGET,
        "pass": bool(ratio <= TARGET and burst_ratio <= TARGET and agent_ok),
        "pods": n,
        "add_p50_ms": ms(ours), "add_p99_ms": ms(pct(t_add, 0.99)),
        "ref_add_p50_ms": ms(base), "ref_add_p99_ms": ms(pct(r_add, 0.99)),
        "del_p50_ms": ms(statistics.median(t_del)), "del_p99_ms": ms(pct(t_del, 0.99)),
        "ref_del_p50_ms": ms(statistics.median(r_del)), "ref_del_p99_ms": ms(pct(r_del, 0.99)),
        "del_ratio": round(del_ratio, 3),
        "plugin_version_p50_ms": ms(statistics.median(t_ver)),
        "burst30_s": round(t_burst, 3),
        "ref_burst30_s": round(r_burst, 3),
        "burst30_ratio": round(burst_ratio, 3),
        "burst30_del_s": round(t_bdel, 3),
        "ref_burst30_del_s": round(r_bdel, 3),
        "agent_phases_ms": phases,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
