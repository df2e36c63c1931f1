"""tabbyctl resource verbs against a real etcd: what a user types, what a user sees."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from ipam.client import IPAMClient

POOLS = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 10.10.0.0/16
  ipipMode: Always
  natOutgoing: true
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-b
spec:
  cidr: 10.20.0.0/16
  vxlanMode: CrossSubnet
"""


def names(ctl: Any, kind: str = "ippool") -> list[str]:
    res = ctl("get", kind, "-o", "json")
    assert res.rc == 0, res.err
    return [item["metadata"]["name"] for item in json.loads(res.out)["items"]]


def test_create_get_replace_apply_delete_round_trip(ctl: Any, write: Callable[[str, str], str]) -> None:
    res = ctl("create", "-f", write("pools.yaml", POOLS))
    assert res.rc == 0, res.err
    assert res.out.strip() == "Successfully created 2 'IPPool' resource(s)"
    assert names(ctl) == ["pool-a", "pool-b"]

    first = yaml.safe_load(ctl("get", "ippool", "pool-a", "-o", "yaml").out)
    assert first["kind"] == "IPPool"
    md = first["metadata"]
    assert md["uid"] and md["creationTimestamp"].endswith("Z") and int(md["resourceVersion"]) > 0
    assert first["spec"]["blockSize"] == 26 and first["spec"]["nodeSelector"] == "all()"

    # replace keeps uid and creationTimestamp, bumps resourceVersion
    changed = POOLS.replace("natOutgoing: true", "natOutgoing: false")
    res = ctl("replace", "-f", write("changed.yaml", changed))
    assert res.rc == 0, res.err
    assert res.out.strip() == "Successfully replaced 2 'IPPool' resource(s)"
    second = yaml.safe_load(ctl("get", "ippool", "pool-a", "-o", "yaml").out)
    assert second["spec"]["natOutgoing"] is False
    assert second["metadata"]["uid"] == md["uid"]
    assert second["metadata"]["creationTimestamp"] == md["creationTimestamp"]
    assert int(second["metadata"]["resourceVersion"]) > int(md["resourceVersion"])

    # apply creates what is missing and replaces what exists
    third = POOLS + "---\n" + POOLS.split("---\n")[0].replace("pool-a", "pool-c").replace("10.10.", "10.30.")
    res = ctl("apply", "-f", write("third.yaml", third))
    assert res.rc == 0, res.err
    assert res.out.strip() == "Successfully applied 3 'IPPool' resource(s)"
    assert names(ctl) == ["pool-a", "pool-b", "pool-c"]

    res = ctl("delete", "-f", write("del.yaml", POOLS))
    assert res.rc == 0, res.err
    assert res.out.strip() == "Successfully deleted 2 'IPPool' resource(s)"
    res = ctl("delete", "ippool", "pool-c")
    assert res.rc == 0 and "Successfully deleted 1 'IPPool' resource(s)" in res.out
    assert names(ctl) == []


def test_create_existing_refused_and_skip_exists(ctl: Any, write: Callable[[str, str], str]) -> None:
    path = write("pools.yaml", POOLS)
    assert ctl("create", "-f", path).rc == 0
    res = ctl("create", "-f", path)
    assert res.rc == 1
    assert res.err_lines == [  # calicoctl's line, byte for byte
        "Failed to create any 'IPPool' resources: [resource already exists: IPPool(pool-a)"
        " resource already exists: IPPool(pool-b)]",
    ]
    res = ctl("create", "--skip-exists", "-f", path)
    assert res.rc == 0, res.err
    assert res.out == "Successfully created 2 'IPPool' resource(s)\n"  # skips count, as in calicoctl
    assert "Skipped 2" in res.err


def test_replace_missing_and_delete_missing(ctl: Any, write: Callable[[str, str], str]) -> None:
    res = ctl("replace", "-f", write("pools.yaml", POOLS))
    assert res.rc == 1
    assert res.err_lines == [
        "Failed to replace any 'IPPool' resources: [resource does not exist: IPPool(pool-a) with error: <nil>"
        " resource does not exist: IPPool(pool-b) with error: <nil>]"
    ]
    assert names(ctl) == []
    res = ctl("delete", "ippool", "pool-x")
    assert res.rc == 1
    assert res.err_lines == [
        "Failed to delete 'IPPool' resource: resource does not exist: IPPool(pool-x) with error: <nil>"
    ]
    res = ctl("delete", "ippool", "pool-x", "--skip-not-exists")
    assert res.rc == 0, res.err
    assert res.out == "Successfully deleted 1 'IPPool' resource(s)\n"


