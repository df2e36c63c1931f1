"""tabbyctl ipam show / check / release / configure against real allocations in etcd."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datastore.keys import handle_key, resource_key
from ipam.client import IPAMClient
from ipam.model import handle_doc


@pytest.fixture
def allocated(ctl: Any, write: Callable[[str, str], str], pool_doc: Any, run_ds: Any) -> list[str]:
    """Pool 10.44.0.0/16 with five addresses allocated on node1 (handles net.c0..c4)."""
    assert ctl("create", "-f", write("pool.yaml", pool_doc("pool-a", "10.44.0.0/16"))).rc == 0

    async def allocate(ds: Any) -> list[str]:
        client = IPAMClient(ds)
        out: list[str] = []
        for i in range(5):
            result = await client.auto_assign(
                node="node1", handle_id=f"net.c{i}", attrs={"namespace": "default", "pod": f"pod-{i}"}
            )
            out += result.v4
        return out

    return list(run_ds(allocate))


def table_rows(text: str) -> list[list[str]]:
    """Cells of calicoctl's boxed table, without the borders."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


def test_ipam_show_pools_and_blocks(ctl: Any, allocated: list[str]) -> None:
    res = ctl("ipam", "show")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].startswith("+---") and lines[-1].startswith("+---")
    rows = table_rows(res.out)
    assert rows[0] == ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
    assert rows[1] == ["IP Pool", "10.44.0.0/16", "65536", "5 (0%)", "65531 (100%)"]
    assert len(rows) == 2

    rows = table_rows(ctl("ipam", "show", "--show-blocks").out)
    block = [r for r in rows if r[0] == "Block"]
    assert len(block) == 1
    assert block[0][2:] == ["64", "5 (8%)", "59 (92%)"]
    assert block[0][1].startswith("10.44.") and block[0][1].endswith("/26")


def test_ipam_show_ip(ctl: Any, allocated: list[str]) -> None:
    res = ctl("ipam", "show", "--ip", allocated[2])
    assert res.rc == 0, res.err
    out = res.out.splitlines()
    assert out[0] == f"IP {allocated[2]} is in use"
    assert "Handle: net.c2" in out
    assert "  pod: pod-2" in out and "  node: node1" in out
    res = ctl("ipam", "show", "--ip", "10.44.255.250")
    assert res.rc == 0 and res.out.splitlines()[0] == "10.44.255.250 is not assigned"
    res = ctl("ipam", "show", "--ip", "not-an-ip")
    assert res.rc == 1 and len(res.err_lines) == 1 and "not an IP address" in res.err


def wep_doc(i: int, ip: str) -> dict[str, Any]:
    """The WorkloadEndpoint a node agent records for pod-<i> (its IPAM handle in the annotation)."""
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {
            "name": f"node1-k8s-pod--{i}-eth0",
            "namespace": "default",
            "annotations": {"tabby.io/handle": f"net.c{i}", "tabby.io/network": "net"},
        },
        "spec": {"orchestrator": "k8s", "node": "node1", "pod": f"pod-{i}", "containerID": f"c{i}",
                 "endpoint": "eth0", "ipNetworks": [f"{ip}/32"]},
    }


def test_ipam_check_leaks_then_clean_then_broken(ctl: Any, allocated: list[str], run_ds: Any, tmp_path: Path) -> None:
    # No workload recorded yet: every allocation is a leak candidate, exit 1.
    res = ctl("ipam", "check")
    assert res.rc == 1, res.out + res.err
    assert res.out.count("allocated-not-in-use") == 5
    assert "Check complete; found 5 problems." in res.out

    async def record(ds: Any) -> None:
        for i, ip in enumerate(allocated):
            await ds.put(resource_key("workloadendpoints", f"node1-k8s-pod--{i}-eth0", "default"), wep_doc(i, ip))

    run_ds(record)
    res = ctl("ipam", "check")
    assert res.rc == 0, res.out + res.err
    assert "Check complete; found 0 problems." in res.out

    async def damage(ds: Any) -> None:
        # A handle that holds no address anywhere, and a pool deleted behind IPAM's back.
        await ds.put(handle_key("net.ghost"), handle_doc("net.ghost", {"10.44.0.0/26": 1}))
        await ds.delete(resource_key("ippools", "pool-a"))

    run_ds(damage)
    report_file = tmp_path / "report.json"
    res = ctl("ipam", "check", "-o", str(report_file), "--show-all-ips")
    assert res.rc == 1
    assert "orphaned-handle" in res.out and "net.ghost" in res.out
    assert "allocation-outside-pool" in res.out
    assert res.out.strip().endswith("Check complete; found 6 problems.")
    for ip in allocated:
        assert ip in res.out  # --show-all-ips
    report = json.loads(report_file.read_text())
    assert report["summary"]["ok"] is False
    assert report["summary"]["by_kind"] == {"orphaned-handle": 1, "allocation-outside-pool": 5}


