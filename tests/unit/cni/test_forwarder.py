"""The native forwarder (controller/cni/forward.c) in front of the agent's real local API
(controller.node.api.ApiServer, with a stand-in for the CNI handlers): every call answered exactly
as the Python plugin answers it (stdout and exit code, byte for byte), the ADD/DEL/CHECK it can
pass on passed on without starting Python, and everything else left to the Python plugin: no
agent, an agent that does not know forwarded calls, unusual netconfs, other commands."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.node.api import ApiServer
from controller.node.cni_handlers import TRY_AGAIN_LATER, CNIError, Request

from .conftest import SYSTEM_PATH
from .test_plugin_errors import PLUGIN

GOOD = {"cniVersion": "1.0.0", "name": "net", "type": "tabby", "ipam": {"type": "tabby-ipam"}}


class Agent:
    """An ApiServer on its own loop thread; the handler answers like the agent's, and records."""

    def __init__(self, run_root: Path) -> None:
        self.run_root = run_root
        self.seen: list[Request] = []
        self.forwarded = 0
        self.error: CNIError | None = None
        self.loop = asyncio.new_event_loop()
        self.server = ApiServer(run_root / "agent.sock", self.handle)
        original = self.server._forwarded

        async def counting(data: dict[str, Any]) -> bytes:
            self.forwarded += 1
            return await original(data)

        self.server._forwarded = counting  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, req: Request) -> dict[str, Any]:
        self.seen.append(req)
        if self.error is not None:
            raise self.error
        if req.command == "ADD":
            return {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/32", "gateway": "169.254.1.1",
                                                     "interface": 1}, {"address": "fd00::5/128", "interface": 1}],
                    "interfaces": [{"name": "cali1", "mac": "ee:ee:ee:ee:ee:ee"}], "routes": [], "dns": {}}
        return {}

    def __enter__(self) -> Agent:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with Agent(tmp_path / "run") as a:
        yield a


def call(argv: list[str], env: dict[str, str], stdin: str, run_root: Path) -> tuple[int, str, float]:
    full = {"PATH": SYSTEM_PATH, "TABBY_RUN_ROOT": str(run_root), **env}
    t = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=full, capture_output=True, text=True, timeout=30)
    dt = time.perf_counter() - t
    assert proc.stderr == "", proc.stderr
    return proc.returncode, proc.stdout, dt


def both(installed: Path, agent: Agent, env: dict[str, str], stdin: str, mode: str = "tabby") -> tuple[int, str]:
    """The same call through the Python plugin and through the forwarder: the same answer."""
    py = call([sys.executable, "-I", "-S", str(PLUGIN), mode], env, stdin, agent.run_root)
    seen_py = [(r.command, dict(r.env), dict(r.config), r.mode) for r in agent.seen]
    agent.seen.clear()
    native = call([str(installed / mode)], env, stdin, agent.run_root)
    seen_native = [(r.command, dict(r.env), dict(r.config), r.mode) for r in agent.seen]
    agent.seen.clear()
    assert native[:2] == py[:2]
    assert seen_native == seen_py  # the handler got the same request either way
    return native[0], native[1]


def env_for(command: str, **over: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1",
           "K8S_EXTRA": "x", "UNRELATED": "y"}
    env.update(over)
    return {k: v for k, v in env.items() if v != "<unset>"}


@pytest.mark.parametrize(("command", "conf", "mode"), [
    ("ADD", GOOD, "tabby"),
    ("ADD", {**GOOD, "cniVersion": "0.3.1"}, "tabby"),
    ("ADD", {**GOOD, "labels": {"app": "caf\u00e9 \"q\" \\ \n"}, "dns": {"nameservers": ["10.0.0.10"]}}, "tabby"),
    ("ADD", GOOD, "tabby-ipam"),
    ("DEL", GOOD, "tabby"),
    ("CHECK", {**GOOD, "prevResult": {"cniVersion": "1.0.0", "ips": []}}, "tabby"),
])
def test_forwarded_calls_answer_as_the_plugin(installed: Path, agent: Agent, command: str, conf: dict,
                                              mode: str) -> None:
    rc, out = both(installed, agent, env_for(command), json.dumps(conf), mode)
    assert rc == 0, out
    assert agent.forwarded == 1  # the forwarder passed it on (the Python plugin's call is not forwarded)
    if command == "ADD":
        result = json.loads(out)
        assert result["cniVersion"] == conf["cniVersion"]
        assert result["ips"][0]["address"] == "10.9.0.5/32"


def test_agent_socket_and_nodename_are_followed(installed: Path, agent: Agent) -> None:
    conf = {**GOOD, "agent_socket": str(agent.run_root / "agent.sock")}
    assert both(installed, agent, env_for("ADD"), json.dumps(conf))[0] == 0
    # nodename n1 -> <run root>/n1/agent.sock: not there (only <run root>/agent.sock is) -> code 11 alike
    rc, out = both(installed, agent, env_for("ADD"), json.dumps({**GOOD, "nodename": "n1"}))
    assert rc == 1 and "n1/agent.sock" in json.loads(out)["msg"]
    assert agent.forwarded == 1