def test_replace_with_stale_resource_version_is_a_conflict(ctl: Any, write: Callable[[str, str], str]) -> None:
    assert ctl("create", "-f", write("pools.yaml", POOLS)).rc == 0
    stale = ctl("get", "ippool", "pool-a", "-o", "yaml").out
    assert ctl("label", "ippool", "pool-a", "team=net").rc == 0  # someone else writes
    res = ctl("replace", "-f", write("stale.yaml", stale.replace("natOutgoing: true", "natOutgoing: false")))
    assert res.rc == 1
    assert res.err_lines == ["Failed to replace 'IPPool' resource: [update conflict: IPPool(pool-a)]"]
    current = yaml.safe_load(ctl("get", "ippool", "pool-a", "-o", "yaml").out)
    assert current["spec"]["natOutgoing"] is True


def test_get_output_formats(ctl: Any, write: Callable[[str, str], str]) -> None:
    assert ctl("create", "-f", write("pools.yaml", POOLS)).rc == 0

    ps = ctl("get", "ippool").out.splitlines()
    assert ps[0].split() == ["NAME", "CIDR", "SELECTOR"]
    assert ps[1].split() == ["pool-a", "10.10.0.0/16", "all()"]
    assert ps[0].index("CIDR") == ps[1].index("10.10.0.0/16")  # aligned columns

    wide = ctl("get", "ippool", "-o", "wide").out.splitlines()
    assert wide[0].split() == [
        "NAME",
        "CIDR",
        "NAT",
        "IPIPMODE",
        "VXLANMODE",
        "DISABLED",
        "DISABLEBGPEXPORT",
        "SELECTOR",
    ]
    assert wide[1].split() == ["pool-a", "10.10.0.0/16", "true", "Always", "Never", "false", "false", "all()"]
    assert wide[2].split()[4] == "CrossSubnet"

    listing = yaml.safe_load(ctl("get", "ippool", "-o", "yaml").out)
    assert listing["apiVersion"] == "projectcalico.org/v3"
    assert listing["kind"] == "IPPoolList"
    assert int(listing["metadata"]["resourceVersion"]) > 0
    assert [i["metadata"]["name"] for i in listing["items"]] == ["pool-a", "pool-b"]
    assert all(i["kind"] == "IPPool" for i in listing["items"])

    as_json = json.loads(ctl("get", "ippool", "-o", "json").out)
    assert as_json["kind"] == "IPPoolList" and len(as_json["items"]) == 2

    one = json.loads(ctl("get", "ippool", "pool-b", "-o", "json").out)
    assert one["kind"] == "IPPool" and one["spec"]["vxlanMode"] == "CrossSubnet"

    custom = ctl("get", "ippool", "-o", "custom-columns=NAME,IPIPMODE").out.splitlines()
    assert custom[0].split() == ["NAME", "IPIPMODE"] and custom[1].split() == ["pool-a", "Always"]

    # The yaml printed by get is valid input again (calicoctl round trip).
    res = ctl("apply", "-f", "-", input=ctl("get", "ippool", "-o", "yaml").out)
    assert res.rc == 0, res.err

    res = ctl("get", "ippool", "-o", "xml")
    assert res.rc == 1 and "unknown output format" in res.err


def test_get_empty_listing_prints_headers(ctl: Any) -> None:
    res = ctl("get", "ippools")
    assert res.rc == 0, res.err
    assert res.out.split() == ["NAME", "CIDR", "SELECTOR"]
    listing = yaml.safe_load(ctl("get", "ippools", "-o", "yaml").out)
    assert listing["kind"] == "IPPoolList" and listing["items"] == []


@pytest.mark.parametrize("alias", ["ippool", "IPPool", "ippools", "IPPOOLS", "ipp", "pool", "pools"])
def test_kind_aliases(ctl: Any, write: Callable[[str, str], str], alias: str) -> None:
    assert ctl("create", "-f", write("pools.yaml", POOLS)).rc == 0
    res = ctl("get", alias, "pool-a", "-o", "json")
    assert res.rc == 0, res.err
    assert json.loads(res.out)["metadata"]["name"] == "pool-a"


