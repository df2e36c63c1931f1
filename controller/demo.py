"""`make demo`: the foundation end to end on one machine, with nothing but loopback.

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

from rich.console import Console

from controller.logs import configure as configure_logging
from datastore import Datastore, EtcdConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ipam-demo.yaml"
PODS_PER_NODE = {"node-1": 70, "node-2": 12, "node-3": 5}
console = Console(stderr=False, highlight=False)


def tabbyctl(env: dict[str, str], *args: str) -> None:
    exe = Path(sys.executable).parent / "tabbyctl"
    console.print(f"\n[bold cyan]$ tabbyctl {' '.join(args)}[/]")
    proc = subprocess.run([str(exe), *args], env=env, text=True, capture_output=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    if proc.returncode not in (0,):
        raise SystemExit(f"tabbyctl {' '.join(args)} failed with exit code {proc.returncode}")


async def allocate(config: EtcdConfig) -> str:
    """Allocate like three node agents would; return one pod address to look up."""
    from ipam import IPAMClient

    first = ""
    async with Datastore(config) as ds:
        ipam = IPAMClient(ds)
        for node, count in PODS_PER_NODE.items():
            v4 = v6 = 0
            for i in range(count):
                result = await ipam.auto_assign(
                    node=node,
                    handle_id=f"k8s-pod-network.{node}-pod-{i:03d}",
                    num_v4=1,
                    num_v6=1 if i < 3 else 0,
                    attrs={"node": node, "namespace": "default", "pod": f"pod-{i:03d}"},
                )
                first = first or result.v4[0]
                v4 += len(result.v4)
                v6 += len(result.v6)
            tunnel = await ipam.assign_tunnel_address(node=node, kind="vxlan")
            console.print(f"  {node}: {v4} IPv4 + {v6} IPv6 pod addresses, VXLAN tunnel address {tunnel}")
    return first


def main() -> int:
    from controller.etcd_process import EtcdServer

    configure_logging(level="warning")
    workdir = Path(tempfile.mkdtemp(prefix="tabby-demo-"))
    server = EtcdServer(workdir)
    console.print("[bold]Tabby demo[/]: a private etcd on loopback, three simulated nodes, Calico-style IPAM")
    server.start()
    try:
        env = dict(os.environ, ETCD_ENDPOINTS=server.endpoint, TABBY_ETCD_PREFIX="/tabby/")
        console.print(f"etcd is up at {server.endpoint} (data in {workdir})")
        tabbyctl(env, "apply", "-f", str(EXAMPLE))
        tabbyctl(env, "get", "ippools", "-o", "wide")
        tabbyctl(env, "get", "nodes", "-o", "wide")
        console.print("\n[bold]Allocating addresses as three node agents would[/] (one etcd transaction each)")
        pod_ip = asyncio.run(allocate(EtcdConfig(endpoints=(server.endpoint,))))
        tabbyctl(env, "ipam", "show", "--show-blocks")
        tabbyctl(env, "ipam", "show", "--ip", pod_ip)
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
