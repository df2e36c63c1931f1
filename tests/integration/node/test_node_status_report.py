"""CalicoNodeStatus filled by the node agent: two real agents in a BGP mesh (namespaces, ExaBGP), a
CalicoNodeStatus for node a (classes Agent, BGP, Routes, updatePeriodSeconds 1) created with tabbyctl;
its status shows the speaker Ready, one Established NodeMesh peer, and the route to node b's pod block
learned from b; a CalicoNodeStatus for node b with updatePeriodSeconds 0 is never filled; the unit
rendering is checked for the BGP-less case too."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.node.nodestatus import render_status
from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.node.conftest import PYTHON, apply_pool

pytestmark = pytest.mark.root


@pytest.fixture
def bgp_lab(tmp_path: Path, etcd_env: dict[str, str]) -> Iterator[BgpLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = BgpLab(tmp_path, etcd_env)
    try:
        yield lab
    finally:
        lab.cleanup()


def tabbyctl(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), *args], capture_output=True, text=True, env=env,
                          input=input, timeout=60)


def _status(env: dict[str, str], name: str) -> dict[str, Any] | None:
    out = tabbyctl(env, "get", "caliconodestatus", name, "-o", "yaml")
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout).get("status")


def test_agent_fills_calico_node_status(bgp_lab: BgpLab, etcd_env: dict[str, str]) -> None:
    lab = bgp_lab
    apply_pool(etcd_env, BGP_POOL)
    lab.add_nodes(2)
    a, b = list(lab.nodes)
    for name in (a, b):
        lab.set_address(name)
        lab.start_agent(name)
    wait_for(f"{a}: 1 session Established", lambda: lab.established(a, 1), timeout=40)
    pod = lab.add_pod(b, "pb")
    block = lab.block_of(pod.ip, b)
    docs = f"""apiVersion: projectcalico.org/v3
kind: CalicoNodeStatus
metadata: {{name: status-a}}
spec: {{node: {a}, classes: [Agent, BGP, Routes], updatePeriodSeconds: 1}}
---
apiVersion: projectcalico.org/v3
kind: CalicoNodeStatus
metadata: {{name: status-b-never}}
spec: {{node: {b}, classes: [BGP], updatePeriodSeconds: 0}}
"""
    res = tabbyctl(etcd_env, "create", "-f", "-", input=docs)
    assert res.returncode == 0, res.stderr

    def filled() -> dict[str, Any] | None:
        st = _status(etcd_env, "status-a")
        routes = ((st or {}).get("routes") or {}).get("routesV4") or []
        if st and st["bgp"]["numberEstablishedV4"] == 1 and any(r["destination"] == block for r in routes):
            return st
        return None

    st = wait_for("status-a filled with the peer and b's block", filled, timeout=30)
    assert st["agent"]["birdV4"]["state"] == "Ready"
    assert st["agent"]["birdV4"]["version"] == "tabby-exabgp"
    assert st["agent"]["birdV4"]["routerID"] == lab.node_ip(a)
    reconf = st["agent"]["birdV4"]["lastReconfigurationTime"]
    assert st["agent"]["birdV4"]["lastBootTime"] <= reconf <= st["lastUpdated"], st["agent"]
    assert st["bgp"]["numberNotEstablishedV4"] == 0
    since = st["bgp"]["peersV4"][0]["since"]
    assert since and st["bgp"]["peersV4"] == [
        {"peerIP": lab.node_ip(b), "type": "NodeMesh", "state": "Established", "since": since}
    ]
    route = next(r for r in st["routes"]["routesV4"] if r["destination"] == block)
    assert route["gateway"] == lab.node_ip(b) and route["type"] == "FIB"
    assert route["learnedFrom"] == {"sourceType": "NodeMesh", "peerIP": lab.node_ip(b)}
    first = st["lastUpdated"]
    wait_for("status-a refreshed each period", lambda: (_status(etcd_env, "status-a") or {}).get("lastUpdated") != first
             or None, timeout=10)
    assert _status(etcd_env, "status-b-never") is None, "updatePeriodSeconds 0: never filled"


def test_render_without_bgp_reports_the_speaker_not_ready() -> None:
    st = render_status({"enabled": False, "sessions": []}, ["Agent", "BGP", "Routes"], ready=True,
                       boot_time="2026-12-01T00:00:00Z", now="2026-12-01T00:00:05Z")
    assert st == {
        "lastUpdated": "2026-12-01T00:00:05Z",
        "agent": {"birdV4": {"state": "NotReady", "version": "tabby-exabgp", "routerID": "",
                             "lastBootTime": "2026-12-01T00:00:00Z"}},
        "bgp": {"numberEstablishedV4": 0, "numberNotEstablishedV4": 0,
                "numberEstablishedV6": 0, "numberNotEstablishedV6": 0},
        "routes": {},
    }