def test_unknown_kind_and_missing_name(ctl: Any) -> None:
    res = ctl("get", "ipool")
    assert res.rc == 1
    assert len(res.err_lines) == 1
    assert "unknown resource type 'ipool'" in res.err_lines[0]
    res = ctl("get", "ippool", "nope")
    assert res.rc == 1
    assert res.err_lines == ["Error: resource does not exist: IPPool nope"]


def test_ipamconfig_alias_and_other_kinds(ctl: Any, write: Callable[[str, str], str]) -> None:
    docs = """\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  asNumber: 64513
  nodeToNodeMeshEnabled: false
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: tor
spec:
  peerIP: 192.0.2.1
  asNumber: 65001
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node1
spec:
  bgp:
    ipv4Address: 192.0.2.10/24
"""
    res = ctl("create", "-f", write("mixed.yaml", docs))
    assert res.rc == 0, res.err
    assert res.out.strip() == "Successfully created 3 resource(s)"
    assert json.loads(ctl("get", "bgpconfig", "default", "-o", "json").out)["spec"]["asNumber"] == 64513
    assert names(ctl, "bgppeers") == ["tor"]
    assert names(ctl, "nodes") == ["node1"]


def test_label_set_overwrite_remove(ctl: Any, write: Callable[[str, str], str]) -> None:
    assert ctl("create", "-f", write("pools.yaml", POOLS)).rc == 0
    res = ctl("label", "ippool", "pool-a", "env=prod")
    assert res.rc == 0, res.err
    assert res.out == "Successfully set label env on ippool pool-a\n"
    res = ctl("label", "ippool", "pool-a", "env=dev")
    assert res.rc == 1
    assert res.err_lines == [
        "Error: failed to update label of ippool pool-a, key env is already present."
        " please use '--overwrite' to set a new value."
    ]
    res = ctl("label", "ippool", "pool-a", "env=dev", "--overwrite")
    assert res.rc == 0 and res.out == "Successfully updated label env on ippool pool-a\n"
    labels = json.loads(ctl("get", "ippool", "pool-a", "-o", "json").out)["metadata"]["labels"]
    assert labels == {"env": "dev"}
    assert ctl("label", "ippool", "pool-a", "env", "--remove").rc == 0
    assert "labels" not in json.loads(ctl("get", "ippool", "pool-a", "-o", "json").out)["metadata"]
    res = ctl("label", "ippool", "pool-a", "env", "--remove")
    assert res.rc == 1 and res.err_lines == ["Error: cannot remove label of ippool pool-a, key env does not exist"]
    res = ctl("label", "ippool", "pool-a", "bad key=x")
    assert res.rc == 1 and "labels" in res.err
    res = ctl("label", "ippool", "nope", "a=b")
    assert res.rc == 1 and res.err_lines == ["Error: resource does not exist: IPPool nope"]


def test_patch_merges_validates_and_keeps_identity(ctl: Any, write: Callable[[str, str], str]) -> None:
    assert ctl("create", "-f", write("pools.yaml", POOLS)).rc == 0
    before = json.loads(ctl("get", "ippool", "pool-b", "-o", "json").out)
    res = ctl("patch", "ippool", "pool-b", "-p", '{"spec":{"disabled":true,"vxlanMode":null}}')
    assert res.rc == 0, res.err
    after = json.loads(ctl("get", "ippool", "pool-b", "-o", "json").out)
    assert after["spec"]["disabled"] is True
    assert after["spec"]["vxlanMode"] == "Never"  # null removes the field; the default comes back
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])

    res = ctl("patch", "ippool", "pool-b", "-p", '{"spec":{"ipipMode":"Sometimes"}}')
    assert res.rc == 1 and "spec.ipipMode" in res.err
    res = ctl("patch", "ippool", "pool-b", "-p", '{"spec":{"ipipMod":"Always"}}')
    assert res.rc == 1
    assert res.err_lines[0].startswith("Error: IPPool pool-b: spec.ipipMod: unknown field")
    res = ctl("patch", "ippool", "pool-b", "-p", "{not json")
    assert res.rc == 1 and "not valid JSON" in res.err
    res = ctl("patch", "ippool", "pool-b", "-p", '{"metadata":{"name":"other"}}')
    assert res.rc == 1 and "metadata.name: cannot be changed" in res.err
    assert json.loads(ctl("get", "ippool", "pool-b", "-o", "json").out)["spec"] == after["spec"]


