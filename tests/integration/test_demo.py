"""`make demo` and `make demo-ipam` keep working end to end.

The lab demo runs against a renamed copy of examples/three-node-tor (agents' run directories under the
test's temp dir, as the topology tests do), so it never touches a `make demo` lab a developer has up.
The demo leaves its lab running on purpose; the test destroys it in `finally` and then checks that
nothing of it is left (namespaces, pods, processes, run directories, the root namespace unchanged).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.state import LabState
from tests.topology.conftest import lab_cli, root_namespace_snapshot
from tests.topology.tabby_support import prepare_copy, tabby_leftovers

ROOT = Path(__file__).resolve().parents[2]


def test_demo_ipam_runs_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "controller.demo_ipam"], cwd=ROOT, capture_output=True, text=True, timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "found 0 problems" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert "node-1: 70 IPv4" in proc.stdout
    assert "found 1 problem" in proc.stdout  # the deliberately unrecorded pod is found as a leak


@pytest.mark.root
@pytest.mark.slow
def test_demo_three_node_tor(tmp_path: Path) -> None:
    """The demo deploys, sees every session Established, 6 pods, 30 of 30 pairs, and says how to go on."""
    if os.geteuid() != 0:
        pytest.skip("the lab demo needs root (network namespaces)")
    before = root_namespace_snapshot()
    lab = prepare_copy(tmp_path, ROOT / "examples" / "three-node-tor.clab.yml")
    try:
        proc = subprocess.run([sys.executable, "-m", "lab.demo", "-t", str(lab.path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, check=False)
        out = proc.stdout
        assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert "all 12 BGP session ends Established" in out
        assert out.count("| Established |") == 9  # node status on each of the three nodes: 3 peers each
        assert "30/30 pairs ok" in out and "all 30 pod pairs reachable (6 pods on 3 nodes)" in out
        assert "(behind the ToR, routed by FRR): ok" in out
        assert "10.244." in out and "64512 i" in out  # the ToR's table holds the nodes' blocks
        assert f"tabbyctl lab destroy -t {lab.path} --cleanup" in out
        state = LabState.load(lab.topo.name)
        assert state is not None, "the demo leaves its lab running"
    finally:
        destroyed = lab_cli("destroy", "-t", str(lab.path), "--cleanup", "--purge", timeout=120)
        assert destroyed.returncode == 0, destroyed.stderr
        assert tabby_leftovers(lab) == []
        assert root_namespace_snapshot() == before, "the demo changed the root namespace"
