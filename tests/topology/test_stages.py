"""containerlab's stages on real namespaces: a wait-for waits for the stage it names, no more.

``labs/stages/order.clab.yml``: node a turns healthy 4 s after its program starts; b waits for a's
``create``, c for a's ``healthy`` before its own ``create``, d's ``create-links`` and f's
``configure`` wait for a's ``healthy``. Each node's program writes the time (the node's own clock,
``date +%s.%N``) to the lab directory, so the order is read from what ran, not from the runner's log.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lab import deploy, load_topology
from lab.errors import LabError
from lab.state import lab_dir
from tests.topology.conftest import LABS, LabRun, ping, wait_for

STAGES = LABS / "stages"


def stamp(run: LabRun, name: str) -> float:
    assert run.lab is not None
    path = run.lab.state.dir / name
    wait_for(f"{name} written", path.exists, timeout=10)
    return float(path.read_text())


def test_wait_for_waits_for_the_named_stage_only(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(STAGES / "order.clab.yml")
    lab = run.lab
    assert lab is not None and lab.exec_failures == []
    a_created, a_healthy = stamp(run, "a-created"), stamp(run, "a-healthy")
    assert a_healthy - a_created >= 3.5, "a's healthcheck passed before its program made it healthy"

    # create waits for a's create: b runs while a is not healthy yet
    assert a_created <= stamp(run, "b-created") < a_healthy
    # create waits for a's healthy
    assert stamp(run, "c-created") >= a_healthy
    # create-links waits for a's healthy: d runs at once, its interface arrives after a is healthy
    assert stamp(run, "d-created") < a_healthy <= stamp(run, "d-eth1")
    on_enter = (lab.state.dir / "d-links-on-enter").read_text().split()
    on_exit = (lab.state.dir / "d-links-on-exit").read_text().split()
    assert "eth1" not in on_enter and "eth0" in on_enter, on_enter  # as containerlab's docs show it
    assert "eth1" in on_exit, on_exit
    # configure waits for a's healthy: f runs at once, its configure stage's exec after a is healthy
    assert stamp(run, "f-created") < a_healthy <= stamp(run, "f-configure")

    # exit: afterjob starts once job's program has exited
    assert stamp(run, "afterjob-created") > stamp(run, "job-exited")

    # the link made in two halves (e's end first, d's parked in the management namespace) carries traffic
    assert ping(lab, "d", "192.0.2.2") and ping(lab, "e", "192.0.2.1")
    run.assert_root_untouched()


def test_a_failed_dependency_stops_its_waiters(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(STAGES / "blocked.clab.yml", deploy_it=False)
    with pytest.raises(LabError) as info:
        deploy(run.path)
    problems = info.value.problems
    assert any("node sick: unhealthy" in p for p in problems), problems
    assert any("node waiter: not started: node sick" in p for p in problems), problems
    assert not (lab_dir(load_topology(run.path).name) / "waiter-started").exists()
