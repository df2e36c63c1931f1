"""A silent watch under a real agent: its etcd is SIGSTOPped (the TCP connection stays open, nothing
answers). Within the progress bound the agent calls its view stale: STATUS says why, CNI ADD answers
code 11 "try again later"; after SIGCONT the agent re-dials, resyncs and ADD works again. The etcd is
the test's own (tests/helpers/etcd.private_etcd): the session's etcd is never stopped."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from datastore.watch import PROGRESS_INTERVAL, PROGRESS_TIMEOUT
from tests.helpers.etcd import private_etcd
from tests.integration.node.conftest import NodeLab, apply_pool, in_ns

pytestmark = pytest.mark.root

#: Detection bound: a progress request after PROGRESS_INTERVAL of silence, PROGRESS_TIMEOUT to answer,
#: plus slack for a loaded machine and STATUS polling.
BOUND = PROGRESS_INTERVAL + PROGRESS_TIMEOUT + 2.5


def test_silent_etcd_makes_cni_try_again_then_resyncs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with private_etcd(tmp_path / "etcd") as etcd:
        env = dict(os.environ)
        for var in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_USERNAME", "ETCD_PASSWORD"):
            env.pop(var, None)
        env.update({"ETCD_ENDPOINTS": etcd.endpoint, "TABBY_ETCD_PREFIX": "/tabby/"})
        lab = NodeLab(tmp_path, env)
        try:
            apply_pool(env)
            lab.add_nodes(1)
            (a,) = lab.nodes
            ns = lab.nodes[a]
            in_ns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
            for dev in ("eth0", "eth0p"):
                in_ns(ns, "ip", "link", "set", dev, "up")
            lab.set_address(a)
            lab.start_agent(a, TABBY_CNI_TIMEOUT="2")
            lab.add_pod(a, "before")
            assert etcd.proc is not None
            pid = etcd.proc.pid

            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                while True:
                    code, out = lab.plugin(a, "STATUS", cni_version="1.1.0")
                    if code != 0:
                        break
                    assert time.monotonic() - stopped < BOUND + 5, "the agent never noticed the silent watch"
                    time.sleep(0.2)
                detected = time.monotonic() - stopped
                assert out["code"] == 50 and "stale" in out["msg"] and "silent" in out["msg"], out
                assert detected <= BOUND, f"stale detected after {detected:.1f}s, bound {BOUND:.1f}s"

                pod = lab.add_pod(a, "while-silent", expect_ok=False)
                assert pod.result.get("code") == 11, pod.result
                assert "stale" in pod.result["msg"] and "try again later" in pod.result["msg"], pod.result
                assert set(pod.result) == {"cniVersion", "code", "msg", "details"}
            finally:
                os.kill(pid, signal.SIGCONT)

            deadline = time.monotonic() + 30
            while True:
                code, out = lab.plugin(a, "STATUS", cni_version="1.1.0")
                if code == 0:
                    break
                assert time.monotonic() < deadline, f"not fresh again after SIGCONT: {out}"
                time.sleep(0.2)
            log = lab.agents[a].log_text()
            assert '"watch.stale"' in log and '"agent.datastore_fresh"' in log, log[-3000:]
            assert log.count('"agent.snapshot"') >= 2, "no resync after the silent period"
            code, out = lab.plugin(a, "ADD", container_id=pod.container_id, netns=f"/run/netns/{pod.netns}",
                                   args=lab.pod_args(pod))
            assert code == 0, out
            pod.result = out
            assert lab.ping(pod.netns, lab.pods[0].ip)
        finally:
            lab.cleanup()
