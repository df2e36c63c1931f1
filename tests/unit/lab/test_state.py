"""The lab's on-disk record: round trip, pid identity, corrupt files, the per-lab lock."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.state import LabState, ProcessRecord, lab_lock, process_start_time


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TABBY_LAB_STATE_DIR", str(tmp_path))
    return tmp_path


def test_round_trip(state_dir: Path) -> None:
    state = LabState(name="l1", topology="/x/l1.clab.yml")
    state.record_netns("clab-l1-a")
    state.record_path("/etc/frr/clab-l1-a")
    state.record_process(ProcessRecord(pid=os.getpid(), start_time=process_start_time(os.getpid()), node="a",
                                       name="zebra", argv=["zebra"]))
    loaded = LabState.load("l1")
    assert loaded is not None
    assert loaded.netns == ["clab-l1-a"] and loaded.paths == ["/etc/frr/clab-l1-a"]
    assert loaded.processes[0].alive()
    assert (state_dir / "l1" / "state.json").exists()


def test_missing_and_corrupt(state_dir: Path) -> None:
    assert LabState.load("nope") is None
    (state_dir / "bad").mkdir()
    (state_dir / "bad" / "state.json").write_text("{not json")
    with pytest.raises(LabError, match="destroy --cleanup"):
        LabState.load("bad")


def test_a_reused_pid_is_not_ours() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    try:
        record = ProcessRecord(pid=proc.pid, start_time=process_start_time(proc.pid), node="a", name="s", argv=[])
        assert record.alive()
        assert not ProcessRecord(pid=proc.pid, start_time=1, node="a", name="s", argv=[]).alive()
    finally:
        proc.kill()
        proc.wait(timeout=5)
    assert not record.alive()


def test_lock_is_exclusive() -> None:
    with lab_lock("l2"), pytest.raises(LabError, match="another tabbyctl lab command"), lab_lock("l2", timeout=0.2):
        pass
