"""`tabbyctl node diags` against a running agent: one 0600 archive with its log, view, routes, nft
ruleset, ExaBGP files and versions, and no secret anywhere in it."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

from .conftest import PYTHON, NodeLab, apply_pool


def test_diags_archive(node_lab: NodeLab, etcd_env: dict[str, str], tmp_path: Path) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a = next(iter(node_lab.nodes))
    node_lab.set_address(a)
    agent = node_lab.start_agent(a, FOO_PASSWORD="hunter2")
    pod = node_lab.add_pod(a, "web-1")
    bgp = node_lab.run_root / a / "bgp"
    bgp.mkdir(exist_ok=True)
    (bgp / "exabgp.conf").write_text('neighbor 10.213.77.2 {\n    md5-password "s3cr3t";\n}\n')
    out = tmp_path / "diags.tar.gz"
    env = {**etcd_env, "TABBY_RUN_ROOT": str(node_lab.run_root)}
    proc = subprocess.run(["ip", "netns", "exec", node_lab.nodes[a], PYTHON, "-m", "controller.cli.main", "node",
                           "diags", "--nodename", a, "--log-file", str(agent.log), "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(out) as tar:
        files = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile()}
    for name in ("agent.log", "agent-status.json", "agent-cni-status.json", "agent-environ.txt", "ip-route.txt",
                 "nft-ruleset.txt", "exabgp/exabgp.conf", "versions.txt"):
        assert name in files, sorted(files)
    assert json.loads(files["agent-status.json"])["node"] == a
    assert '"agent.ready"' in files["agent.log"]
    assert pod.ip in files["ip-route.txt"]  # the namespace's routes, where the pod's /32 is
    assert "FOO_PASSWORD=<redacted>" in files["agent-environ.txt"]
    assert 'md5-password "<redacted>";' in files["exabgp/exabgp.conf"]
    assert files["versions.txt"].startswith("tabby v")
    for name, text in files.items():
        assert "hunter2" not in text and "s3cr3t" not in text, name
