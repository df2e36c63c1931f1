"""The agent's Prometheus endpoint, scraped from inside the node's namespace (where it listens).

Before the node has an address: /readyz answers 503 with the reason and `tabbyctl node status`
prints it. After a pod ADD: CNI latency by command and result, routes programmed, this node's
IPAM block and addresses, apply histograms and the etcd counters are on /metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

from datastore import EtcdConfig

from .conftest import PYTHON, NodeLab, apply_pool, in_ns, sh

SCRAPE = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen("http://127.0.0.1:9091" + sys.argv[1], timeout=5)
    print(r.status); print(r.read().decode(), end="")
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode(), end="")
"""


def scrape(ns: str, path: str) -> tuple[int, str]:
    out = in_ns(ns, PYTHON, "-c", SCRAPE, path, check=False).stdout
    code, _, body = out.partition("\n")
    return (int(code) if code.isdigit() else 0), body


def value(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, re.M)
    assert m, f"{name}{{{want}}} not in metrics:\n{text[:3000]}"
    return float(m.group(1))


def test_metrics_and_probes_inside_the_node_namespace(node_lab: NodeLab, etcd_env: dict[str, str],
                                                      etcd_config: EtcdConfig) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(1)
    (a,) = node_lab.nodes
    ns = node_lab.nodes[a]
    node_lab.start_agent(a, wait=False, FELIX_PROMETHEUSMETRICSENABLED="true")
    deadline = time.monotonic() + 20
    code, body = 0, ""
    while time.monotonic() < deadline:
        code, body = scrape(ns, "/readyz")
        if code:
            break
        time.sleep(0.2)
    assert code == 503 and "waiting for the node address" in body, (code, body)
    assert scrape(ns, "/healthz") == (200, "ok\n")
    env = {**etcd_env, "TABBY_RUN_ROOT": str(node_lab.run_root)}
    status = subprocess.run([PYTHON, "-m", "controller.cli.main", "node", "status", "--nodename", a],
                            env=env, capture_output=True, text=True, timeout=30)
    assert status.stdout.startswith("Tabby process is running.\nNot ready: waiting for the node address"), status
    js = subprocess.run([PYTHON, "-m", "controller.cli.main", "node", "status", "--nodename", a, "-o", "json"],
                        env=env, capture_output=True, text=True, timeout=30)
    assert json.loads(js.stdout)["ready"] is False

    in_ns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    for dev in ("eth0p", "eth0"):
        in_ns(ns, "ip", "link", "set", dev, "up")
    node_lab.set_address(a)
    node_lab.wait_ready(a)
    assert scrape(ns, "/readyz") == (200, "ok\n")
    node_lab.add_pod(a, "web-1")
    node_lab.add_pod(a, "web-2")
    code, text = scrape(ns, "/metrics")
    assert code == 200
    assert value(text, "tabby_cni_request_seconds_count", command="ADD", result="ok") == 2
    assert value(text, "tabby_agent_ready", node=a) == 1
    assert value(text, "tabby_routes_programmed", node=a) >= 3  # two /32s and the block's blackhole
    assert value(text, "tabby_ipam_blocks", node=a) == 1
    assert value(text, "tabby_ipam_addresses", node=a, state="allocated") == 2
    assert value(text, "tabby_ipam_addresses", node=a, state="free") == 62
    assert value(text, "tabby_etcd_watch_resyncs_total") >= 1
    # each ADD's routes went through the fast lane: one incremental ("changes") apply each
    assert value(text, "tabby_dataplane_apply_seconds_count", kind="changes") >= 2
    # A refused request is counted under its error code (ADD asking for a pool that does not exist).
    bad_ns = f"tbp-{node_lab.tag}-bad"
    sh("ip", "netns", "add", bad_ns)
    node_lab.extra_ns.append(bad_ns)
    conf = node_lab.netconf(ipam={"type": "tabby-ipam", "ipv4_pools": ["10.99.0.0/16"]})
    code, out = node_lab.plugin(a, "ADD", container_id="c0ffee", netns=f"/run/netns/{bad_ns}", conf=conf)
    assert code == 1 and out.get("code"), out
    text = scrape(ns, "/metrics")[1]
    assert value(text, "tabby_cni_request_seconds_count", command="ADD", result=f"error_{out['code']}") == 1
    listening = in_ns(ns, "ss", "-Hltn", "sport", "= :9091").stdout
    assert ":9091" in listening
