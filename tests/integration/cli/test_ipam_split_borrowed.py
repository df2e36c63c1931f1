"""`tabbyctl ipam split`, `ipam show --show-borrowed`, `ipam check --show-problem-ips` as a subprocess
against a real etcd, with calicoctl's wording."""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from ipam import IPAMClient

POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a, labels: {team: a}}
spec: {cidr: 10.95.0.0/24, blockSize: 26, natOutgoing: true}
"""


def test_split_replaces_the_pool_by_equal_children_at_once(ctl: Any, run_ds: Any) -> None:
    assert ctl("apply", "-f", "-", input=POOL).rc == 0

    async def allocate(ds: Any) -> str:
        return (await IPAMClient(ds, cache_ttl=0).auto_assign(node="node-1", handle_id="h1")).v4[0]

    ip = run_ds(allocate)
    unlocked = ctl("ipam", "split", "2", "--name", "pool-a")
    assert unlocked.rc == 1 and unlocked.err_lines == [
        "Error: datastore is not locked. Run the `tabbyctl datastore migrate lock` command in order split the IP pools"
    ]
    assert ctl("datastore", "migrate", "lock").rc == 0
    assert ctl("ipam", "split", "3", "--name", "pool-a").err_lines == [
        "Error: number to split CIDR into is not a valid power of 2: 3"
    ]
    assert ctl("ipam", "split", "2").err_lines == [
        "Error: no name or CIDR provided. Provide a name or CIDR to denote the IP pool to split"
    ]
    assert ctl("ipam", "split", "2", "--cidr", "10.1.0.0/16").err_lines == [
        "Error: unable to find IP pool  covering the specified CIDR 10.1.0.0/16"
    ]
    too_far = ctl("ipam", "split", "8", "--cidr", "10.95.0.0/24")
    assert too_far.rc == 1 and "blockSize" in too_far.err, too_far.err  # /27 children < blockSize 26
    res = ctl("ipam", "split", "2", "--cidr", "10.95.0.0/24")
    assert res.rc == 0, res.err
    assert res.out.splitlines() == [
        "IP Pool pool-a was successfully split into 2 smaller pools.",
        "Created split-pool-a-0 with CIDR 10.95.0.0/25.",
        "Created split-pool-a-1 with CIDR 10.95.0.128/25.",
        "Please refer to the documentation for final steps.",
    ]
    pools = yaml.safe_load(ctl("get", "ippools", "-o", "yaml").out)["items"]
    assert [(p["metadata"]["name"], p["spec"]["cidr"]) for p in pools] == [
        ("split-pool-a-0", "10.95.0.0/25"), ("split-pool-a-1", "10.95.0.128/25")
    ]
    assert all(p["metadata"]["labels"] == {"team": "a"} and p["spec"]["natOutgoing"] is True for p in pools)
    assert all(p["spec"].get("disabled") is False for p in pools)
    shown = ctl("ipam", "show", "--ip", ip)
    assert f"IP {ip} is in use" in shown.out  # the allocation survives in its child pool


def test_show_borrowed_lists_addresses_taken_from_another_nodes_block(ctl: Any, run_ds: Any) -> None:
    assert ctl("apply", "-f", "-", input=POOL).rc == 0

    async def seed(ds: Any) -> tuple[str, str]:
        c = IPAMClient(ds, cache_ttl=0)
        own = (await c.auto_assign(node="node-1", handle_id="h1", attrs={"namespace": "ns", "pod": "p1"})).v4[0]
        base = own.rsplit(".", 1)[0]
        borrowed = f"{base}.{int(own.rsplit('.', 1)[1]) + 5}"
        await c.assign_ip(ip=borrowed, handle_id="h2", node="node-2", attrs={"namespace": "ns", "pod": "p2"})
        return own, borrowed

    own, borrowed = run_ds(seed)
    res = ctl("ipam", "show", "--show-borrowed")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    first = lines[1].split("|")[1]
    assert first == " IP".ljust(len(first)), "headers left-aligned, as go-pretty prints them"
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == [
        "IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO"
    ]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[3:-1]]
    block = str(ipaddress.ip_network(f"{own}/26", strict=False))
    assert rows == [[borrowed, "node-2", block, "node-1", "pod", "ns/p2"]]


def test_check_show_problem_ips_uses_calicoctl_wording(ctl: Any, run_ds: Any) -> None:
    assert ctl("apply", "-f", "-", input=POOL).rc == 0

    async def seed(ds: Any) -> str:
        return (await IPAMClient(ds, cache_ttl=0).auto_assign(node="node-1", handle_id="leaky")).v4[0]

    ip = run_ds(seed)
    res = ctl("ipam", "check", "--show-problem-ips")
    assert res.rc == 1
    out = res.out.splitlines()
    start = out.index("Scanning for IPs that are allocated but not actually in use...")
    assert out[start:start + 7] == [
        "Scanning for IPs that are allocated but not actually in use...",
        f"  {ip} leaked; attrs handle=leaky, node=node-1",
        "Found 1 IPs that are allocated in IPAM but not actually in use.",
        "Scanning for IPs that are in use by a workload or node but not allocated in IPAM...",
        "Found 0 in-use IPs that are in active IP pools but have no corresponding IPAM allocation.",
        "Scanning for IPs with missing handle...",
        "Found 0 handles mentioned in blocks with no matching handle resource.",
    ]
    assert "Scanning for IPs" not in ctl("ipam", "check").out  # only with the flag
