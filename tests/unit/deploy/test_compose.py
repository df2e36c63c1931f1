"""docker-compose.yml (etcd, three Tabby nodes, an FRR ToR) is valid for Debian's docker-compose, and the
Dockerfile copies what exists and runs the project's own entry points."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not installed: run `make setup` (Debian package docker-compose)")
    return subprocess.run([exe, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60,
                          cwd=path.parent)


def test_compose_file_is_valid(tmp_path: Path) -> None:
    proc = compose_config(ROOT / "docker-compose.yml")
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = data["services"]
    assert {"etcd", "tor", "node1", "node2", "node3"} <= set(services)
    for svc in services.values():
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{src} does not exist"
    # ...and the check can fail: an unknown service key is refused.
    broken = dict(data)
    broken["services"] = {**services, "node1": {**services["node1"], "privilegd": True}}
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    assert compose_config(bad).returncode != 0


def test_dockerfile_copies_what_exists_and_runs_project_entry_points() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        m = re.match(r"COPY\s+(.+)\s+\S+$", line)
        if m and not m.group(1).startswith("--from="):  # --from: a build stage's file, not the checkout's
            for src in m.group(1).split():
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("tabby-node", "tabby-controller", "tabbyctl"):
        assert name in scripts and name in text
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = {s["command"][0] for s in compose["services"].values() if isinstance(s.get("command"), list)}
    assert {"tabby-node", "tabby-controller", "tabbyctl"} <= commands
