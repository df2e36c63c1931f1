"""CNI ADD and DEL while a large apply holds the pod's WorkloadEndpoint staged (real agent, etcd, plugin).

A ``tabbyctl apply`` bigger than one etcd transaction writes staging envelopes under the final keys
(datastore/staged.py). The CNI handlers write the endpoint with a compare on the mod_revision the
agent's model holds; for a staged key that is the envelope's, so before the fix an ADD replaced the
envelope with its own endpoint and a DEL deleted it (the apply's change lost, and its clean-up
left with nothing to clean). Now both wait while the key is held and then act on what the apply left.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from datastore import Datastore, EtcdConfig, staged
from datastore.keys import resource_key
from tests.integration.controller.helpers import INTENT, stage
from tests.integration.node.conftest import NodeLab, apply_pool
from tests.integration.node.test_agent_cni import handle_ips, ipam_check

pytestmark = pytest.mark.root


def _get(config: EtcdConfig, key: str) -> tuple[bytes, Any] | None:
    async def body() -> tuple[bytes, Any] | None:
        async with Datastore(config) as ds:
            kv = await ds.get(key)
            return (kv.value, kv.json()) if kv is not None else None

    return asyncio.run(body())


def _hold(config: EtcdConfig, key: str, new: dict[str, Any]) -> bytes:
    """Stage ``new`` at ``key`` under a pending intent whose writer is alive; the envelope bytes."""

    async def body() -> bytes:
        async with Datastore(config) as ds:
            envelope = await stage(ds, key, new, staged.PENDING)
            await ds.put(staged.OWNERS + INTENT, {"intent": INTENT})
            return envelope

    return asyncio.run(body())


def _land(config: EtcdConfig, key: str, plain: dict[str, Any]) -> None:
    """The apply ends (its clean-up, or its roll-back): ``plain`` at the key, the intent gone."""

    async def body() -> None:
        async with Datastore(config) as ds:
            await ds.put(key, plain)
            await ds.delete(staged.RECORDS + INTENT)
            await ds.delete(staged.OWNERS + INTENT)

    asyncio.run(body())


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(result=fn()), daemon=True)
    thread.start()
    return thread, out


def test_add_and_del_wait_for_a_staged_endpoint(node_lab: NodeLab, etcd_env: dict[str, str],
                                                etcd_config: EtcdConfig) -> None:
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, _b = node_lab.nodes
    node_lab.set_address(a)
    node_lab.start_agent(a)
    pod = node_lab.add_pod(a, "held")
    key = resource_key("workloadendpoints", f"{a}-k8s-held-eth0", "default")
    found = _get(etcd_config, key)
    assert found is not None
    doc = found[1]

    # ADD again (a runtime retry) while an apply stages a label on the endpoint.
    labelled = {**doc, "metadata": {**doc["metadata"], "labels": {**doc["metadata"].get("labels", {}),
                                                                  "tier": "gold"}}}
    envelope = _hold(etcd_config, key, labelled)
    time.sleep(0.5)  # the agent's model has seen the envelope
    thread, out = _in_thread(lambda: node_lab.plugin(a, "ADD", container_id=pod.container_id,
                                                     netns=f"/run/netns/{pod.netns}", args=node_lab.pod_args(pod)))
    thread.join(1.5)
    assert thread.is_alive(), f"ADD did not wait for the staged endpoint: {out}"
    now = _get(etcd_config, key)
    assert now is not None and now[0] == envelope, "ADD wrote into the staged endpoint"
    _land(etcd_config, key, labelled)
    thread.join(30)
    code, res = out["result"]
    assert code == 0, res
    new_ip = res["ips"][0]["address"].split("/")[0]
    now = _get(etcd_config, key)
    assert now is not None
    assert now[1]["metadata"]["labels"].get("tier") == "gold", now[1]  # the apply's label is kept
    assert now[1]["spec"]["ipNetworks"] == [f"{new_ip}/32"]
    assert handle_ips(etcd_config, f"tabbynet.{pod.container_id}") == [new_ip]
    assert ipam_check(etcd_config)["problems"] == 0

    # DEL while an apply stages another change: the endpoint is deleted only after the apply ends.
    current = now[1]
    envelope = _hold(etcd_config, key, {**current, "metadata": {**current["metadata"], "labels": {"tier": "lead"}}})
    time.sleep(0.5)
    thread, out = _in_thread(lambda: node_lab.del_pod(pod))
    thread.join(1.5)
    assert thread.is_alive(), f"DEL did not wait for the staged endpoint: {out}"
    now = _get(etcd_config, key)
    assert now is not None and now[0] == envelope, "DEL deleted the staged endpoint"
    _land(etcd_config, key, current)  # rolled back: the endpoint as it was
    thread.join(30)
    code, res = out["result"]
    assert code == 0, res
    assert _get(etcd_config, key) is None
    assert handle_ips(etcd_config, f"tabbynet.{pod.container_id}") == []
    assert ipam_check(etcd_config)["problems"] == 0
