"""Readiness probes: a CLI that hangs while its daemon comes up is "not ready yet", not a failed deploy."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.errors import LabError
from lab.kinds import NodeContext


def _ctx(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(node=SimpleNamespace(name="gobgp"), workdir=tmp_path,
                           argv=lambda argv, cwd=None: list(argv))


def test_a_hanging_probe_is_not_ready(tmp_path: Path) -> None:
    started = time.monotonic()
    assert NodeContext.probe(_ctx(tmp_path), ["sleep", "5"], timeout=0.2) is None  # type: ignore[arg-type]
    assert time.monotonic() - started < 2


def test_a_probe_that_answers_is_returned(tmp_path: Path) -> None:
    proc = NodeContext.probe(_ctx(tmp_path), ["sh", "-c", "echo AS 65001; exit 3"])  # type: ignore[arg-type]
    assert proc is not None and proc.returncode == 3 and "AS 65001" in proc.stdout


def test_a_missing_probe_program_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not installed"):
        NodeContext.probe(_ctx(tmp_path), ["no-such-cli-tabby"])  # type: ignore[arg-type]
