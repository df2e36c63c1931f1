"""observe --follow --staged: the staged verdicts come from a datastore view re-read at most every
few seconds (a policy staged while following shows on later records), not once per record."""

from __future__ import annotations

from typing import Any

import pytest

from controller.cli import policy_cmd


class _State:
    def __init__(self) -> None:
        self.reads = 0

    def run(self, fn: Any) -> Any:
        self.reads += 1
        return _Inputs()


class _Inputs:
    def with_staged(self) -> None:
        return None  # nothing staged: every record gets staged = null


def test_reads_at_most_every_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    st = _State()
    monkeypatch.setattr(policy_cmd, "state", lambda: st)
    clock = [100.0]
    monkeypatch.setattr(policy_cmd.time, "monotonic", lambda: clock[0])
    judge = policy_cmd.StagedJudge(refresh=5.0)
    rec = {"direction": "ingress", "protocol": "tcp", "source": {"ip": "10.0.0.1", "port": 1234},
           "destination": {"ip": "10.0.0.2", "port": 80}}
    assert judge.annotate([dict(rec)])[0]["staged"] is None
    clock[0] += 4.0
    judge.annotate([dict(rec), dict(rec)])
    assert st.reads == 1
    clock[0] += 1.5
    judge.annotate([dict(rec)])
    assert st.reads == 2
