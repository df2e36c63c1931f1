"""`tabbyctl datastore migrate export|import` against a real etcd: calicoctl's file format (three parts
split by `===`), its rules (export needs the lock; import needs an empty datastore and leaves it locked),
and a round trip into a second prefix that reproduces every resource and IPAM record."""

from __future__ import annotations

import json
from typing import Any

import yaml

from datastore import Datastore, EtcdConfig
from datastore.keys import AFFINITIES, BLOCKS, HANDLES
from ipam import IPAMClient

SEED = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a, labels: {team: a}}
spec: {cidr: 10.90.0.0/24, blockSize: 28}
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 63400}
---
apiVersion: projectcalico.org/v3
kind: IPReservation
metadata: {name: keep}
spec: {reservedCIDRs: [10.90.0.1]}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-1}
spec: {bgp: {ipv4Address: 192.0.2.1/24}}
"""


def _dump(etcd_config: EtcdConfig, prefix: str) -> dict[str, Any]:
    """Every resource (without uid/creationTimestamp) and IPAM value under ``prefix``."""
    import asyncio

    async def go() -> dict[str, Any]:
        async with Datastore(EtcdConfig(endpoints=etcd_config.endpoints, prefix=prefix)) as ds:
            out: dict[str, Any] = {}
            for base in ("resources/v3/", BLOCKS, AFFINITIES, HANDLES):
                kvs, _ = await ds.list(base)
                for kv in kvs:
                    value = kv.json()
                    if base == "resources/v3/":
                        if kv.key.startswith("resources/v3/clusterinformations/"):
                            continue
                        value["metadata"].pop("uid", None)
                        value["metadata"].pop("creationTimestamp", None)
                    out[kv.key] = value
            return out

    return asyncio.run(go())


def test_export_import_round_trip(ctl: Any, run_ds: Any, etcd_env: dict[str, str], etcd_config: EtcdConfig,
                                  tmp_path: Any) -> None:
    assert ctl("apply", "-f", "-", input=SEED).rc == 0

    async def allocate(ds: Any) -> list[str]:
        c = IPAMClient(ds, cache_ttl=0)
        return [ip for i in range(3) for ip in (await c.auto_assign(node="node-1", handle_id=f"h{i}")).v4]

    ips = run_ds(allocate)
    refused = ctl("datastore", "migrate", "export")
    assert refused.rc == 1 and refused.err_lines == [
        "Error: datastore is not locked. Run the `tabbyctl datastore migrate lock` command in order to begin migration"
    ]
    assert ctl("datastore", "migrate", "lock").rc == 0
    exported = ctl("datastore", "migrate", "export")
    assert exported.rc == 0, exported.err
    resources, info, ipam = exported.out.split("===\n")
    lists = [d for d in yaml.safe_load_all(resources) if d]
    pools = next(d for d in lists if d["kind"] == "IPPoolList")
    assert [p["metadata"] for p in pools["items"]] == [{"name": "pool-a", "labels": {"team": "a"}}]  # --export
    assert "BlockAffinityList" not in {d["kind"] for d in lists} and json.loads(info)["kind"] == "ClusterInformation"
    records = json.loads(ipam)
    assert len(records["ipam_handles"]) == 3 and len(records["ipam_blocks"]) == 1
    assert len(records["block_affinities"]) == 1
    path = tmp_path / "export.txt"
    path.write_text(exported.out)

    target_prefix = etcd_config.prefix.rstrip("/") + "-target/"
    target = dict(etcd_env, TABBY_ETCD_PREFIX=target_prefix)
    imported = ctl("datastore", "migrate", "import", "-f", str(path), env=target)
    assert imported.rc == 0, imported.err
    assert imported.out.splitlines() == [
        f"Successfully applied {sum(len(d['items']) for d in lists)} resource(s)",
        "Importing IPAM resources",
        "Successfully applied 5 IPAM resource(s)",
        "Datastore information successfully imported. Check it, then run `tabbyctl datastore migrate unlock`.",
    ]
    assert _dump(etcd_config, target_prefix) == _dump(etcd_config, etcd_config.prefix)
    old_info = yaml.safe_load(ctl("get", "clusterinformation", "default", "-o", "yaml").out)
    new_info = yaml.safe_load(ctl("get", "clusterinformation", "default", "-o", "yaml", env=target).out)
    assert new_info["spec"]["clusterGUID"] == old_info["spec"]["clusterGUID"]
    assert new_info["spec"]["datastoreReady"] is False, "import leaves the datastore locked"
    # The imported IPAM is live: the handles hold the same addresses, a new allocation avoids them.
    shown = ctl("ipam", "show", "--ip", ips[0], env=target)
    assert shown.rc == 0 and "is in use" in shown.out, shown.out
    # A second import into the now non-empty datastore is refused, nothing written.
    again = ctl("datastore", "migrate", "import", "-f", str(path), env=target)
    assert again.rc == 1
    assert again.err_lines == [
        "Error: Datastore already has Tabby resources: Found existing bgpconfigurations resources."
        " Import needs an empty datastore."
    ]


def test_import_refuses_a_malformed_file(ctl: Any, write: Any) -> None:
    res = ctl("datastore", "migrate", "import", "-f", write("bad.txt", "kind: IPPoolList\nitems: []\n"))
    assert res.rc == 1
    assert res.err_lines == [
        f"Error: Imported file: {write('bad.txt', 'x')} is improperly formatted."
        " Try recreating with 'tabbyctl datastore migrate export'"
    ]
