"""The installed CNI plugin (native forwarder + Python fallback), shared by the CNI unit tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed plugin (native forwarder + Python fallback) in a temporary bin directory."""
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    proc = subprocess.run(["sh", str(ROOT / "manifests/cni/install.sh"), "--bin-dir", str(bin_dir), "--no-conf"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": SYSTEM_PATH})
    assert proc.returncode == 0, proc.stderr
    assert "native forwarder" in proc.stderr, proc.stderr  # a C compiler is part of `make setup`
    return bin_dir
