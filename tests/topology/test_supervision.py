"""The tabby/node image supervises its agent (runit's role in calico-node): SIGKILL it and it comes
back by itself as the same Node; `lab restart`, restarts in `lab inspect`, `lab logs`, and logs kept
by `destroy --cleanup` until `--purge`."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable

from lab.state import lab_dir
from lab.supervise import read_state
from tests.topology.conftest import EXAMPLES, lab_command, wait_for
from tests.topology.tabby_support import (  # noqa: F401 - tabby_lab_fixture provides the tabby_lab fixture
    TabbyLab,
    items,
    tabby_lab_fixture,
)


def _restarts(lab: TabbyLab, node: str) -> int:
    proc = lab.cli("inspect", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout)["containers"] if r["name"] == lab.netns(node)]
    assert row["state"] == "running"
    return int(row["restarts"])


def test_killed_agent_comes_back_and_lab_tools(tabby_lab: Callable[..., TabbyLab]) -> None:
    lab = tabby_lab(EXAMPLES / "two-node-native.clab.yml", env={"TABBY_RESTART_BACKOFF": "0.3"})
    lab.add_pod("native1", "web-1")
    state_file = lab_dir(lab.topo.name) / "nodes" / "native1" / "tabby-node.supervise.json"
    first = read_state(state_file)
    assert first and first["pid"] and first["restarts"] == 0
    assert _restarts(lab, "native1") == 0

    os.kill(first["pid"], signal.SIGKILL)
    again = wait_for("the agent back under a new pid", lambda: (s := read_state(state_file)) and s["pid"]
                     and s["pid"] != first["pid"] and s, timeout=30, interval=0.1)
    assert again["restarts"] == 1 and again["last_exit"] == "signal SIGKILL"
    assert _restarts(lab, "native1") == 1
    # Back as the same Node (no second Node named after the host), and it serves CNI again.
    wait_for("native1 ready", lambda: lab.exec("native1", "tabbyctl", "node", "status", "-o", "json")
             .returncode == 0, timeout=30)
    names = sorted(n["metadata"]["name"] for n in items(lab.tabbyctl_json("native1", "get", "nodes")))
    assert names == ["native1", "native2"]
    lab.add_pod("native1", "web-2")

    proc = lab.cli("restart", "native1")
    assert proc.returncode == 0 and "restarted tabby-node" in proc.stderr, proc.stderr
    assert _restarts(lab, "native1") == 2
    proc = lab.cli("restart", "etcd")
    assert proc.returncode == 1 and "no supervised process" in proc.stderr

    logs = lab.cli("logs", "native1")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.count('"agent.starting"') == 3
    assert "supervise: " in logs.stdout and "restarted on request" in logs.stdout
    follow = subprocess.Popen([*lab_command(), "logs", "-t", str(lab.path), "-f", "-p", "tabby-node", "native1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    try:
        assert follow.stdout is not None
        deadline = time.monotonic() + 30  # tabbyctl starts slowly on a loaded machine
        while '"agent.starting"' not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([follow.stdout], [], [], 0.5)
            if ready:
                line = follow.stdout.readline()
                if not line:
                    break
                seen += line
        assert follow.poll() is None  # still following
    finally:
        follow.terminate()
        follow.communicate(timeout=10)
    assert '"agent.starting"' in seen

    destroyed = lab.cli("destroy", "--cleanup")
    assert destroyed.returncode == 0, destroyed.stderr
    kept = sorted(p.relative_to(lab_dir(lab.topo.name)).as_posix()
                  for p in lab_dir(lab.topo.name).rglob("*") if p.is_file())
    assert kept and all(k.startswith("nodes/") and k.endswith(".log") for k in kept), kept
    assert "nodes/native1/tabby-node.log" in kept
    assert '"agent.starting"' in lab.cli("logs", "native1").stdout  # readable after destroy
    assert lab.cli("destroy", "--purge").returncode == 1  # --purge goes with --cleanup
    assert lab.cli("destroy", "--cleanup", "--purge").returncode == 0
    assert not lab_dir(lab.topo.name).exists()