def test_overlapping_pool_refused(ctl: Any, write: Callable[[str, str], str], pool_doc: Any) -> None:
    assert ctl("create", "-f", write("a.yaml", pool_doc("pool-a", "10.0.0.0/16"))).rc == 0
    res = ctl("create", "-f", write("b.yaml", pool_doc("pool-b", "10.0.0.0/24")))
    assert res.rc == 1
    assert res.err_lines == ["Error: IPPool pool-b: spec.cidr: 10.0.0.0/24 overlaps IPPool pool-a (10.0.0.0/16)"]
    assert names(ctl) == ["pool-a"]
    # Overlap inside one input is caught before anything is written.
    both = pool_doc("pool-c", "10.5.0.0/16") + "---\n" + pool_doc("pool-d", "10.5.128.0/17")
    res = ctl("create", "-f", write("cd.yaml", both))
    assert res.rc == 1 and "overlaps IPPool pool-c" in res.err
    assert names(ctl) == ["pool-a"]
    # Replacing a pool by itself is not an overlap.
    assert ctl("apply", "-f", write("a2.yaml", pool_doc("pool-a", "10.0.0.0/16", natOutgoing=True))).rc == 0


def test_immutable_pool_fields(ctl: Any, write: Callable[[str, str], str], pool_doc: Any) -> None:
    assert ctl("create", "-f", write("a.yaml", pool_doc("pool-a", "10.0.0.0/16"))).rc == 0
    res = ctl("apply", "-f", write("a2.yaml", pool_doc("pool-a", "10.0.0.0/16", blockSize=28)))
    assert res.rc == 1
    assert res.err_lines == ["Error: IPPool pool-a: spec.blockSize: cannot be changed (was 26, now 28)"]
    res = ctl("replace", "-f", write("a3.yaml", pool_doc("pool-a", "10.1.0.0/16")))
    assert res.rc == 1 and "spec.cidr: cannot be changed (was 10.0.0.0/16" in res.err
    res = ctl("patch", "ippool", "pool-a", "-p", '{"spec":{"blockSize":24}}')
    assert res.rc == 1 and "spec.blockSize: cannot be changed (was 26" in res.err
    assert json.loads(ctl("get", "ippool", "pool-a", "-o", "json").out)["spec"]["blockSize"] == 26


def test_delete_pool_with_allocations_refused(
    ctl: Any, write: Callable[[str, str], str], pool_doc: Any, run_ds: Any
) -> None:
    assert ctl("create", "-f", write("a.yaml", pool_doc("pool-a", "10.44.0.0/16"))).rc == 0

    async def allocate(ds: Any) -> list[str]:
        client = IPAMClient(ds)
        out = []
        for i in range(5):
            out += (await client.auto_assign(node="node1", handle_id=f"net.c{i}")).v4
        return out

    ips = run_ds(allocate)
    res = ctl("delete", "ippool", "pool-a")
    assert res.rc == 1
    assert res.err_lines == [
        "Error: IPPool pool-a still has 5 allocated addresses: disable it (spec.disabled: true) and release them first"
    ]
    assert ctl("patch", "ippool", "pool-a", "-p", '{"spec":{"disabled":true}}').rc == 0
    res = ctl("delete", "ippool", "pool-a")
    assert res.rc == 1 and "still has 5 allocated addresses: release them first" in res.err
    assert names(ctl) == ["pool-a"]

    res = ctl("ipam", "release", *[a for ip in ips for a in ("--ip", ip)])
    assert res.rc == 0, res.err
    res = ctl("delete", "ippool", "pool-a")
    assert res.rc == 0, res.err
    assert names(ctl) == []


def test_multi_document_all_or_nothing(ctl: Any, write: Callable[[str, str], str], pool_doc: Any) -> None:
    bad = (
        pool_doc("good-1", "10.1.0.0/16")
        + "---\n"
        + pool_doc("good-2", "10.2.0.0/16")
        + "---\n"
        + pool_doc("bad-3", "10.3.0.0/16", ipipMode="Always", vxlanMode="Always")
    )
    for verb in ("create", "apply"):
        res = ctl(verb, "-f", write("bad.yaml", bad))
        assert res.rc == 1
        assert len(res.err_lines) == 1
        assert "document 3 (IPPool bad-3)" in res.err and "IPIP and VXLAN" in res.err
        assert names(ctl) == []
        assert ctl("get", "ippool", "good-1").rc == 1

    # A store-level problem in the last document (exists already) also writes nothing.
    assert ctl("create", "-f", write("c.yaml", pool_doc("bad-3", "10.3.0.0/16"))).rc == 0
    res = ctl("create", "-f", write("ok.yaml", bad.replace("  vxlanMode: Always\n", "")))
    assert res.rc == 1
    assert res.err_lines == ["Failed to create any 'IPPool' resources: [resource already exists: IPPool(bad-3)]"]
    assert names(ctl) == ["bad-3"]


