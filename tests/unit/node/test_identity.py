"""NODENAME resolution (calico-node's order) and the one-agent-per-node lock; files under tmp_path."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controller.node.identity import AgentLocked, acquire_lock, remember_nodename, resolve_nodename


def test_order_env_hostname_file_then_hostname(tmp_path: Path) -> None:
    f = tmp_path / "nodename"
    env = {"TABBY_NODENAME_FILE": str(f)}
    assert resolve_nodename(env) == (socket.gethostname().lower(), "hostname")
    assert remember_nodename(env, "node-7") == f
    assert f.read_text() == "node-7\n"
    assert resolve_nodename(env) == ("node-7", str(f))  # a restart without NODENAME: the same node
    assert resolve_nodename({**env, "HOSTNAME": "Box"}) == ("box", "HOSTNAME")
    assert resolve_nodename({**env, "NODENAME": "Other", "HOSTNAME": "box"}) == ("other", "NODENAME")
    remember_nodename(env, "other")  # NODENAME given explicitly: the file follows it
    assert resolve_nodename(env) == ("other", str(f))


def test_unwritable_file_is_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "ro").write_text("")
    assert remember_nodename({"TABBY_NODENAME_FILE": str(tmp_path / "ro" / "nodename")}, "n") is None


def test_second_agent_for_the_same_node_is_refused(tmp_path: Path) -> None:
    held = acquire_lock(tmp_path / "n1", "n1")
    try:
        # flock is per open file description: a second process is refused, naming our pid.
        code = ("import sys; from pathlib import Path; from controller.node.identity import acquire_lock\n"
                f"acquire_lock(Path({str(tmp_path / 'n1')!r}), 'n1')")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert res.returncode != 0 and "already running for node n1" in res.stderr
        with pytest.raises(AgentLocked, match=r"another tabby-node agent \(pid \d+\) is already running for node n1"):
            acquire_lock(tmp_path / "n1", "n1")
        acquire_lock(tmp_path / "n2", "n2").close()  # other nodes are independent
    finally:
        held.close()
    acquire_lock(tmp_path / "n1", "n1").close()  # free again once the holder is gone
