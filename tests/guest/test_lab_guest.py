"""``tabbyctl lab deploy --kernel guest``: a whole lab inside Debian's kernel under QEMU (issue 16).

Why: this host's kernel has no ipip module, so a topology with an IPIP tunnel cannot work on it;
in the guest kernel it does. The topology (plain linux nodes, containerlab-compatible) puts an
IPIP tunnel between a and b across the router r. Every command goes through the CLI as a user
would type it: deploy boots the guest and deploys there; exec, inspect and destroy name the lab
and are forwarded to the guest; destroy powers it off. Checked: the ping through ``ipip0`` is
answered, b's ``ipip0`` counted the packets, none of the lab's namespaces exist on the host, and
after destroy no QEMU and no lab directory are left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lab import guest
from lab.state import lab_dir
from tests.guest.runner import unavailable

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]

TOPOLOGY = """\
name: {name}
topology:
  defaults:
    kind: linux
    image: alpine:3.20
  nodes:
    a:
      exec:
        - ip addr add 10.0.1.1/24 dev eth1
        - ip route add 10.0.2.0/24 via 10.0.1.254
        - ip tunnel add ipip0 mode ipip local 10.0.1.1 remote 10.0.2.1
        - ip addr add 192.168.100.1/30 dev ipip0
        - ip link set ipip0 up
    r:
      exec:
        - ip addr add 10.0.1.254/24 dev eth1
        - ip addr add 10.0.2.254/24 dev eth2
    b:
      exec:
        - ip addr add 10.0.2.1/24 dev eth1
        - ip route add 10.0.1.0/24 via 10.0.2.254
        - ip tunnel add ipip0 mode ipip local 10.0.2.1 remote 10.0.1.1
        - ip addr add 192.168.100.2/30 dev ipip0
        - ip link set ipip0 up
  links:
    - endpoints: ["a:eth1", "r:eth1"]
    - endpoints: ["r:eth2", "b:eth1"]
"""


def lab_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def test_ipip_lab_in_the_guest_kernel(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("needs root (QEMU with the host's root over 9p)")
    if not shutil.which("qemu-system-x86_64"):
        unavailable("qemu-system-x86_64 is not installed (make setup)")
    name = f"gk{uuid.uuid4().hex[:6]}"
    topo = tmp_path / "ipip.clab.yml"
    topo.write_text(TOPOLOGY.format(name=name))
    t = ["-t", str(topo)]
    try:
        started = time.monotonic()
        deployed = lab_cli("deploy", "--kernel", "guest", *t, timeout=420)
        print(f"deploy --kernel guest: {time.monotonic() - started:.0f}s", file=sys.stderr)
        console = lab_dir(name) / "guest" / "console.log"
        tail = console.read_text(errors="replace")[-2000:] if console.exists() else ""
        assert deployed.returncode == 0, f"{deployed.stderr}\nguest console:\n{tail}"
        record = guest.guest_record(name)
        assert record is not None
        # the lab lives in the guest: none of its namespaces on the host
        host_netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert f"clab-{name}-" not in host_netns

        rows = json.loads(lab_cli("inspect", *t, "-f", "json").stdout)["containers"]
        assert {r["name"]: r["state"] for r in rows} == {f"clab-{name}-{n}": "running" for n in ("a", "r", "b")}
        ping = lab_cli("exec", *t, "a", "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", "192.168.100.2")
        assert ping.returncode == 0 and "3 received" in ping.stdout, ping.stdout + ping.stderr
        stats = lab_cli("exec", *t, "b", "--", "ip", "-s", "-j", "link", "show", "ipip0")
        assert stats.returncode == 0, stats.stderr
        ipip0 = json.loads(stats.stdout)[0]
        assert ipip0["link_type"] == "ipip" and ipip0["stats64"]["rx"]["packets"] >= 3, ipip0
        missing = lab_cli("exec", *t, "nosuch", "--", "true")
        assert missing.returncode == 1 and "has no node 'nosuch'" in missing.stderr, missing.stderr

        destroyed = lab_cli("destroy", *t, "--cleanup")
        assert destroyed.returncode == 0, destroyed.stderr
        assert "guest kernel powered off" in destroyed.stderr
        assert guest.guest_record(name) is None and not lab_dir(name).exists()
        assert not Path(f"/proc/{record['pid']}").exists() or \
            Path(f"/proc/{record['pid']}/stat").read_text().split(") ")[1][0] == "Z"
    finally:
        guest.stop(name)
        shutil.rmtree(lab_dir(name), ignore_errors=True)
