"""calicoctl fidelity through tabbyctl as a subprocess: kinds, support policy, ClusterInformation."""

from __future__ import annotations

from typing import Any

import yaml

from datamodel.resources.registry import supported_kinds
from datastore.keys import resource_prefix

GNP = """apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: deny-all}
spec: {node: n1}
"""
POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 10.70.0.0/16}
"""


def _names(run_ds: Any, plural: str) -> list[str]:
    async def body(ds: Any) -> list[str]:
        kvs, _ = await ds.list(resource_prefix(plural))
        return [kv.key.rsplit("/", 1)[-1] for kv in kvs]

    return run_ds(body)


def test_cluster_information_written_once_and_version_shows_it(ctl: Any) -> None:
    res = ctl("version")
    assert res.rc == 0, res.err
    lines = dict(line.split(":", 1) for line in res.out.splitlines())
    client, cluster = lines["Client Version"].strip(), lines["Cluster Version"].strip()
    assert cluster == client and cluster.startswith("v"), res.out
    first = yaml.safe_load(ctl("get", "clusterinformation", "default", "-o", "yaml").out)
    assert first["spec"]["calicoVersion"] == cluster
    assert first["spec"]["datastoreReady"] is True
    assert first["spec"]["clusterType"] == "tabby,etcdv3,bgp"
    ctl("get", "ippools")
    again = yaml.safe_load(ctl("get", "clusterinfo", "default", "-o", "yaml").out)
    assert again["spec"]["clusterGUID"] == first["spec"]["clusterGUID"]  # written once, never replaced
    table = ctl("get", "clusterinformation").out
    assert "DATASTOREREADY" in table and "true" in table


def test_unsupported_kind_is_named_and_skip_unsupported_applies_the_rest(ctl: Any, run_ds: Any) -> None:
    res = ctl("apply", "-f", "-", input=GNP + "---\n" + POOL)
    assert res.rc == 1
    assert res.err_lines == [
        "Error: <stdin> document 1 (HostEndpoint deny-all): kind: HostEndpoint is a Calico kind Tabby"
        f" does not support (Tabby supports: {supported_kinds()}); use --skip-unsupported to apply the rest"
    ]
    assert "BGPConfiguration, BGPFilter, BGPPeer" in supported_kinds()
    assert "did you mean" not in res.err
    assert _names(run_ds, "ippools") == []
    res = ctl("apply", "--skip-unsupported", "-f", "-", input=GNP + "---\n" + POOL)
    assert res.rc == 0, res.err
    assert "Skipped 1 document(s) of Calico kinds Tabby does not support: <stdin> document 1" in res.err
    assert res.out.strip() == "Successfully applied 1 'IPPool' resource(s)"
    assert _names(run_ds, "ippools") == ["pool-a"]
    res = ctl("get", "hostendpoint")
    assert res.rc == 1 and "HostEndpoint is a Calico kind Tabby does not support" in res.err
    assert "did you mean" not in res.err


def test_support_policy_refuses_at_apply_and_writes_nothing(ctl: Any, run_ds: Any) -> None:
    peer = """apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 192.0.2.1, asNumber: 65001, reachableBy: 192.0.2.254}
"""
    res = ctl("apply", "-f", "-", input=POOL + "---\n" + peer)
    assert res.rc == 1
    assert res.err_lines == [
        "Error: BGPPeer tor: spec.reachableBy: Tabby does not support this yet:"
        " Tabby installs no route towards the peer"
    ]
    assert _names(run_ds, "ippools") == [] and _names(run_ds, "bgppeers") == []


def test_felix_configuration_apply_get_with_warning(ctl: Any) -> None:
    felix = """apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {vxlanPort: 4790, logSeverityScreen: Info}
