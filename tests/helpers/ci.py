"""CI must not go green by skipping: with ``CI=true`` a skipped test is reported as a failure.

Every skip in this suite means a missing dependency (root, UML, containerd, FRR, ExaBGP, graphviz):
on a developer's machine that is a fair skip with its reason; in CI, where ``make setup`` installed
everything, it means the suite silently proved nothing. Imported by tests/conftest.py (the hook is
picked up from the conftest's namespace).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


def ci_enforced() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if ci_enforced() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: this test was skipped ({reason}); in CI a skip is a failure"


#: Wall-clock budget per suite (seconds of test time: setup + call + teardown, summed), and the whole
#: run; docs/testing.md has the same table. Under CI=true a suite over its budget fails the run.
BUDGETS = {
    "tests/unit": 180.0,
    "tests/integration": 1500.0,
    "tests/topology": 900.0,
    "tests/fault": 300.0,
    "tests/guest": 480.0,
}
TOTAL_BUDGET = 2700.0
_spent: dict[str, float] = {}


def suite_of(nodeid: str) -> str:
    parts = nodeid.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def pytest_configure(config: pytest.Config) -> None:
    if ci_enforced() and not config.option.durations:
        config.option.durations = 30


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    suite = suite_of(report.nodeid)
    _spent[suite] = _spent.get(suite, 0.0) + float(report.duration or 0.0)


def over_budget(spent: dict[str, float]) -> list[str]:
    out = [f"{suite}: {secs:.0f}s > budget {BUDGETS[suite]:.0f}s" for suite, secs in sorted(spent.items())
           if suite in BUDGETS and secs > BUDGETS[suite]]
    total = sum(spent.values())
    if total > TOTAL_BUDGET:
        out.append(f"whole run: {total:.0f}s > budget {TOTAL_BUDGET:.0f}s")
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not ci_enforced():
        return
    problems = over_budget(_spent)
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in problems:
            if reporter is not None:
                reporter.write_line(f"TIME BUDGET EXCEEDED: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