def test_unknown_field_errors_name_the_path(ctl: Any, write: Callable[[str, str], str]) -> None:
    doc = POOLS.replace("natOutgoing: true", "natOutgoin: true").replace("vxlanMode", "vxlanmode")
    res = ctl("create", "-f", write("typo.yaml", doc))
    assert res.rc == 1
    assert len(res.err_lines) == 2
    assert "typo.yaml document 1 (IPPool pool-a): spec.natOutgoin: unknown field" in res.err_lines[0]
    assert "did you mean 'natOutgoing'" in res.err_lines[0]
    assert "document 2 (IPPool pool-b): spec.vxlanmode: unknown field" in res.err_lines[1]
    assert names(ctl) == []


def test_input_forms_stdin_json_list_directory(ctl: Any, write: Callable[[str, str], str], tmp_path: Any) -> None:
    res = ctl("create", "-f", "-", input=POOLS)
    assert res.rc == 0, res.err
    as_json = json.dumps(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPoolList",
            "items": [{"metadata": {"name": "pool-j"}, "spec": {"cidr": "10.60.0.0/16"}}],
        }
    )
    res = ctl("apply", "-f", write("list.json", as_json))
    assert res.rc == 0, res.err
    assert "pool-j" in names(ctl)
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "a.yaml").write_text(POOLS.split("---\n")[0].replace("pool-a", "pool-x").replace("10.10.", "10.70."))
    (directory / "b.yml").write_text(POOLS.split("---\n")[1].replace("pool-b", "pool-y").replace("10.20.", "10.80."))
    (directory / "notes.txt").write_text("ignored")
    res = ctl("create", "-f", str(directory))
    assert res.rc == 0, res.err
    assert {"pool-x", "pool-y"} <= set(names(ctl))


def test_large_input_written_in_batches(ctl: Any, write: Callable[[str, str], str], pool_doc: Any) -> None:
    """More documents than etcd allows operations in one transaction still land, all of them."""
    docs = "---\n".join(pool_doc(f"p{i}", f"10.{i // 256}.{i % 256}.0/24", blockSize=26) for i in range(300))
    res = ctl("create", "-f", write("many.yaml", docs), timeout=120)
    assert res.rc == 0, res.err
    assert "Successfully created 300 'IPPool' resource(s)" in res.out
    assert len(names(ctl)) == 300


def test_concurrent_creates_of_overlapping_pools_never_overlap(
    write: Callable[[str, str], str], pool_doc: Any, ctl: Any
) -> None:
    """Clients racing to create overlapping pools: the guard key serialises them."""
    files = [
        write(f"r{i}.yaml", pool_doc(f"race-{i}", f"10.{90 + i % 2}.0.0/16" if i else "10.90.0.0/15")) for i in range(6)
    ]

    async def race() -> list[Any]:
        return await asyncio.gather(*(asyncio.to_thread(ctl, "create", "-f", f) for f in files))

    results = asyncio.run(race())
    created = names(ctl)
    # race-1/3/5 share 10.91.0.0/16, race-2/4 share 10.90.0.0/16, race-0 covers both.
    assert sum(r.rc == 0 for r in results) == len(created) >= 1
    assert all("overlaps IPPool" in r.err for r in results if r.rc != 0)
    nets = [json.loads(ctl("get", "ippool", n, "-o", "json").out)["spec"]["cidr"] for n in created]
    parsed = [ipaddress.ip_network(n) for n in nets]
    for i, a in enumerate(parsed):
        for b in parsed[i + 1 :]:
            assert not a.overlaps(b), nets


WEP = """\
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-pod--a-eth0
spec:
  node: node1
  pod: pod-a
  ipNetworks: [10.0.0.5/32]
  interfaceName: tab0123456789a
"""


