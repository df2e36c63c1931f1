"""Flow-logging benchmark: the cost of flow logs on the dataplane, and how fast a denial is visible.

Run: ``.venv/bin/python tests/bench/flows.py [--quick]`` (root: network namespaces). Starts its own
etcd, one node namespace with a real Tabby agent, two pods through the real CNI plugin and a
NetworkPolicy isolating the server pod (TCP 8080 and 5201 allowed from the client, everything else
ends in the default deny), so every new connection crosses two logged verdicts (the client's
egress profile allow, the server's ingress rule) when logging is on.

Rounds alternate logging ON and OFF in the same run (the agent restarted with ``TABBY_FLOW_LOGS``
true/false; each round waits until the kernel's table has, or has not, its log statements):

* ``ratio`` = median new TCP connections per second ON / OFF, from a bounded loop of short
  connects between the two pods (target >= 0.9: logging acts at connection setup);
* ``throughput_ratio`` = median iperf3 throughput ON / OFF (target >= 0.95; each round's figure is the
  better of two iperf3 runs: on a shared machine the other run is mostly someone else's load);
* ``record_p99_ms``: ON rounds only, the time from a denied SYN (a non-blocking connect from the
  client pod to port 81) to its record arriving at a long-poll of the node's flow API (target <= 200).

Progress on stderr; the last stdout line is one JSON object. Everything the bench creates is
removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from felix_like.netns import run_in_netns  # noqa: E402
from tests.helpers.etcd import EtcdServer  # noqa: E402
from tests.integration.node.conftest import NodeLab, Pod, apply_pool, in_ns, sh  # noqa: E402

PYTHON = sys.executable
TABBYCTL = str(Path(PYTHON).parent / "tabbyctl")
API_PORT = 14299
TARGET_RATIO, TARGET_TPUT, TARGET_P99 = 0.9, 0.95, 200.0
SETTLE = 2.0

SERVER = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1024); s.settimeout(0.5)
while time.monotonic() < end:
    try:
        c, _ = s.accept(); c.close()
    except OSError:
        pass
"""

CONNECTS = """
import socket, sys, time
ip, n, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = 0
start = time.monotonic()
for _ in range(n):
    if time.monotonic() - start > limit:
        break
    try:
        s = socket.create_connection((ip, 8080), timeout=1.0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
        s.close(); ok += 1
    except OSError:
        pass
print(ok, time.monotonic() - start)
"""


def progress(msg: str) -> None:
    print(f"[bench flows] {msg}", file=sys.stderr, flush=True)