def test_ipam_release_by_ip(ctl: Any, allocated: list[str]) -> None:
    res = ctl("ipam", "release", "--ip", allocated[0], "--ip", allocated[1])
    assert res.rc == 0, res.err
    assert res.out.splitlines() == [
        f"Successfully released IP address {allocated[0]}",
        f"Successfully released IP address {allocated[1]}",
    ]
    assert "is not assigned" in ctl("ipam", "show", "--ip", allocated[0]).out
    assert table_rows(ctl("ipam", "show").out)[1][3] == "3 (0%)"
    res = ctl("ipam", "release", "--ip", allocated[0])
    assert res.rc == 1 and res.err_lines == [f"Error: IP address {allocated[0]} is not assigned"]
    res = ctl("ipam", "release")
    assert res.rc == 1 and "--ip IP or --from-report FILE" in res.err


def test_ipam_release_from_report_skips_reused_addresses(
    ctl: Any, allocated: list[str], run_ds: Any, write: Callable[[str, str], str]
) -> None:
    """A report names leaks with handle and sequence number; only still-matching ones go."""

    async def info(ds: Any) -> list[Any]:
        client = IPAMClient(ds)
        return [await client.ip_info(ip) for ip in allocated[:3]]

    infos = run_ds(info)
    problems = [
        {
            "kind": "allocated-not-in-use",
            "message": f"{i.ip} is allocated to handle {i.handle_id} but no live workload uses it",
            "ip": i.ip,
            "block": i.block,
            "handle_id": i.handle_id,
            "sequence_number": i.sequence_number,
        }
        for i in infos
    ]
    # The third address was released and handed to someone else since the report was made.
    problems[2]["handle_id"] = "net.someone-else-before"
    report = write("report.json", json.dumps({"summary": {"ok": False}, "problems": problems}))
    res = ctl("ipam", "release", "--from-report", report)
    assert res.rc == 1 and "the datastore is not locked" in res.err  # as calicoctl: lock first
    assert ctl("datastore", "migrate", "lock").rc == 0
    res = ctl("ipam", "release", "--from-report", report)
    assert res.rc == 0, res.err
    assert f"Successfully released IP address {allocated[0]}" in res.out
    assert f"Successfully released IP address {allocated[1]}" in res.out
    assert "Released 2 of 3 leaked address(es)" in res.out and "1 changed since the report" in res.out
    assert f"IP {allocated[2]} is in use" in ctl("ipam", "show", "--ip", allocated[2]).out

    res = ctl("ipam", "release", "--from-report", write("junk.json", "[1, 2]"))
    assert res.rc == 1 and "not a report" in res.err
    assert ctl("datastore", "migrate", "unlock").rc == 0
    res = ctl("ipam", "release", "--from-report", report, "--force")
    assert res.rc == 0 and "Released 0 of 3" in res.out, res.err


def test_ipam_configure(ctl: Any) -> None:
    res = ctl("ipam", "configure", "--strictaffinity=true")
    assert res.rc == 0, res.err
    assert res.out.strip() == "Successfully set StrictAffinity to: true"
    res = ctl("ipam", "configure", "--max-blocks-per-host", "4", "--autoallocateblocks", "false")
    assert res.rc == 0, res.err
    rows = dict(r for r in table_rows(ctl("ipam", "show", "--show-configuration").out)[1:])
    assert rows == {"StrictAffinity": "true", "AutoAllocateBlocks": "false", "MaxBlocksPerHost": "4"}
    doc = json.loads(ctl("get", "ipamconfig", "default", "-o", "json").out)
    assert doc["spec"] == {"strictAffinity": True, "autoAllocateBlocks": False, "maxBlocksPerHost": 4}
    assert ctl("ipam", "configure", "--strictaffinity=false").rc == 0
    assert json.loads(ctl("get", "ipamconfigs", "default", "-o", "json").out)["spec"]["strictAffinity"] is False
    res = ctl("ipam", "configure")
    assert res.rc == 1 and "nothing to configure" in res.err
    res = ctl("ipam", "configure", "--strictaffinity=maybe")
    assert res.rc == 2 and "maybe" in res.err


def test_ipam_release_of_an_address_a_live_workload_holds_needs_allow_in_use(
    ctl: Any, allocated: list[str], run_ds: Any
) -> None:
    async def seed(ds: Any) -> None:
        await ds.put(resource_key("workloadendpoints", "node1-k8s-pod--0-eth0", "default"), wep_doc(0, allocated[0]))

    run_ds(seed)
    res = ctl("ipam", "release", "--ip", allocated[0])
    assert res.rc == 1
    assert res.err_lines == [
        f"Error: IP address {allocated[0]} is in use by a live workload or tunnel (handle net.c0); releasing it"
        " would let IPAM hand it out twice. Pass --allow-in-use to release it anyway"
    ]
    assert allocated[0] in ctl("ipam", "show", "--ip", allocated[0]).out
    assert "in use" in ctl("ipam", "show", "--ip", allocated[0]).out.lower()
    res = ctl("ipam", "release", "--ip", allocated[0], "--allow-in-use")
    assert res.rc == 0, res.err
    assert res.out.strip() == f"Successfully released IP address {allocated[0]}"
