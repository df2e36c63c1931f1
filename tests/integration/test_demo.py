"""`make demo` keeps working: the demo runs end to end and its IPAM check is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "controller.demo"], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "found 0 problems" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert "node-1: 70 IPv4" in proc.stdout
    assert "found 1 problem" in proc.stdout  # the deliberately unrecorded pod is found as a leak
