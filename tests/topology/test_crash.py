"""Crash safety: a deploy killed at any point leaves nothing once `destroy --cleanup` has run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from lab import load_topology
from lab.state import lab_dir
from tests.topology.conftest import EXAMPLES, ROOT, LabRun, lab_cli, lab_command, leftovers, netns_list, wait_for


@pytest.mark.parametrize("step", ["namespaces", "mgmt", "links", "start", "exec"])
def test_deploy_killed_at_each_step(make_lab: Callable[..., LabRun], step: str) -> None:
    run = make_lab(EXAMPLES / "triangle.clab.yml", deploy_it=False)
    proc = lab_cli("deploy", "-t", str(run.path), env={"TABBY_LAB_CRASH_AT": step})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    topo = load_topology(run.path)
    made = [ns for ns in netns_list() if ns in topo.netns_names()]
    if step != "namespaces":
        assert made, "the crash came after namespaces were made"
    proc = lab_cli("destroy", "-t", str(run.path), "--cleanup", "--purge")
    assert proc.returncode == 0, proc.stderr
    assert leftovers(run.path) == []
    run.assert_root_untouched()


def test_deploy_killed_while_daemons_start(make_lab: Callable[..., LabRun]) -> None:
    """A real kill -9 from outside, as soon as the first daemon is recorded."""
    run = make_lab(EXAMPLES / "triangle.clab.yml", deploy_it=False)
    topo = load_topology(run.path)
    state_file = lab_dir(topo.name) / "state.json"

    def processes_recorded() -> bool:
        try:
            return bool(json.loads(state_file.read_text())["processes"])
        except (OSError, ValueError, KeyError):
            return False

    deployer = subprocess.Popen([*lab_command(), "deploy", "-t", str(run.path)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for("a daemon recorded", processes_recorded, timeout=30, interval=0.005)
        os.kill(deployer.pid, signal.SIGKILL)
    finally:
        deployer.kill()
        deployer.wait(timeout=10)
    assert any(ns in netns_list() for ns in topo.netns_names())
    proc = lab_cli("destroy", "-t", str(run.path), "--cleanup", "--purge")
    assert proc.returncode == 0, proc.stderr
    assert leftovers(run.path) == []


def test_cleanup_without_a_state_file(make_lab: Callable[..., LabRun]) -> None:
    """Even with its record gone, --cleanup finds the lab by the names its topology implies."""
    run = make_lab(EXAMPLES / "triangle.clab.yml", deploy_it=False)
    proc = lab_cli("deploy", "-t", str(run.path), env={"TABBY_LAB_CRASH_AT": "exec"})
    assert proc.returncode == -signal.SIGKILL
    topo = load_topology(run.path)
    (lab_dir(topo.name) / "state.json").write_text("{ corrupt")
    proc = lab_cli("destroy", "-t", str(run.path))
    assert proc.returncode == 1 and "use destroy --cleanup" in proc.stderr
    time.sleep(0.1)
    proc = lab_cli("destroy", "-t", str(run.path), "--cleanup", "--purge")
    assert proc.returncode == 0, proc.stderr
    assert leftovers(run.path) == []
