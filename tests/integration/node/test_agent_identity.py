"""A restarted agent keeps its node name without NODENAME; a second agent for the node is refused."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

from datastore import Datastore, EtcdConfig
from datastore.keys import resource_prefix

from .conftest import PYTHON, ROOT, NodeLab, apply_pool


def _node_names(config: EtcdConfig) -> list[str]:
    async def go() -> list[str]:
        async with Datastore(config) as ds:
            kvs, _ = await ds.list(resource_prefix("nodes"))
            return sorted(json.loads(kv.value)["metadata"]["name"] for kv in kvs)

    return asyncio.run(go())


def test_restart_without_nodename_and_second_agent(node_lab: NodeLab, etcd_env: dict[str, str],
                                                   etcd_config: EtcdConfig) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a = next(iter(node_lab.nodes))
    node_lab.set_address(a)
    agent = node_lab.start_agent(a)
    assert _node_names(etcd_config) == [a]
    # A second agent for the same node (same run root) refuses at once with one line.
    second = subprocess.run([PYTHON, "-m", "controller.node"], env=agent.env, capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"Error: another tabby-node agent (pid {agent.proc.pid}) is already running for node {a} "  # type: ignore[union-attr]
        f"(lock {node_lab.run_root}/{a}/agent.lock); stop it first"]
    agent.stop(signal.SIGKILL)
    # The natural manual restart: no NODENAME (nor HOSTNAME). The nodename file written at first start names it.
    agent.env = {k: v for k, v in agent.env.items() if k not in ("NODENAME", "HOSTNAME")}
    agent.start()
    node_lab.wait_ready(a)
    assert _node_names(etcd_config) == [a]
    assert f'"source": "{node_lab.run_root}/by-netns/' in agent.log_text()
