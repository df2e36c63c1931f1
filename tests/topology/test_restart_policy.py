"""restart-policy on non-tabby lab nodes, as Docker applies containerlab's value.

`always` (r1, FRR): bgpd SIGKILLed comes back by itself with its configuration re-applied, the
session to r2 is Established again and hosts route through it; `on-failure` (h1): its killed cmd
comes back; `on-failure:1` (h3): its cmd comes back once, and killed again stays down; `no` (h2,
Docker's default): nothing supervises its cmd. `lab inspect` counts the restarts.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

from lab import Lab
from lab.errors import LabError
from lab.state import lab_dir
from lab.supervise import read_state
from tests.topology.conftest import LABS, LabRun, frr_peers, lab_cli, ping, wait_for


def _state(lab: Lab, node: str) -> str | None:
    """r1's session state to its peer; None while bgpd is not there (restarting)."""
    try:
        return frr_peers(lab, node).get("10.0.12.2" if node == "r1" else "10.0.12.1")
    except LabError:
        return None


def _restarts(run: LabRun, node: str) -> int:
    proc = lab_cli("inspect", "-t", str(run.path), "-f", "json")
    assert proc.returncode == 0, proc.stderr
    assert run.lab is not None
    (row,) = [r for r in json.loads(proc.stdout)["containers"] if r["name"] == run.lab.topology.nodes[node].netns]
    return int(row["restarts"])


def test_restart_policy_always_on_failure_and_no(make_lab: Callable[..., LabRun]) -> None:
    run = make_lab(LABS / "fidelity" / "restart-policy.clab.yml")
    lab = run.lab
    assert lab is not None
    wait_for("r1 session to r2", lambda: _state(lab, "r1") == "Established", timeout=30)
    wait_for("h1 -> h2 routed", lambda: ping(lab, "h1", "10.2.2.2"), timeout=20)
    nodes = lab_dir(lab.topology.name) / "nodes"
    assert not (nodes / "h2" / "cmd.supervise.json").exists() and not (nodes / "r2" / "bgpd.supervise.json").exists()

    bgpd = nodes / "r1" / "bgpd.supervise.json"
    first = read_state(bgpd)
    assert first and first["pid"] and first["policy"] == "always" and first["restarts"] == 0, first
    os.kill(first["pid"], signal.SIGKILL)
    wait_for("r1's bgpd back", lambda: (s := read_state(bgpd)) and s["pid"] and s["pid"] != first["pid"],
             timeout=20, interval=0.1)
    # Its configuration came back too (vtysh -f frr.conf after the restart): the session re-forms.
    wait_for("r1 session Established again",
             lambda: _state(lab, "r1") == "Established", timeout=60, interval=0.5)
    wait_for("h1 -> h2 routed again", lambda: ping(lab, "h1", "10.2.2.2"), timeout=30)

    cmd = nodes / "h1" / "cmd.supervise.json"
    before = read_state(cmd)
    assert before and before["policy"] == "on-failure"
    os.kill(before["pid"], signal.SIGKILL)
    wait_for("h1's cmd back", lambda: (s := read_state(cmd)) and s["pid"] and s["pid"] != before["pid"] and s,
             timeout=20, interval=0.1)
    assert (read_state(cmd) or {})["restarts"] == 1
    h3 = nodes / "h3" / "cmd.supervise.json"
    first = read_state(h3)
    assert first and first["policy"] == "on-failure" and first["max_retries"] == 1, first
    os.kill(first["pid"], signal.SIGKILL)
    wait_for("h3's cmd back once", lambda: (s := read_state(h3)) and s["pid"] and s["pid"] != first["pid"] and s,
             timeout=20, interval=0.1)
    second = read_state(h3) or {}
    os.kill(second["pid"], signal.SIGKILL)
    wait_for("h3's supervisor giving up", lambda: (read_state(h3) or {}).get("gave_up") is True, timeout=20,
             interval=0.1)
    time.sleep(0.5)
    assert (read_state(h3) or {})["pid"] is None and (read_state(h3) or {})["restarts"] == 1
    time.sleep(0.2)
    assert _restarts(run, "r1") == 1 and _restarts(run, "h1") == 1 and _restarts(run, "h2") == 0
    assert _restarts(run, "h3") == 1
