"""lab deploy's progress: rich bars on a terminal, nothing at all otherwise; warnings always."""

from __future__ import annotations

import io

from rich.console import Console

from lab.cli import ProgressReporter


def _run(terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100)
    with ProgressReporter(console) as reporter:
        reporter.phase("namespaces", 2)
        reporter.advance("clab-x-r1")
        reporter.advance("clab-x-r2")
        reporter.phase("links", 0)
        reporter.warn("node r1: something to know")
    return out.getvalue()


def test_progress_only_on_a_terminal() -> None:
    tty = _run(terminal=True)
    assert "namespaces" in tty and "2/2" in tty
    plain = _run(terminal=False)
    assert plain == "warning: node r1: something to know\n"
