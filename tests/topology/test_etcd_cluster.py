"""examples/etcd-cluster: three etcd members under two BGP-meshed Tabby nodes. SIGKILL the member every
client tries first: pods are still allocated and routed (ETCD_ENDPOINTS fails over), `lab check` passes,
and the surviving members still have quorum."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from lab.state import LabState
from tests.topology.conftest import EXAMPLES, lab_cli, wait_for
from tests.topology.tabby_support import (  # noqa: F401 - tabby_lab_fixture provides the tabby_lab fixture
    TabbyLab,
    tabby_lab_fixture,
)


def test_member_killed_under_churn(tabby_lab: Callable[..., TabbyLab]) -> None:
    lab = tabby_lab(EXAMPLES / "etcd-cluster.clab.yml")
    members = lab.exec("etcd1", "etcdctl", "member", "list")
    assert members.returncode == 0 and len(members.stdout.strip().splitlines()) == 3, members.stdout
    wait_for("BGP mesh up", lambda: '"state": "up"' in lab.exec("n1", "tabbyctl", "node", "status", "-o",
                                                              "json").stdout, timeout=60)
    lab.add_pod("n1", "before-1")
    lab.add_pod("n2", "before-2")
    state = LabState.load(lab.topo.name)
    assert state is not None
    (etcd1,) = [p for p in state.processes if p.node == "etcd1" and p.name == "etcd"]
    os.kill(etcd1.pid, signal.SIGKILL)
    for i in range(3):  # churn with one member of three gone: allocation and the CNI path keep working
        lab.add_pod("n1", f"after-1-{i}")
        lab.add_pod("n2", f"after-2-{i}")
        proc = lab_cli("pod", "del", "-t", str(lab.path), "n1", f"after-1-{i}")
        assert proc.returncode == 0, proc.stderr
        lab.pods.pop(f"after-1-{i}")
    health = lab.exec("etcd2", "etcdctl", "endpoint", "health")
    assert health.returncode == 0, health.stderr
    checked = lab.cli("check", timeout=180)
    assert checked.returncode == 0, checked.stdout + checked.stderr