"""
    res = ctl("apply", "-f", "-", input=felix)
    assert res.rc == 0, res.err
    assert ("Warning: FelixConfiguration default: spec.vxlanPort: stored, but the node agent does not act on this "
            "field") in res.err
    assert "logSeverityScreen" not in res.err, "a consumed field is not warned about"
    got = yaml.safe_load(ctl("get", "felixconfiguration", "default", "-o", "yaml").out)
    assert got["spec"] == {"vxlanPort": 4790, "logSeverityScreen": "Info"}
    bad = felix.replace("logSeverityScreen: Info", "logSeverityScreen: info")
    res = ctl("apply", "-f", "-", input=bad)
    assert res.rc == 1 and "spec.logSeverityScreen" in res.err


def test_delete_default_bgp_configuration_is_refused(ctl: Any) -> None:
    cfg = (
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 63400}\n"
    )
    assert ctl("apply", "-f", "-", input=cfg).rc == 0
    res = ctl("delete", "bgpconfiguration", "default")
    assert res.rc == 1
    assert res.err_lines == [
        "Error: BGPConfiguration default cannot be deleted: it holds the cluster-wide BGP settings"
        " (change it with apply or patch instead)"
    ]
    assert ctl("get", "bgpconfiguration", "default").rc == 0


def test_get_nodes_wide_shows_the_inherited_cluster_as(ctl: Any) -> None:
    docs = (
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 63400}\n"
        "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n"
        "spec: {bgp: {ipv4Address: 10.0.0.1/24}}\n"
        "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n2}\n"
        "spec: {bgp: {ipv4Address: 10.0.0.2/24, asNumber: 65002}}\n"
    )
    assert ctl("apply", "-f", "-", input=docs).rc == 0
    rows = [line.split() for line in ctl("get", "nodes", "-o", "wide").out.splitlines()]
    assert rows[0][:3] == ["NAME", "ASN", "IPV4"]
    assert rows[1][:3] == ["n1", "(63400)", "10.0.0.1/24"]
    assert rows[2][:3] == ["n2", "65002", "10.0.0.2/24"]


def test_datastore_settings_as_calicoctl_reads_them(ctl: Any, etcd_env: dict[str, str], tmp_path: Any) -> None:
    res = ctl("get", "ippools", env={**etcd_env, "DATASTORE_TYPE": "kubernetes"})
    assert res.rc == 1
    assert res.err_lines == [
        "Error: DATASTORE_TYPE=kubernetes: Tabby supports only the etcdv3 datastore (unset it, or set etcdv3)"
    ]
    env = {k: v for k, v in etcd_env.items() if k != "ETCD_ENDPOINTS"}
    res = ctl("get", "ippools", env={**env, "CALICO_ETCD_ENDPOINTS": etcd_env["ETCD_ENDPOINTS"]})
    assert res.rc == 0, res.err
    cfg = tmp_path / "calicoctl.cfg"
    cfg.write_text(
        "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\n"
        f"spec:\n  datastoreType: etcdv3\n  etcdEndpoints: {etcd_env['ETCD_ENDPOINTS']}\n"
    )
    res = ctl("get", "ippools", env={**env, "TABBY_CALICOCTL_CFG": str(cfg), "TABBY_ETCD_TIMEOUT": "2"})
    assert res.rc == 0, res.err  # the default config file was read (no endpoint anywhere else)
    cfg.write_text(cfg.read_text().replace("etcdv3", "kubernetes"))
    res = ctl("get", "ippools", env={**env, "TABBY_CALICOCTL_CFG": str(cfg)})
    assert res.rc == 1 and "datastoreType: only etcdv3 is supported" in res.err


def test_datastore_migrate_lock_and_unlock(ctl: Any) -> None:
    res = ctl("datastore", "migrate", "lock")
    assert res.rc == 0 and res.out.strip() == "Datastore locked.", res.err
    info = yaml.safe_load(ctl("get", "clusterinformation", "default", "-o", "yaml").out)
    assert info["spec"]["datastoreReady"] is False
    res = ctl("datastore", "migrate", "unlock")
    assert res.rc == 0 and res.out.strip() == "Datastore unlocked."
    info = yaml.safe_load(ctl("get", "clusterinformation", "default", "-o", "yaml").out)
    assert info["spec"]["datastoreReady"] is True
    res = ctl("datastore", "migrate", "export")
    assert res.rc == 1 and "datastore is not locked" in res.err  # tests/integration/cli/test_datastore_migrate.py


def test_delete_short_skip_not_exists(ctl: Any) -> None:
    res = ctl("delete", "ippool", "nope", "-s")
    assert res.rc == 0, res.err
    assert res.out == "Successfully deleted 1 'IPPool' resource(s)\n"  # calicoctl counts the skipped
    assert "Skipped 1 resource(s) that do not exist: IPPool nope" in res.err