@pytest.mark.parametrize(("env", "conf", "code"), [
    (env_for("ADD", CNI_IFNAME="eth0123456789abcdef"), GOOD, 4),
    (env_for("ADD", CNI_CONTAINERID="<unset>"), GOOD, 4),
    (env_for("ADD", CNI_NETNS="/run/netns/tabby-no-such"), GOOD, 3),
    (env_for("ADD", CNI_ARGS="K8S_POD_NAME"), GOOD, 4),
    (env_for("ADD"), {**GOOD, "type": "bridge"}, 7),
    (env_for("ADD"), {**GOOD, "cniVersion": "0.1.0"}, 1),
    (env_for("CHECK"), {**GOOD, "cniVersion": "0.3.1"}, 1),
    (env_for("ADD"), {**GOOD, "labels": "x"}, 7),
    (env_for("ADD"), {**GOOD, "name": ""}, 7),
])
def test_bad_calls_get_the_plugins_errors_with_an_agent_up(installed: Path, agent: Agent, env: dict,
                                                           conf: dict, code: int) -> None:
    rc, out = both(installed, agent, env, json.dumps(conf))
    assert rc == 1 and json.loads(out)["code"] == code, out
    assert agent.forwarded == 1 and agent.seen == []  # validated by the plugin's code in the agent


def test_agent_error_relayed_alike(installed: Path, agent: Agent) -> None:
    agent.error = CNIError(TRY_AGAIN_LATER, "the tabby node agent of n1 is not ready: watch stale", "d")
    rc, out = both(installed, agent, env_for("ADD"), json.dumps({**GOOD, "cniVersion": "1.1.0"}))
    assert rc == 1
    assert json.loads(out) == {"cniVersion": "1.1.0", "code": 11, "details": "d",
                               "msg": "the tabby node agent of n1 is not ready: watch stale"}


@pytest.mark.parametrize(("env", "stdin"), [
    (env_for("VERSION"), ""),
    (env_for("GC"), json.dumps({**GOOD, "cniVersion": "1.1.0"})),
    (env_for("STATUS"), json.dumps({**GOOD, "cniVersion": "1.1.0"})),
    (env_for("ADD"), "{not json"),
    (env_for("ADD"), ""),
    (env_for("ADD"), json.dumps({**GOOD, "timeout": 7})),
    (env_for("ADD"), json.dumps({**GOOD, "nodename": ""})),
    (env_for("ADD"), json.dumps({**GOOD, "nodename": 5})),
    (env_for("ADD"), json.dumps({**GOOD, "agent_socket": "/x\\y"})),
    (env_for("ADD"), json.dumps(GOOD) + " x"),
    (env_for("FROB"), json.dumps(GOOD)),
])
def test_the_rest_is_the_python_plugins(installed: Path, agent: Agent, env: dict, stdin: str) -> None:
    both(installed, agent, env, stdin)
    assert agent.forwarded == 0


def test_no_agent_is_code_11_as_the_plugin_says(installed: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    py = call([sys.executable, "-I", "-S", str(PLUGIN), "tabby"], env_for("ADD"), json.dumps(GOOD), root)
    native = call([str(installed / "tabby")], env_for("ADD"), json.dumps(GOOD), root)
    assert native[:2] == py[:2]
    assert py[0] == 1 and json.loads(py[1])["code"] == 11


def _one_shot_server(path: Path, replies: list[bytes | None]) -> threading.Thread:
    path.parent.mkdir(parents=True, exist_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)

    def serve() -> None:
        with srv:
            for reply in replies:
                conn, _ = srv.accept()
                with conn:
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if reply is not None:
                        conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_an_agent_without_forwarding_gets_the_plugins_call(installed: Path, tmp_path: Path) -> None:
    """An older agent refuses the forwarded call (an error reply, nothing done): the forwarder then
    runs the Python plugin, whose classic request that agent serves."""
    root = tmp_path / "run"
    result = {"result": {"ips": [{"address": "10.9.0.7/32"}]}}
    thread = _one_shot_server(root / "agent.sock", [
        json.dumps({"error": {"code": 6, "msg": "local API: command must be one of ADD, got None"}}).encode() + b"\n",
        json.dumps(result).encode() + b"\n",
    ])
    rc, out, _ = call([str(installed / "tabby")], env_for("ADD"), json.dumps(GOOD), root)
    thread.join(5)
    assert rc == 0 and json.loads(out)["ips"][0]["address"] == "10.9.0.7/32", out


def test_agent_closing_without_answer(installed: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    thread = _one_shot_server(root / "agent.sock", [None, None])
    native = call([str(installed / "tabby")], env_for("ADD"), json.dumps({**GOOD, "cniVersion": "0.4.0"}), root)
    py = call([sys.executable, "-I", "-S", str(PLUGIN), "tabby"], env_for("ADD"),
              json.dumps({**GOOD, "cniVersion": "0.4.0"}), root)
    thread.join(5)
    assert native[:2] == py[:2]
    assert json.loads(native[1])["code"] == 11 and "closed the connection" in json.loads(native[1])["msg"]


def test_forwarded_add_starts_no_python(installed: Path, agent: Agent) -> None:
    """The point of the forwarder: an ADD costs a few ms, not an interpreter start."""
    env, stdin = env_for("ADD"), json.dumps(GOOD)
    native = min(call([str(installed / "tabby")], env, stdin, agent.run_root)[2] for _ in range(5))
    bare = min(call([sys.executable, "-I", "-S", "-c", "pass"], {}, "", agent.run_root)[2] for _ in range(5))
    assert agent.forwarded == 5
    assert native < bare, (native, bare)  # generous: typically ~3 ms against ~10 ms
    assert os.access(installed / "tabby-py", os.X_OK)
