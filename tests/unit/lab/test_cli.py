"""The CLI as a user meets it, without root: errors are single lines, graph writes pictures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
MALFORMED = Path(__file__).parent / "malformed" / "containerlab-refuses"


def lab(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=False)


def assert_user_error(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), lines
    for text in expected:
        assert any(text in line for line in lines), (text, lines)


@pytest.mark.parametrize("command", ["deploy", "destroy", "inspect", "graph"])
def test_malformed_file_one_line_per_problem(command: str) -> None:
    proc = lab(command, "-t", str(MALFORMED / "unknown-top-key.clab.yml"))
    assert_user_error(proc, "unknown key 'nmae'", "missing required key 'name'")
    assert len(proc.stderr.strip().splitlines()) == 2


def test_missing_file() -> None:
    assert_user_error(lab("inspect", "-t", "nope.clab.yml"), "nope.clab.yml: no such topology file")


def test_no_file_in_cwd(tmp_path: Path) -> None:
    assert_user_error(lab("graph", cwd=tmp_path), "no *.clab.yml files here")


def test_graph_writes_each_format(tmp_path: Path) -> None:
    for ext in ("svg", "dot", "md"):
        out = tmp_path / f"g.{ext}"
        proc = lab("graph", "-t", str(EXAMPLES / "frr-pair.clab.yml"), "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert "r1" in out.read_text()


def test_graph_bad_extension(tmp_path: Path) -> None:
    assert_user_error(lab("graph", "-t", str(EXAMPLES / "line3.clab.yml"), "-o", str(tmp_path / "x.gif")),
                      "unknown picture format 'gif'")


def test_exec_unknown_node() -> None:
    assert_user_error(lab("exec", "-t", str(EXAMPLES / "line3.clab.yml"), "n9", "--", "true"),
                      "lab line3 has no node 'n9' (nodes: n1, n2, n3)")


def test_inspect_json_of_a_lab_not_deployed(tmp_path: Path) -> None:
    topo = tmp_path / "nd.clab.yml"
    topo.write_text("name: never-deployed-x\ntopology:\n  nodes:\n    r1: {kind: linux, image: a}\n")
    proc = lab("inspect", "-t", str(topo), "-f", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"containers": []}


def test_guest_forwarding_reads_topology_and_kernel_arguments() -> None:
    from lab.cli import _kernel_arg, _topology_arg

    assert _topology_arg(["-t", "a.yml", "r1", "--", "ip", "-t", "x"]) == ("a.yml", ["r1", "--", "ip", "-t", "x"])
    assert _topology_arg(["add", "--topo=b.yml", "n1", "web"]) == ("b.yml", ["add", "n1", "web"])
    assert _topology_arg(["-tc.yml", "--cleanup"]) == ("c.yml", ["--cleanup"])
    assert _topology_arg(["--cleanup"]) == (None, ["--cleanup"])
    assert _kernel_arg(["--kernel", "guest", "-t", "a"]) == ("guest", ["-t", "a"])
    assert _kernel_arg(["--kernel=host"]) == ("host", [])
    assert _kernel_arg(["-t", "a"]) == ("host", ["-t", "a"])


def test_a_lab_without_a_guest_runs_here(tmp_path: Path) -> None:
    from lab.cli import _in_guest

    topo = tmp_path / "x.clab.yml"
    topo.write_text("name: noguest\ntopology:\n  nodes:\n    a: {kind: linux, image: alpine}\n")
    assert _in_guest(["inspect", "-t", str(topo)]) is None
    assert _in_guest(["inspect", "-t", str(tmp_path / "missing.clab.yml")]) is None  # the command reports it
