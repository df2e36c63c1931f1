"""IPIP Always and CrossSubnet with the REAL node agents inside a guest kernel (issues 4, 16).

Why a guest: this host kernel has no ipip module; Debian's kernel under QEMU has
(tests/guest/runner.py). tests/guest/test_ipip.py proves felix_like's IPIP pieces there; this
test proves the agent end to end: etcd, tabbyctl, three ``python -m controller.node`` agents,
pods from the real CNI plugin, and the pool switched from ``ipipMode: Always`` to
``CrossSubnet`` (tests/guest/agent_ipip_guest.py has the scenario and the topology). Asserted:
each node's ``tunl0`` carries exactly the IPIP tunnel address the agent allocated and recorded
on its Node; Always routes every remote block ``via <node> dev tunl0 onlink``; CrossSubnet
routes the same-subnet node natively on eth0 and the other subnet through tunl0; pods ping
across and the tunl0 packet counters move exactly where encapsulation is expected.

The guest writes only to tmpfs (/run, /tmp, where etcd keeps its data too) and its result to
the test's work directory. The guest is killed in every case; the run is bounded
(BOOT_TIMEOUT_S). When the guest gives no result, the failure names the last step it reached
and shows the console tail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.guest.runner import result_of, run_in_guest, unavailable

pytestmark = pytest.mark.root

BOOT_TIMEOUT_S = 540
SCRIPT = """
for m in veth bridge ipip; do modprobe $m || echo "TABBY-GUEST-STEP modprobe $m failed"; done
python -m tests.guest.agent_ipip_guest
"""


@pytest.fixture
def guest_result(tmp_path: Path) -> dict:
    """Boot the guest, run the scenario, always kill the guest; the guest's JSON result."""
    if not shutil.which("etcd"):
        unavailable("etcd is not installed (Debian etcd-server; `make setup`)")
    run = run_in_guest(SCRIPT, tmp_path, timeout=BOOT_TIMEOUT_S, mem_mb=1536)
    result = result_of(run)
    result["steps"] = run.steps()
    result["host_elapsed_s"] = round(run.elapsed_s, 1)
    return result


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
