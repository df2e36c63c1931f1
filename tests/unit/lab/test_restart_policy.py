"""restart-policy: parsed as containerlab's values (any case), a bad one refused naming the field, no longer
warned as ignored; the supervisor's on-failure policy stops after exit 0 and restarts after a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import load_topology
from lab.errors import LabError
from lab.supervise import read_state


def _topo(tmp_path: Path, policy: str) -> Path:
    path = tmp_path / "t.clab.yml"
    path.write_text(f"name: rp\ntopology:\n  defaults: {{restart-policy: {policy}}}\n  nodes:\n"
                    "    a: {kind: linux, image: alpine}\n    b: {kind: linux, image: alpine, restart-policy: no}\n")
    return path


def test_values_and_inheritance(tmp_path: Path) -> None:
    topo = load_topology(_topo(tmp_path, "On-failure"))
    assert topo.nodes["a"].restart_policy == "on-failure"
    assert topo.nodes["b"].restart_policy == "no"
    assert not any("restart-policy" in w for w in topo.warnings)


def test_bad_value_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(LabError) as err:
        load_topology(_topo(tmp_path, "sometimes"))
    assert any("restart-policy 'sometimes': must be one of no, on-failure, always, unless-stopped" in p
               for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(("code", "restarted"), [(0, False), (3, True)])
def test_on_failure(tmp_path: Path, code: int, restarted: bool) -> None:
    state = tmp_path / "p.supervise.json"
    marker = tmp_path / "runs"
    prog = (f"open({str(marker)!r}, 'a').write('x'); import sys; "
            f"sys.exit({code} if len(open({str(marker)!r}).read()) < 2 else 0)")
    proc = subprocess.run([sys.executable, "-m", "lab.supervise", "--state", str(state), "--policy", "on-failure",
                           "--backoff", "0.05", "--", sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0
    runs = len(marker.read_text())
    assert runs == (2 if restarted else 1), proc.stderr
    assert (read_state(state) or {})["restarts"] == (1 if restarted else 0)
    assert "not restarted (restart-policy on-failure)" in proc.stderr


def test_on_failure_with_a_count(tmp_path: Path) -> None:
    path = tmp_path / "t.clab.yml"
    path.write_text("name: rp\ntopology:\n  nodes:\n    a: {kind: linux, image: alpine, restart-policy: on-failure:3}\n"
                    "    b: {kind: linux, image: alpine, restart-policy: ON-FAILURE:0}\n")
    topo = load_topology(path)
    assert (topo.nodes["a"].restart_policy, topo.nodes["a"].restart_max_retries) == ("on-failure", 3)
    assert (topo.nodes["b"].restart_policy, topo.nodes["b"].restart_max_retries) == ("on-failure", 0)


@pytest.mark.parametrize(("value", "problem"), [
    ("always:3", "restart-policy 'always:3': a maximum restart count is only valid with on-failure"),
    ("on-failure:-1", "restart-policy 'on-failure:-1': the maximum restart count must be a non-negative integer"),
    ("on-failure:x", "restart-policy 'on-failure:x': the maximum restart count must be a non-negative integer"),
])
def test_bad_counts_are_one_clear_problem(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(LabError) as err:
        load_topology(_topo(tmp_path, value))
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_on_failure_n_restarts_at_most_n_times(tmp_path: Path) -> None:
    """A program that always fails, under on-failure:2: three runs (the start and 2 restarts), then
    the supervisor gives up and says so; its state records it."""
    state = tmp_path / "p.supervise.json"
    marker = tmp_path / "runs"
    prog = f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(1)"
    proc = subprocess.run([sys.executable, "-m", "lab.supervise", "--state", str(state), "--policy", "on-failure",
                           "--max-retries", "2", "--backoff", "0.05", "--", sys.executable, "-c", prog],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert len(marker.read_text()) == 3, proc.stderr
    st = read_state(state) or {}
    assert (st["restarts"], st["max_retries"], st["gave_up"], st["last_exit"]) == (2, 2, True, "exit code 1")
    assert "not restarted: restart-policy on-failure:2 used all 2 restarts" in proc.stderr
    # Without a count, on-failure keeps restarting: bounded here by a program that succeeds on its 5th run.
    marker.unlink()
    prog = f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(len(open({str(marker)!r}).read()) < 5)"
    proc = subprocess.run([sys.executable, "-m", "lab.supervise", "--state", str(state), "--policy", "on-failure",
                           "--backoff", "0.02", "--", sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=30)
    assert len(marker.read_text()) == 5 and (read_state(state) or {})["restarts"] == 4, proc.stderr
