"""`make demo-ipam`: IPAM end to end on one machine, with nothing but loopback (the first `make demo`).

Kept beside the lab demo (lab/demo.py) because it needs no namespaces and shows IPAM alone.
Starts a private etcd on 127.0.0.1, applies calicoctl-style resources with `tabbyctl`,
allocates addresses for three simulated nodes through the IPAM library (as node agents
will), then shows what an operator would look at: pools, per-block usage, a consistency
check. No address is put on any interface: allocation is bookkeeping in etcd.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from rich.console import Console

from common.logs import configure as configure_logging
from datastore import Datastore, EtcdConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ipam-demo.yaml"
PODS_PER_NODE = {"node-1": 70, "node-2": 12, "node-3": 5}
console = Console(stderr=False, highlight=False)


def tabbyctl(env: dict[str, str], *args: str, ok_codes: tuple[int, ...] = (0,)) -> int:
    exe = Path(sys.executable).parent / "tabbyctl"
    console.print(f"\n[bold cyan]$ tabbyctl {' '.join(args)}[/]")
    proc = subprocess.run([str(exe), *args], env=env, text=True, capture_output=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    if proc.returncode not in ok_codes:
        raise SystemExit(f"tabbyctl {' '.join(args)} failed with exit code {proc.returncode}")
    return proc.returncode


def workload_yaml(node: str, pod: str, handle: str, ips: list[str]) -> dict[str, object]:
    """The WorkloadEndpoint a node agent records for a pod it plumbed (Calico's name and fields)."""
    from datamodel.resources.workloadendpoint import workload_endpoint_name

    nets = [f"{ip}/{128 if ':' in ip else 32}" for ip in ips]
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {
            "name": workload_endpoint_name(node, orchestrator="k8s", endpoint="eth0", pod=pod),
            "namespace": "demo",
            "labels": {"app": pod.rsplit("-", 1)[0], "projectcalico.org/namespace": "demo"},
            "annotations": {"tabby.io/handle": handle, "tabby.io/network": "k8s-pod-network"},
        },
        "spec": {
            "orchestrator": "k8s",
            "node": node,
            "pod": pod,
            "workload": pod,
            "containerID": handle.split(".", 1)[1],
            "endpoint": "eth0",
            "ipNetworks": nets,
            "interfaceName": "tab" + handle.encode().hex()[:11],
        },
    }

async def allocate(config: EtcdConfig) -> tuple[str, list[dict[str, object]]]:
    """Allocate like three node agents would; return one pod address and the pods' endpoints."""
    from ipam import IPAMClient

    first = ""
    workloads: list[dict[str, object]] = []
    async with Datastore(config) as ds:
        ipam = IPAMClient(ds)
        for node, count in PODS_PER_NODE.items():
            v4 = v6 = 0
            for i in range(count):
                handle = f"k8s-pod-network.{node}-pod-{i:03d}"
                result = await ipam.auto_assign(
                    node=node,
                    handle_id=handle,
                    num_v4=1,
                    num_v6=1 if i < 3 else 0,
                    attrs={"node": node, "namespace": "default", "pod": f"pod-{i:03d}"},
                )
                first = first or result.v4[0]
                workloads.append(workload_yaml(node, f"web-{node[-1]}-{i:03d}", handle, result.v4 + result.v6))
                v4 += len(result.v4)
                v6 += len(result.v6)
            tunnel = await ipam.assign_tunnel_address(node=node, kind="vxlan")
            console.print(f"  {node}: {v4} IPv4 + {v6} IPv6 pod addresses, VXLAN tunnel address {tunnel}")
        # A pod whose CNI DEL never arrived: its address stays allocated, nothing uses it.
        leaked = await ipam.auto_assign(node="node-3", handle_id="k8s-pod-network.lost-container", num_v4=1)
        console.print(f"  node-3: one more address, {leaked.v4[0]}, for a pod that is never recorded (a leak)")
    return first, workloads


def main() -> int:
    from common.etcd_process import EtcdServer

    configure_logging(level="warning")
    workdir = Path(tempfile.mkdtemp(prefix="tabby-demo-"))
    server = EtcdServer(workdir)
    console.print("[bold]Tabby IPAM demo[/]: a private etcd on loopback, three simulated nodes, Calico-style IPAM")
    server.start()
    try:
        env = dict(os.environ, ETCD_ENDPOINTS=server.endpoint, TABBY_ETCD_PREFIX="/tabby/")
        console.print(f"etcd is up at {server.endpoint} (data in {workdir})")
        tabbyctl(env, "apply", "-f", str(EXAMPLE))
        tabbyctl(env, "get", "ippools", "-o", "wide")
        tabbyctl(env, "get", "nodes", "-o", "wide")
        console.print("\n[bold]Allocating addresses as three node agents would[/] (one etcd transaction each)")
        pod_ip, workloads = asyncio.run(allocate(EtcdConfig(endpoints=(server.endpoint,))))
        wep_file = workdir / "workloads.yaml"
        wep_file.write_text(yaml.safe_dump_all(workloads, sort_keys=False))
        console.print(f"\n[bold]Recording the {len(workloads)} pods as WorkloadEndpoints[/], as the agents do")
        tabbyctl(env, "apply", "-f", str(wep_file))
        tabbyctl(env, "ipam", "show", "--show-blocks")
        tabbyctl(env, "ipam", "show", "--ip", pod_ip)
        report = workdir / "report.json"
        console.print("\n[bold]Checking IPAM[/] as Calico documents it: lock the datastore (no new addresses"
                      " meanwhile), check, release what the report lists, unlock; the unrecorded address shows up"
                      " as a leak (exit code 1)")
        tabbyctl(env, "datastore", "migrate", "lock")
        tabbyctl(env, "ipam", "check", "-o", str(report), ok_codes=(1,))
        tabbyctl(env, "ipam", "release", "--from-report", str(report))
        tabbyctl(env, "datastore", "migrate", "unlock")
        tabbyctl(env, "ipam", "check")
        console.print(
            "\n[bold green]Done.[/] To explore by hand, start etcd and point tabbyctl at it:\n"
            "  export ETCD_ENDPOINTS=http://127.0.0.1:2379\n"
            "  .venv/bin/tabbyctl apply -f examples/ipam-demo.yaml\n"
            "  .venv/bin/tabbyctl ipam show --show-blocks\n"
            "The demo's etcd is stopped and its data removed now."
        )
        return 0
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
