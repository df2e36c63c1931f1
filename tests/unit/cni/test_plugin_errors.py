"""The CNI plugin run as a runtime runs it (subprocess, env + stdin): malformed configurations and
environments are each answered with the spec's error JSON (cniVersion, code, msg, details) naming
the problem, and a non-zero exit; VERSION is answered without an agent; start-up stays small.

The error cases run twice: the checkout's plugin.py, and the installed plugin with its native
forwarder in front (manifests/cni/install.sh), which must answer every one of them alike."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import SYSTEM_PATH

ROOT = Path(__file__).resolve().parents[3]
PLUGIN = ROOT / "controller" / "cni" / "plugin.py"
GOOD = {"cniVersion": "1.0.0", "name": "net", "type": "tabby", "ipam": {"type": "tabby-ipam"}}




@pytest.fixture(params=["script", "native"])
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def argv_for(variant: str, mode: str, bin_dir: Path | None) -> list[str]:
    if variant == "native":
        assert bin_dir is not None
        return [str(bin_dir / mode)]
    return [sys.executable, "-I", "-S", str(PLUGIN), mode]


def run(env: dict[str, str], stdin: str, mode: str = "tabby", run_root: str = "/nonexistent-tabby",
        argv: list[str] | None = None) -> tuple[int, dict]:
    full = {"PATH": SYSTEM_PATH, "TABBY_RUN_ROOT": run_root, **env}
    proc = subprocess.run(argv or [sys.executable, "-I", "-S", str(PLUGIN), mode], input=stdin, env=full,
                          capture_output=True, text=True, timeout=20)
    assert proc.stderr == "", proc.stderr  # no traceback, ever
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {})


def add_env(**over: str) -> dict[str, str]:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    env.update(over)
    return {k: v for k, v in env.items() if v != "<unset>"}


CASES = [
    # (id, env, stdin, mode, expected code, words in msg)
    ("missing CNI_COMMAND", add_env(CNI_COMMAND="<unset>"), json.dumps(GOOD), "tabby", 4, "CNI_COMMAND"),
    ("unknown command", add_env(CNI_COMMAND="FROB"), json.dumps(GOOD), "tabby", 4, "FROB"),
    ("bad JSON", add_env(), "{not json", "tabby", 6, "JSON"),
    ("empty stdin", add_env(), "", "tabby", 6, "stdin"),
    ("JSON not an object", add_env(), "[1, 2]", "tabby", 6, "object"),
    ("missing cniVersion", add_env(), json.dumps({**GOOD, "cniVersion": None}), "tabby", 7, "cniVersion"),
    ("unsupported cniVersion", add_env(), json.dumps({**GOOD, "cniVersion": "0.1.0"}), "tabby", 1, "0.1.0"),
    ("missing name", add_env(), json.dumps({**GOOD, "name": ""}), "tabby", 7, "name"),
    ("wrong type", add_env(), json.dumps({**GOOD, "type": "bridge"}), "tabby", 7, "bridge"),
    ("wrong ipam type", add_env(), json.dumps({**GOOD, "ipam": {"type": "host-local"}}), "tabby-ipam", 7,
     "host-local"),
    ("missing CNI_CONTAINERID", add_env(CNI_CONTAINERID="<unset>"), json.dumps(GOOD), "tabby", 4, "CNI_CONTAINERID"),
    ("bad CNI_CONTAINERID", add_env(CNI_CONTAINERID="a b/c"), json.dumps(GOOD), "tabby", 4, "CNI_CONTAINERID"),
    ("missing CNI_NETNS for ADD", add_env(CNI_NETNS="<unset>"), json.dumps(GOOD), "tabby", 4, "CNI_NETNS"),
    ("CNI_NETNS does not exist", add_env(CNI_NETNS="/run/netns/tabby-no-such"), json.dumps(GOOD), "tabby", 3,
     "CNI_NETNS"),
    ("missing CNI_IFNAME", add_env(CNI_IFNAME="<unset>"), json.dumps(GOOD), "tabby", 4, "CNI_IFNAME"),
    ("CNI_IFNAME too long", add_env(CNI_IFNAME="eth0123456789abcdef"), json.dumps(GOOD), "tabby", 4, "CNI_IFNAME"),
    ("bad CNI_ARGS", add_env(CNI_ARGS="K8S_POD_NAME"), json.dumps(GOOD), "tabby", 4, "CNI_ARGS"),
    ("labels not an object", add_env(), json.dumps({**GOOD, "labels": "x"}), "tabby", 7, "labels"),
    ("bad timeout", add_env(), json.dumps({**GOOD, "timeout": -1}), "tabby", 7, "timeout"),
    ("GC needs 1.1.0", add_env(CNI_COMMAND="GC"), json.dumps(GOOD), "tabby", 1, "1.1.0"),
    ("CHECK needs 0.4.0", add_env(CNI_COMMAND="CHECK"), json.dumps({**GOOD, "cniVersion": "0.3.1"}), "tabby", 1,
     "0.4.0"),
    ("no agent socket", add_env(), json.dumps(GOOD), "tabby", 11, "/nonexistent-tabby"),
    ("no agent for nodename", add_env(), json.dumps({**GOOD, "nodename": "n7"}), "tabby", 11,
     "/nonexistent-tabby/n7/agent.sock"),
]


@pytest.mark.parametrize(("env", "stdin", "mode", "code", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_spec_error(env: dict[str, str], stdin: str, mode: str, code: int, word: str, variant: str,
                                    request: pytest.FixtureRequest) -> None:
    bin_dir = request.getfixturevalue("installed") if variant == "native" else None
    rc, out = run(env, stdin, mode, argv=argv_for(variant, mode, bin_dir))
    assert rc != 0
    assert set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert out["code"] == code, out
    assert word in out["msg"], out
    assert isinstance(out["cniVersion"], str) and out["cniVersion"]


def test_version_without_agent(variant: str, request: pytest.FixtureRequest) -> None:
    bin_dir = request.getfixturevalue("installed") if variant == "native" else None
    rc, out = run({"CNI_COMMAND": "VERSION"}, "", argv=argv_for(variant, "tabby", bin_dir))
    assert rc == 0 and out["cniVersion"] and "1.0.0" in out["supportedVersions"]


def test_plugin_imports_only_stdlib_and_starts_fast() -> None:
    text = PLUGIN.read_text()
    imports = {line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"_json", "_socket", "posix", "sys"}, imports
    best = min(_timed_version() for _ in range(5))
    assert best < 0.25, best  # typically ~15 ms; generous bound for loaded CI machines


# Pure-Python modules the json/socket/os packages pull in (re, enum, functools, selectors ...): ~14 ms
# of every pod's start together. The plugin's happy paths (VERSION, ADD forwarded to an agent) load none.
HEAVY = {"json", "json.decoder", "re", "enum", "functools", "socket", "selectors", "os", "collections"}


def _imported(env: dict[str, str], stdin: str) -> set[str]:
    full = {"PATH": os.environ.get("PATH", ""), "TABBY_RUN_ROOT": "/nonexistent-tabby", **env}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-I", "-S", str(PLUGIN), "tabby"], input=stdin,
                          env=full, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stdout
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def test_happy_paths_import_nothing_heavy(tmp_path: Path) -> None:
    assert not _imported({"CNI_COMMAND": "VERSION"}, "") & HEAVY
    path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            assert json.loads(data)["command"] == "ADD"
            conn.sendall(b'{"result": {"ips": [{"address": "10.0.0.5/32"}]}}\n')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert not _imported(add_env(), json.dumps({**GOOD, "agent_socket": str(path)})) & HEAVY
    thread.join(5)
    srv.close()


@pytest.mark.parametrize("text", ['{"a": [1, -2.5e3, null, true, false, "\\u00e9\\n"], "b": {}}', ' \n[] ', '"x"', "0"])
def test_fast_json_matches_the_json_package(text: str) -> None:
    """The plugin's C-scanner JSON (no json package import) parses and prints as json does."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import plugin, json; t = sys.argv[2]; "
            "v = plugin.json_loads(t); assert v == json.loads(t), v; "
            "assert plugin.json_dumps(v) == json.dumps(v), plugin.json_dumps(v); "
            "assert json.loads(plugin.json_dumps({'k': v, 'u': 'caf\\u00e9'})) == {'k': v, 'u': 'caf\\u00e9'}")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(PLUGIN.parent), text], capture_output=True,
                          text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("text", ['{"a": 1} x', "{", '{"a": }', "[1,]", "nul"])
