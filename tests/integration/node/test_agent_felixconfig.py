"""A real agent follows FelixConfiguration live: log level, periodic resync, the metrics endpoint.

The agent runs in its own namespace against real etcd, with none of the matching environment
variables set (the environment would win, as in Felix). FelixConfiguration documents are applied
with tabbyctl, as a user would; each change must take effect without a restart:

* ``default`` sets logSeverityScreen Debug, routeRefreshInterval 1s and a metrics endpoint on
  port 9095: debug lines appear, full resyncs run every second, /metrics answers on 9095 (not on
  Felix's default 9091);
* ``node.<name>`` wins over ``default``: prometheusMetricsEnabled false closes the port,
  routeRefreshInterval 0 stops the periodic resync, logSeverityScreen Warning silences info lines;
* ``node status -o json`` says what is in force and where each value came from.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from .conftest import PYTHON, NodeLab, apply_pool, in_ns
from .test_agent_metrics import SCRAPE

FELIX = """\
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: {name}
spec:
{spec}
"""


def _apply(env: dict[str, str], name: str, **spec: Any) -> None:
    body = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in spec.items())
    proc = subprocess.run([PYTHON, "-m", "controller.cli.main", "apply", "-f", "-"], env=env, capture_output=True,
                          text=True, input=FELIX.format(name=name, spec=body), timeout=30)
    assert proc.returncode == 0, proc.stderr


def _status(env: dict[str, str], node: str) -> dict[str, Any]:
    proc = subprocess.run([PYTHON, "-m", "controller.cli.main", "node", "status", "--nodename", node, "-o", "json"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _listening(ns: str, port: int) -> bool:
    return f":{port}" in in_ns(ns, "ss", "-Hltn", "sport", f"= :{port}").stdout


def test_agent_follows_felix_configuration_live(node_lab: NodeLab, etcd_env: dict[str, str]) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(1)
    (a,) = node_lab.nodes
    ns = node_lab.nodes[a]
    in_ns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    for dev in ("eth0p", "eth0"):
        in_ns(ns, "ip", "link", "set", dev, "up")
    node_lab.set_address(a)
    agent = node_lab.start_agent(a, TABBY_LOG_LEVEL="", TABBY_RESYNC_INTERVAL="")
    env = {**etcd_env, "TABBY_RUN_ROOT": str(node_lab.run_root)}

    felix = _status(env, a)["felix_configuration"]
    assert felix["logSeverityScreen"] == "info" and felix["routeRefreshInterval"] == 90.0
    assert felix["prometheusMetricsEnabled"] is False and felix["sources"]["routeRefreshInterval"] == "default"
    assert not _listening(ns, 9091) and not _listening(ns, 9095)

    _apply(env, "default", logSeverityScreen="Debug", routeRefreshInterval="1s", prometheusMetricsEnabled=True,
           prometheusMetricsPort=9095)
    _until(lambda: _listening(ns, 9095), 10, "the metrics endpoint on 9095")
    assert not _listening(ns, 9091)
    out = in_ns(ns, PYTHON, "-c", SCRAPE.replace("9091", "9095"), "/metrics").stdout
    assert out.startswith("200\n") and "tabby_agent_ready" in out
    felix = _status(env, a)["felix_configuration"]
    assert felix["logSeverityScreen"] == "debug" and felix["routeRefreshInterval"] == 1.0
    assert felix["sources"]["prometheusMetricsPort"] == "datastore"
    resyncs = _status(env, a)["dataplane"]["full_resyncs"]
    _until(lambda: _status(env, a)["dataplane"]["full_resyncs"] >= resyncs + 2, 6, "a full resync every second")
    _until(lambda: any(json.loads(line).get("level") == "debug" for line in agent.log_text().splitlines()
                       if line.startswith("{")), 5, "debug lines in the agent's log")

    # The node's own document wins over default.
    _apply(env, f"node.{a}", logSeverityScreen="Warning", routeRefreshInterval="0s", prometheusMetricsEnabled=False)
    _until(lambda: not _listening(ns, 9095), 10, "the metrics endpoint closed")
    felix = _status(env, a)["felix_configuration"]
    assert felix["logSeverityScreen"] == "warning" and felix["routeRefreshInterval"] is None
    time.sleep(0.5)  # a resync already due may still finish
    before = _status(env, a)["dataplane"]["full_resyncs"]
    lines_before = len(agent.log_text().splitlines())
    time.sleep(3)
    assert _status(env, a)["dataplane"]["full_resyncs"] == before, "periodic resync still running with 0s"
    late = [json.loads(line) for line in agent.log_text().splitlines()[lines_before:] if line.startswith("{")]
    assert not [e for e in late if e.get("level") in ("debug", "info")], late[:5]