def ctl(env: dict[str, str], *args: str, input: str | None = None) -> str:
    proc = subprocess.run([TABBYCTL, *args], input=input, capture_output=True, text=True, env=env, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"tabbyctl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def make_pod(lab: NodeLab, node: str, name: str, namespace: str, labels: dict[str, str]) -> Pod:
    import uuid

    ns = f"tbp-{lab.tag}-{name}"
    sh("ip", "netns", "add", ns)
    pod = Pod(name, ns, node, uuid.uuid4().hex)
    lab.pods.append(pod)
    code, out = lab.plugin(node, "ADD", container_id=pod.container_id, netns=f"/run/netns/{ns}",
                           args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}", conf=lab.netconf(labels=labels))
    if code != 0:
        raise RuntimeError(f"pod {name}: ADD failed: {out}")
    pod.result = out
    in_ns(ns, "ip", "link", "set", "lo", "up")
    return pod


def restart_agent(lab: NodeLab, node: str, logs_on: bool, wait_table: bool = True) -> None:
    agent = lab.agents.get(node)
    if agent is not None:
        agent.stop()
        agent.env["TABBY_FLOW_LOGS"] = "true" if logs_on else "false"
        agent.start()
        lab.wait_ready(node, timeout=60)
    else:
        lab.start_agent(node, TABBY_FLOW_LOGS="true" if logs_on else "false", TABBY_FLOW_API_PORT=str(API_PORT))
    if not wait_table:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        table = in_ns(lab.nodes[node], "nft", "list", "table", "inet", "tabby-policy", check=False).stdout
        has_log = "log prefix" in table
        if "p-" in table and has_log == logs_on:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the table did not turn flow logs {'on' if logs_on else 'off'} within 60 s")


def connect_rate(cli: Pod, ip: str, n: int, limit: float) -> float:
    out = in_ns(cli.netns, PYTHON, "-c", CONNECTS, ip, str(n), str(limit), timeout=limit + 30).stdout.split()
    ok, elapsed = int(out[0]), float(out[1])
    if ok < n // 2:
        raise RuntimeError(f"only {ok} of {n} connects succeeded")
    return ok / elapsed


def iperf(cli: Pod, srv: Pod, seconds: float) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", srv.netns, "iperf3", "-s", "-1", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = in_ns(cli.netns, "iperf3", "-c", srv.ip, "-p", "5201", "-t", str(seconds), "-J",
                    timeout=seconds + 30).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def http_in(netns: str, port: int, path: str, timeout: float) -> list[dict[str, Any]]:
    sock = run_in_netns(netns, lambda: socket.create_connection(("127.0.0.1", port), timeout=timeout))
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    finally:
        sock.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def record_latencies(lab: NodeLab, node: str, cli: Pod, srv: Pod, probes: int) -> list[float]:
    """Denied SYN (non-blocking connect to port 81 from the client pod) -> its record at the flow API."""
    out = []
    seq = max((r["seq"] for r in http_in(lab.nodes[node], API_PORT, "/v1/flows?last=1", 5)), default=0)
    for _ in range(probes):
        s = run_in_netns(cli.netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.setblocking(False)
        s.bind(("0.0.0.0", 0))
        sport = s.getsockname()[1]
        t0 = time.monotonic()
        with contextlib.suppress(BlockingIOError):
            s.connect((srv.ip, 81))
        seen = None
        deadline = t0 + 3
        while seen is None and time.monotonic() < deadline:
            recs = http_in(lab.nodes[node], API_PORT, f"/v1/flows?after={seq}&wait=2", 5)
            for r in recs:
                seq = max(seq, r["seq"])
                if r["destination"]["port"] == 81 and r["source"]["port"] == sport and r["verdict"] == "denied":
                    seen = time.monotonic()
        s.close()
        if seen is None:
            raise RuntimeError("a denied SYN produced no record within 3 s")
        out.append((seen - t0) * 1000)
        time.sleep(0.05)
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter rounds (under two minutes)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("tests/bench/flows.py: needs root (network namespaces)")
    if shutil.which("iperf3") is None:
        sys.exit("tests/bench/flows.py: iperf3 is missing (apt-get install iperf3; make setup installs it)")
    pairs = 5
    n_conn, conn_limit = (300, 8.0) if args.quick else (1500, 20.0)
    iperf_s = 1 if args.quick else 3
    probes = 10 if args.quick else 30
    rates: dict[bool, list[float]] = {True: [], False: []}
    tputs: dict[bool, list[float]] = {True: [], False: []}
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tabby-bench-flows-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "etcd").mkdir()
        etcd = EtcdServer(tmp / "etcd")
        etcd.start()
        env = dict(os.environ)
        for var in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_USERNAME", "ETCD_PASSWORD"):
            env.pop(var, None)
        env["ETCD_ENDPOINTS"] = etcd.endpoint
        env["TABBY_ETCD_PREFIX"] = "/tabby-bench-flows/"
        lab = NodeLab(tmp, env)
        server = None
        try:
            apply_pool(env)
            lab.add_nodes(1)
            (node,) = lab.nodes
            # one node: no veth to a peer node; a veth whose other end stays in the node (no dummy module here)
            in_ns(lab.nodes[node], "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
            in_ns(lab.nodes[node], "ip", "link", "set", "eth0", "up")
            lab.set_address(node)
            restart_agent(lab, node, True, wait_table=False)
            srv = make_pod(lab, node, "srv", "bench", {"app": "srv"})
            cli = make_pod(lab, node, "cli", "bench", {"role": "client"})
            ctl(env, "apply", "-f", "-", input=json.dumps({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "srv", "namespace": "bench"},
                "spec": {"podSelector": {"matchLabels": {"app": "srv"}}, "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": 8080}, {"port": 5201}]}]}}))
            server = subprocess.Popen(["ip", "netns", "exec", srv.netns, PYTHON, "-c", SERVER, "3600"])
            time.sleep(1)
            for i in range(pairs):
                for on in ((True, False) if i % 2 == 0 else (False, True)):
                    restart_agent(lab, node, on)
                    time.sleep(SETTLE)  # the new agent's start-up work is over before anything is timed
                    rate = connect_rate(cli, srv.ip, n_conn, conn_limit)
                    tput = max(iperf(cli, srv, iperf_s) for _ in range(2))
                    rates[on].append(rate)
                    tputs[on].append(tput)
                    extra = ""
                    if on:
                        lat = record_latencies(lab, node, cli, srv, probes)
                        latencies.extend(lat)
                        extra = f", record p50 {statistics.median(lat):.1f} ms"
                    progress(f"round {i + 1} logging {'ON ' if on else 'OFF'}: {rate:.0f} conn/s, "
                             f"{tput:.2f} Gbit/s{extra}")
        finally:
            if server is not None:
                server.kill()
                server.wait()
            lab.cleanup()
            etcd.stop()
    on_rate, off_rate = statistics.median(rates[True]), statistics.median(rates[False])
    on_tp, off_tp = statistics.median(tputs[True]), statistics.median(tputs[False])
    ratio, tratio, p99 = on_rate / off_rate, on_tp / off_tp, pct(latencies, 0.99)
    result = {
        "bench": "flows", "quick": args.quick,
        "ours": round(on_rate, 1), "baseline": round(off_rate, 1),
        "unit": "new TCP connections/s between two pods, flow logging on (ours) vs off (baseline), median of rounds",
        "ratio": round(ratio, 3), "target": TARGET_RATIO,
        "throughput_gbps": round(on_tp, 3), "baseline_throughput_gbps": round(off_tp, 3),
        "throughput_ratio": round(tratio, 3), "throughput_target": TARGET_TPUT,
        "record_p50_ms": round(statistics.median(latencies), 1), "record_p99_ms": round(p99, 1),
        "record_target_ms": TARGET_P99, "record_probes": len(latencies),
        "rounds": pairs, "connects_per_round": n_conn,
        "pass": bool(ratio >= TARGET_RATIO and tratio >= TARGET_TPUT and p99 <= TARGET_P99),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