def test_fast_json_rejects_what_json_rejects(text: str) -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import plugin\n"
            "try:\n    plugin.json_loads(sys.argv[2])\nexcept ValueError as e:\n    print(type(e).__name__, e)\n"
            "else:\n    sys.exit('accepted')")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(PLUGIN.parent), text], capture_output=True,
                          text=True, timeout=20)
    assert proc.returncode == 0 and proc.stdout.startswith("JSONDecodeError"), (proc.stdout, proc.stderr)


def _timed_version() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-S", str(PLUGIN)], env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                   check=True, timeout=10)
    return time.perf_counter() - start


def test_forwards_to_agent_socket_and_relays_errors(tmp_path: Path) -> None:
    """A fake agent on the socket named by the netconf: request shape in, result/error out."""
    path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    seen: list[dict] = []
    replies = [
        {"result": {"ips": [{"address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1}]}},
        {"error": {"cniVersion": "1.0.0", "code": 11, "msg": "etcd unreachable", "details": "x"}},
    ]

    def serve() -> None:
        for reply in replies:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                seen.append(json.loads(data))
                conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    conf = {**GOOD, "agent_socket": str(path)}
    rc, out = run(add_env(CNI_ARGS="K8S_POD_NAME=p"), json.dumps(conf))
    assert rc == 0 and out["cniVersion"] == "1.0.0" and out["ips"][0]["address"] == "10.0.0.5/32"
    assert seen[0]["command"] == "ADD" and seen[0]["mode"] == "tabby"
    assert seen[0]["env"]["CNI_ARGS"] == "K8S_POD_NAME=p" and seen[0]["config"]["name"] == "net"
    rc, out = run(add_env(), json.dumps(conf))
    assert rc == 1 and out == {"cniVersion": "1.0.0", "code": 11, "msg": "etcd unreachable", "details": "x"}
    thread.join(5)
    srv.close()


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_calico_stock_versions_get_results_in_their_shape(tmp_path: Path, version: str) -> None:
    """Calico's stock conflist says cniVersion 0.3.1: accepted, result with "version" per address."""
    path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    reply = {"result": {"ips": [{"address": "10.0.0.5/32", "interface": 0}, {"address": "fd00::5/128"}]}}

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    rc, out = run(add_env(), json.dumps({**GOOD, "cniVersion": version, "agent_socket": str(path)}))
    assert rc == 0, out
    assert out["cniVersion"] == version
    assert [(ip["address"], ip["version"]) for ip in out["ips"]] == [("10.0.0.5/32", "4"), ("fd00::5/128", "6")]
    thread.join(5)
    srv.close()
