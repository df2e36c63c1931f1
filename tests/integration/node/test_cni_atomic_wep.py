"""The WorkloadEndpoint is written in the same etcd transaction as the pod's block and handle.

Why it matters: an allocation without its endpoint is what `ipam check` and the IPAM GC call a
leak, so an agent killed between two writes could lose a live pod's IP to the next pod. These
tests SIGKILL the agent the moment ADD returns and look at etcd; and they check that re-ADDing a
pod (a runtime retry) does not overwrite a label set on its endpoint with `tabbyctl label`.
"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from datastore import Datastore, EtcdConfig
from datastore.keys import resource_key
from ipam import IPAMClient
from tests.integration.node.conftest import AgentProc, NodeLab, apply_pool
from tests.integration.node.test_agent_cni import handle_ips, ipam_check, tabbyctl

pytestmark = pytest.mark.root


def wep(config: EtcdConfig, name: str, namespace: str) -> dict | None:
    async def body() -> dict | None:
        async with Datastore(config) as ds:
            kv = await ds.get(resource_key("workloadendpoints", name, namespace))
            return kv.json() if kv is not None else None

    return asyncio.run(body())


def gc_leaks(config: EtcdConfig) -> list[str]:
    """What the leak release would free (the IPAM GC's view): leaked IPs in a fresh check."""
    from controller.node.inuse import live_allocations

    async def body() -> list[str]:
        async with Datastore(config) as ds:
            report = await IPAMClient(ds).check(in_use=await live_allocations(ds))
            return [p.ip for p in report.problems if p.kind == "allocated-not-in-use" and p.ip]

    return asyncio.run(body())


def test_sigkill_after_add_keeps_ip_and_endpoint(node_lab: NodeLab, etcd_env: dict[str, str],
                                                 etcd_config: EtcdConfig) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, _b = node_lab.nodes
    node_lab.set_address(a)
    node_lab.start_agent(a)
    pods = []
    for i in range(3):
        pod = node_lab.add_pod(a, f"kill-{i}")
        pods.append(pod)
    node_lab.agents[a].stop(signal.SIGKILL)  # right after the last ADD returned
    for i, pod in enumerate(pods):
        assert handle_ips(etcd_config, f"tabbynet.{pod.container_id}") == [pod.ip]
        doc = wep(etcd_config, f"{a}-k8s-kill--{i}-eth0", "default")
        assert doc is not None, f"endpoint of {pod.name} missing after SIGKILL"
        assert doc["spec"]["ipNetworks"] == [f"{pod.ip}/32"]
        assert doc["spec"]["mac"] == pod.result["interfaces"][1]["mac"]
    summary = ipam_check(etcd_config)
    assert summary["problems"] == 0, summary
    assert gc_leaks(etcd_config) == []


def test_readd_keeps_labels_set_with_tabbyctl(node_lab: NodeLab, etcd_env: dict[str, str],
                                              etcd_config: EtcdConfig) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, _b = node_lab.nodes
    node_lab.set_address(a)
    node_lab.start_agent(a)
    pod = node_lab.add_pod(a, "lbl")
    name = f"{a}-k8s-lbl-eth0"
    out = tabbyctl(etcd_env, "label", "workloadendpoint", name, "tier=gold", "-n", "default")
    assert out.returncode == 0, out.stderr
    # The runtime retries ADD for the same container: the earlier addresses are released first,
    # the endpoint is updated against its current revision and keeps the label.
    code, res = node_lab.plugin(a, "ADD", container_id=pod.container_id, netns=f"/run/netns/{pod.netns}",
                                args=node_lab.pod_args(pod))
    assert code == 0, res
    doc = wep(etcd_config, name, "default")
    assert doc is not None and doc["metadata"]["labels"].get("tier") == "gold", json.dumps(doc)
    new_ip = res["ips"][0]["address"].split("/")[0]
    assert doc["spec"]["ipNetworks"] == [f"{new_ip}/32"]
    assert handle_ips(etcd_config, f"tabbynet.{pod.container_id}") == [new_ip]
    assert ipam_check(etcd_config)["problems"] == 0
    code, res = node_lab.del_pod(pod)
    assert code == 0, res
    assert wep(etcd_config, name, "default") is None
    assert handle_ips(etcd_config, f"tabbynet.{pod.container_id}") == []


def test_sigkill_the_moment_the_allocation_lands(node_lab: NodeLab, etcd_env: dict[str, str],
                                                 etcd_config: EtcdConfig) -> None:
    """Kill the agent as soon as the pod's handle is in etcd (mid-ADD): its endpoint is already there.

    With the endpoint written after the veth plumbing (the old order) this catches the agent in the
    tens of milliseconds between the two writes, and `ipam check` reports the address as leaked.
    """
    import os
    import subprocess
    import time
    import uuid

    from datastore.keys import handle_key
    from tests.integration.node.conftest import PLUGIN, PYTHON, sh

    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, _b = node_lab.nodes
    node_lab.set_address(a)
    for i in range(2):
        agent = node_lab.start_agent(a)
        ns = f"tbp-{node_lab.tag}-mid{i}"
        sh("ip", "netns", "add", ns)
        node_lab.extra_ns.append(ns)
        cid = uuid.uuid4().hex
        env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid,
               "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
               "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=mid{i}", "TABBY_RUN_ROOT": str(node_lab.run_root)}

        async def race(cid: str = cid, env: dict[str, str] = env, agent: AgentProc = agent) -> None:
            async with Datastore(etcd_config) as ds:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", node_lab.nodes[a], PYTHON, "-I", "-S", str(PLUGIN), "tabby"],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, text=True)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(node_lab.netconf()))
                proc.stdin.close()
                deadline = time.monotonic() + 20
                while await ds.get(handle_key(f"tabbynet.{cid}")) is None:
                    assert time.monotonic() < deadline, "the allocation never landed"
                    assert proc.poll() is None or proc.returncode == 0
                assert agent.proc is not None
                agent.proc.send_signal(signal.SIGKILL)
                agent.proc.wait(timeout=10)
                agent.proc = None
                proc.wait(timeout=30)

        asyncio.run(race())
        assert wep(etcd_config, f"{a}-k8s-mid{i}-eth0", "default") is not None, "allocation without its endpoint"
        summary = ipam_check(etcd_config)
        assert summary["problems"] == 0, summary
        assert gc_leaks(etcd_config) == []
