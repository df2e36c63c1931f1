"""Under CI=true a skipped test fails (tests/helpers/ci.py); elsewhere it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = """
import pytest

def test_skipped():
    pytest.skip("needs something missing")

def test_ok():
    pass
"""


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text("from tests.helpers.ci import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)


def test_skip_fails_under_ci(tmp_path: Path) -> None:
    res = _run(tmp_path, "true")
    assert res.returncode == 1 and "1 failed, 1 passed" in res.stdout, res.stdout
    assert "in CI a skip is a failure" in res.stdout


def test_skip_stays_a_skip_elsewhere(tmp_path: Path) -> None:
    res = _run(tmp_path, "")
    assert res.returncode == 0 and "1 passed, 1 skipped" in res.stdout, res.stdout


def test_budgets() -> None:
    from tests.helpers.ci import over_budget, suite_of

    assert suite_of("tests/guest/test_ipip.py::test_x") == "tests/guest"
    assert over_budget({"tests/unit": 10.0, "tests/guest": 100.0}) == []
    assert over_budget({"tests/guest": 500.0}) == ["tests/guest: 500s > budget 480s"]
    assert over_budget({"tests/integration": 1100.0, "tests/topology": 890.0, "tests/fault": 290.0,
                        "tests/guest": 470.0}) == ["whole run: 2750s > budget 2700s"]
