"""etcd with user/password authentication: tabbyctl, the agent (and the CNI path through it) and the
controller work with ETCD_USERNAME/ETCD_PASSWORD; a wrong password is one clear line; the password
never reaches a log."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from controller.cluster.config import ControllerConfig
from controller.cluster.service import Controller
from datastore import EtcdConfig
from tests.helpers.etcd import EtcdServer

from .conftest import NodeLab, apply_pool

PASSWORD = "s3cr3t-pw-7f2"
TABBYCTL = str(Path(sys.executable).parent / "tabbyctl")


def test_password_auth_end_to_end(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "etcd")
    server.workdir.mkdir(parents=True)
    server.start()
    lab: NodeLab | None = None
    try:
        ctl = ["etcdctl", f"--endpoints={server.endpoint}"]
        for cmd in (["user", "add", f"root:{PASSWORD}"], ["user", "grant-role", "root", "root"], ["auth", "enable"]):
            res = subprocess.run([*ctl, *cmd], capture_output=True, text=True, timeout=30)
            assert res.returncode == 0, res.stderr
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        env.update(ETCD_ENDPOINTS=server.endpoint, ETCD_USERNAME="root", ETCD_PASSWORD=PASSWORD,
                   TABBY_ETCD_PREFIX="/tabby/")
        wrong = subprocess.run([TABBYCTL, "get", "ippools"], env={**env, "ETCD_PASSWORD": "nope"},
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 1
        lines = wrong.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "authentication failed" in lines[0], wrong.stderr

        apply_pool(env)  # tabbyctl with the right password
        lab = NodeLab(tmp_path, env)
        lab.add_nodes(2)
        a = next(iter(lab.nodes))
        lab.set_address(a)
        agent = lab.start_agent(a)
        pod = lab.add_pod(a, "auth-pod")  # plugin -> agent -> etcd with a token
        assert lab.ping(pod.netns, lab.node_ip(a))

        async def controller_leads() -> int:
            config = EtcdConfig(endpoints=(server.endpoint,), prefix="/tabby/", username="root", password=PASSWORD)
            ctl_ = Controller(ControllerConfig(etcd=config, interval=0.2, leader_ttl=2, identity="auth"))
            stop = asyncio.Event()
            run = asyncio.create_task(ctl_.run(stop))
            for _ in range(100):
                if ctl_.cycles:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await run
            return ctl_.cycles

        assert asyncio.run(controller_leads()) > 0
        assert PASSWORD not in agent.log_text()
    finally:
        if lab is not None:
            lab.cleanup()
        server.stop()