def test_namespaced_resources(ctl: Any, write: Callable[[str, str], str]) -> None:
    path = write("wep.yaml", WEP)
    assert ctl("create", "-f", path).rc == 0  # no namespace: "default", as calicoctl
    assert ctl("create", "-f", path, "-n", "ns1").rc == 0  # -n places a document that names none
    res = ctl("create", "-f", path, "-n", "ns1")
    assert res.rc == 1 and res.err_lines == [
        "Failed to create 'WorkloadEndpoint' resource: [resource already exists:"
        " WorkloadEndpoint(ns1/node1-k8s-pod--a-eth0)]"
    ]

    table = ctl("get", "wep").out.splitlines()
    assert table[0].split() == ["NAMESPACE", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
    assert [line.split()[0] for line in table[1:]] == ["default"]
    assert [line.split()[0] for line in ctl("get", "weps", "-n", "ns1").out.splitlines()[1:]] == ["ns1"]
    assert [line.split()[0] for line in ctl("get", "workloadendpoints", "-A").out.splitlines()[1:]] == [
        "default",
        "ns1",
    ]
    one = yaml.safe_load(ctl("get", "wep", "node1-k8s-pod--a-eth0", "-n", "ns1", "-o", "yaml").out)
    assert one["metadata"]["namespace"] == "ns1" and one["spec"]["ipNetworks"] == ["10.0.0.5/32"]
    listing = json.loads(ctl("get", "wep", "-A", "-o", "json").out)
    assert listing["kind"] == "WorkloadEndpointList" and len(listing["items"]) == 2

    other = WEP.replace("metadata:\n", "metadata:\n  namespace: ns2\n")
    res = ctl("create", "-f", write("other.yaml", other), "-n", "ns3")
    assert res.rc == 1 and "does not match --namespace 'ns3'" in res.err

    assert ctl("label", "wep", "node1-k8s-pod--a-eth0", "-n", "ns1", "app=web").rc == 0
    labels = json.loads(ctl("get", "wep", "node1-k8s-pod--a-eth0", "-n", "ns1", "-o", "json").out)["metadata"]
    assert labels["labels"] == {"app": "web"}
    assert ctl("delete", "wep", "node1-k8s-pod--a-eth0", "-n", "ns1").rc == 0
    assert len(json.loads(ctl("get", "wep", "-A", "-o", "json").out)["items"]) == 1


SHOP_WEP = """
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-web--1-eth0
  namespace: shop
  labels: {app: web, projectcalico.org/namespace: shop, projectcalico.org/orchestrator: k8s}
spec:
  orchestrator: k8s
  node: node1
  containerID: 0123456789abcdef
  endpoint: eth0
  pod: web-1
  workload: web-1
  ipNetworks: [10.246.0.5/32]
  interfaceName: tab0123456789a
  profiles: [kns.shop]
"""


def test_label_workloadendpoint_in_a_namespace(ctl: Any, write: Callable[[str, str], str]) -> None:
    """calicoctl label workloadendpoint semantics: the namespace names it, set/overwrite/remove, each
    write on the read revision (the resourceVersion moves on)."""
    assert ctl("create", "-f", write("wep.yaml", SHOP_WEP)).rc == 0
    name = "node1-k8s-web--1-eth0"

    def get() -> dict[str, Any]:
        return json.loads(ctl("get", "workloadendpoint", name, "--namespace", "shop", "-o", "json").out)

    before = get()
    res = ctl("label", "workloadendpoint", name, "--namespace", "shop", "tier=front")
    assert res.rc == 0, res.err
    assert f"Successfully set label tier on workloadendpoint {name}" in res.out  # the kind as typed, as calicoctl
    after = get()
    assert after["metadata"]["labels"]["tier"] == "front" and after["metadata"]["labels"]["app"] == "web"
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    res = ctl("label", "workloadendpoint", name, "--namespace", "shop", "app=api")
    assert res.rc == 1 and "key app is already present" in res.err and "--overwrite" in res.err  # calicoctl's words
    assert ctl("label", "workloadendpoint", name, "--namespace", "shop", "app=api", "--overwrite").rc == 0
    assert ctl("label", "workloadendpoint", name, "--namespace", "shop", "tier", "--remove").rc == 0
    labels = get()["metadata"]["labels"]
    assert labels["app"] == "api" and "tier" not in labels
    # the default namespace does not hold it
    res = ctl("label", "workloadendpoint", name, "a=b")
    assert res.rc == 1 and "does not exist" in res.err_lines[0], res.err
