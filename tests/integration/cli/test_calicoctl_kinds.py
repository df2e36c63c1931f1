"""Kinds Calico users' manifests carry, through tabbyctl as a subprocess against a real etcd:
KubeControllersConfiguration, IPReservation, BlockAffinity (read-only view of IPAM), CalicoNodeStatus."""

from __future__ import annotations

from typing import Any

import yaml

from datastore.keys import resource_key
from ipam import IPAMClient

KCC = """apiVersion: projectcalico.org/v3
kind: KubeControllersConfiguration
metadata: {name: default}
spec:
  logSeverityScreen: Info
  healthChecks: Enabled
  controllers:
    node: {reconcilerPeriod: 5m, leakGracePeriod: 15m}
"""
RESERVATION = """apiVersion: projectcalico.org/v3
kind: IPReservation
metadata: {name: keep}
spec:
  reservedCIDRs: [10.80.0.4/30, 10.80.0.9]
"""
POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 10.80.0.0/24, blockSize: 28}
"""


def test_kube_controllers_configuration_is_stored_and_unread_fields_warned_about(ctl: Any) -> None:
    res = ctl("apply", "-f", "-", input=KCC)
    assert res.rc == 0, res.err
    assert res.out.strip() == "Successfully applied 1 'KubeControllersConfiguration' resource(s)"
    # the fields the controller reads pass silently; healthChecks is stored and warned about
    assert res.err_lines == [
        "Warning: KubeControllersConfiguration default: spec.healthChecks: recorded only: Tabby's cluster"
        " controller (tabby-controller) reads reconcilerPeriod and leakGracePeriod of controllers.node and"
        " logSeverityScreen"
    ], res.err_lines
    got = yaml.safe_load(ctl("get", "kubecontrollersconfigs", "default", "-o", "yaml").out)
    assert got["spec"]["controllers"]["node"] == {"reconcilerPeriod": "5m", "leakGracePeriod": "15m"}
    bad = ctl("apply", "-f", "-", input=KCC.replace("name: default", "name: other").replace("Enabled", "Sometimes"))
    assert bad.rc == 1
    assert bad.err_lines == [
        "Error: <stdin> document 1 (KubeControllersConfiguration other): metadata.name: must be 'default'"
        " (KubeControllersConfiguration is a singleton), got 'other'",
        "Error: <stdin> document 1 (KubeControllersConfiguration other): spec.healthChecks: must be one of"
        " 'Enabled' or 'Disabled', got string 'Sometimes'",
    ]


def test_ip_reservation_columns_and_ipam_honours_it(ctl: Any, run_ds: Any) -> None:
    res = ctl("apply", "-f", "-", input=POOL + "---\n" + RESERVATION)
    assert res.rc == 0, res.err
    assert ctl("get", "ipreservations").out.split() == ["NAME", "keep"]
    assert ctl("get", "reservation", "-o", "wide").out.split() == ["NAME", "CIDRS", "keep", "10.80.0.4/30,10.80.0.9"]

    async def body(ds: Any) -> list[str]:
        c = IPAMClient(ds, cache_ttl=0)
        return [ip for i in range(12) for ip in (await c.auto_assign(node="n1", handle_id=f"h{i}")).v4]

    got = run_ds(body)
    assert not {"10.80.0.4", "10.80.0.5", "10.80.0.6", "10.80.0.7", "10.80.0.9"} & set(got), got


def test_block_affinities_are_a_read_only_view_of_ipam(ctl: Any, run_ds: Any) -> None:
    assert ctl("apply", "-f", "-", input=POOL).rc == 0

    async def body(ds: Any) -> None:
        c = IPAMClient(ds, cache_ttl=0)
        await c.auto_assign(node="node-1", handle_id="h1")
        await c.auto_assign(node="node-2", handle_id="h2")

    run_ds(body)
    table = ctl("get", "blockaffinities")
    assert table.rc == 0, table.err
    rows = [line.split() for line in table.out.splitlines()]
    assert rows[0] == ["NAME", "NODE", "CIDR", "STATE"]
    assert sorted(r[1] for r in rows[1:]) == ["node-1", "node-2"]
    name = next(r[0] for r in rows[1:] if r[1] == "node-1")
    cidr = next(r[2] for r in rows[1:] if r[1] == "node-1")
    assert name == "node-1-" + cidr.replace(".", "-").replace("/", "-")
    doc = yaml.safe_load(ctl("get", "blockaffinity", name, "-o", "yaml").out)
    assert doc["kind"] == "BlockAffinity"
    assert doc["spec"] == {"state": "confirmed", "node": "node-1", "cidr": cidr, "deleted": "false", "type": "host"}
    assert int(doc["metadata"]["resourceVersion"]) > 0
    listing = yaml.safe_load(ctl("get", "affinities", "-o", "yaml").out)
    assert listing["kind"] == "BlockAffinityList" and len(listing["items"]) == 2
    # Read-only: IPAM owns affinities.
    write = ctl("apply", "-f", "-", input=yaml.safe_dump(doc))
    assert write.rc == 1
    assert write.err_lines == [
        f"Error: operation Apply is not supported on BlockAffinity {name}: block affinities are managed by"
        " Tabby's IPAM (see tabbyctl ipam show --show-blocks)"
    ]
    gone = ctl("delete", "blockaffinity", name)
    assert gone.rc == 1 and "operation Delete is not supported on BlockAffinity" in gone.err
    assert ctl("get", "blockaffinity", "nope").err_lines == ["Error: resource does not exist: BlockAffinity nope"]


def test_calico_node_status_request_round_trips(ctl: Any, run_ds: Any) -> None:
    doc = """apiVersion: projectcalico.org/v3
kind: CalicoNodeStatus
metadata: {name: status-1}
spec: {node: node-1, classes: [Agent, BGP, Routes], updatePeriodSeconds: 10}
"""
    res = ctl("create", "-f", "-", input=doc)
    assert res.rc == 0, res.err
    assert ctl("get", "caliconodestatus", "-o", "wide").out.split() == [
        "NAME", "NODE", "CLASSES", "status-1", "node-1", "Agent,BGP,Routes"
    ]

    async def stored(ds: Any) -> Any:
        kv = await ds.get(resource_key("caliconodestatuses", "status-1"))
        return kv.json()

    assert run_ds(stored)["spec"]["classes"] == ["Agent", "BGP", "Routes"]
    bad = ctl("apply", "-f", "-", input=doc.replace("Routes]", "Routez]"))
    assert bad.rc == 1 and "spec.classes[2]: must be one of 'Agent', 'BGP' or 'Routes'" in bad.err
