"""IPIP Always and CrossSubnet with the REAL node agents under User-Mode Linux (issue 4).

Why UML: this host kernel has no ipip module; the UML kernel has. tests/uml/test_ipip_uml.py
proves felix_like's IPIP pieces there; this test proves the agent end to end: etcd, tabbyctl,
three ``python -m controller.node`` agents, pods from the real CNI plugin, and the pool switched
from ``ipipMode: Always`` to ``CrossSubnet`` (tests/uml/agent_ipip_guest.py has the scenario and
the topology). Asserted: each node's ``tunl0`` carries exactly the IPIP tunnel address the agent
allocated and recorded on its Node; Always routes every remote block ``via <node> dev tunl0
onlink``; CrossSubnet routes the same-subnet node natively on eth0 and the other subnet through
tunl0; pods ping across and the tunl0 packet counters move exactly where encapsulation is expected.

The guest boots with the host's filesystem through hostfs (the init script writes only to tmpfs:
/run, /tmp, where etcd keeps its data too). The UML process group is killed in every case; the
whole run is bounded (BOOT_TIMEOUT_S). When the guest gives no result, the failure message names
the last step it reached and shows the console tail.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.uml.boot import boot_guest, mount_tmp_keeping, needed_paths, uml_modules

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT_S = 240
MARKER = "TABBY-UML-RESULT "
STEP = "TABBY-UML-STEP "

INIT = """#!/bin/sh
# init of the UML guest: the root is the HOST filesystem through hostfs, write only to tmpfs.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin  # the kernel starts init without PATH
export HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
{mount_tmp}
mkdir -p /tmp/modroot/lib/modules
ln -s {modules} /tmp/modroot/lib/modules/{kver}
for m in veth bridge ipip; do modprobe -d /tmp/modroot $m || echo "TABBY-UML-STEP modprobe $m failed"; done
cd {repo} && PYTHONPATH={repo} {python} -I -c 'import sys; sys.path.insert(0, "{repo}"); \
import runpy; runpy.run_module("tests.uml.agent_ipip_guest", run_name="__main__")'
halt -f
"""


@pytest.fixture
def guest_result(tmp_path: Path) -> Iterator[dict]:
    """Boot the guest, run the scenario, always kill UML; the guest's JSON result."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the guest runs the test as root on the host's filesystem)")
    modules, kver = uml_modules()
    if not shutil.which("modprobe") or not shutil.which("etcd"):
        pytest.skip("kmod (modprobe) or etcd is not installed")
    started = time.monotonic()
    text, timed_out = boot_guest(
        INIT.format(modules=modules, kver=kver, repo=REPO, python=sys.executable,
                    mount_tmp=mount_tmp_keeping(needed_paths(REPO))),
        tmp_path, mem="1500M", umid="tabbyagent", timeout=BOOT_TIMEOUT_S,
    )
    (tmp_path / "console.log").write_text(text)
    steps = [line for line in text.splitlines() if line.startswith(STEP)]
    lines = [line for line in text.splitlines() if line.startswith(MARKER)]
    assert lines, (
        f"no result from the UML guest after {time.monotonic() - started:.0f}s (timed out: {timed_out});"
        f" last step: {steps[-1] if steps else 'none (boot)'}; console tail:\n{text[-3000:]}"
    )
    result = json.loads(lines[-1][len(MARKER):])
    result["steps"] = steps
    result["host_elapsed_s"] = round(time.monotonic() - started, 1)
    assert result["error"] is None, f"{result['error']}\nsteps: {steps}\n{json.dumps(result, indent=1)[-4000:]}"
    yield result


def test_agent_ipip_always_then_crosssubnet(guest_result: dict) -> None:
    r = guest_result
    a_ip, b_ip, c_ip = (r["node_ipv4"][n].split("/")[0] for n in "abc")
    assert r["node_ipv4"] == {"a": "192.168.10.2/24", "b": "192.168.10.3/24", "c": "192.168.20.2/24"}, r
    # tunl0 holds exactly the tunnel address the agent recorded on its Node (from the pool)
    for n in "abc":
        assert r["node_tunnel_addr"][n], r
        assert r["tunl0_addrs"][n] == [f"{r['node_tunnel_addr'][n]}/32"], r["tunl0_addrs"]
    assert r["tunl0_mtu"] == 1480 and r["pod_mtu"] == 1480, r
    # Always: every remote block through tunl0, onlink, via the node's address
    assert r["always_routes_a"] == {
        "b": {"gateway": b_ip, "dev": "tunl0", "flags": ["onlink"], "type": "unicast"},
        "c": {"gateway": c_ip, "dev": "tunl0", "flags": ["onlink"], "type": "unicast"},
    }, r["always_routes_a"]
    for key in ("always_ping_ab", "always_ping_ac"):
        assert r[key]["ok"] and r[key]["tunl0_tx"] >= 3 and r[key]["tunl0_rx"] >= 3, (key, r[key])
    assert r["always_tcp_peer_ac"] == r["pod_ips"]["a"]
    # CrossSubnet: native inside 192.168.10.0/24, tunl0 across the router
    assert r["cross_routes_a"] == {
        "b": {"gateway": b_ip, "dev": "eth0", "flags": [], "type": "unicast"},
        "c": {"gateway": c_ip, "dev": "tunl0", "flags": ["onlink"], "type": "unicast"},
    }, r["cross_routes_a"]
    assert r["cross_routes_c"] == {
        "a": {"gateway": a_ip, "dev": "tunl0", "flags": ["onlink"], "type": "unicast"},
        "b": {"gateway": b_ip, "dev": "tunl0", "flags": ["onlink"], "type": "unicast"},
    }, r["cross_routes_c"]
    assert r["cross_ping_ab"]["ok"] and r["cross_ping_ab"]["tunl0_tx"] == 0 and r["cross_ping_ab"]["tunl0_rx"] == 0
    for key in ("cross_ping_ac", "cross_ping_bc"):
        assert r[key]["ok"] and r[key]["tunl0_tx"] >= 3 and r[key]["tunl0_rx"] >= 3, (key, r[key])
    assert all(r["agents_alive"].values()), r["agents_alive"]
    assert r["host_elapsed_s"] < BOOT_TIMEOUT_S
