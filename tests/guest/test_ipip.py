"""IPIP end to end with the felix_like managers, inside a guest kernel (the host kernel has no ipip).

The guest (tests/guest/runner.py: Debian's kernel under QEMU by default) loads veth, then runs
tests/guest/ipip_guest.py with this same venv's Python: two nodes on different subnets behind a
router, IPIPManager and RouteProgrammer per node, a ping and a TCP exchange between the pods.
The assertions are on what the guest kernel did: tunl0's settings, the ``via X dev tunl0 onlink``
route, and tunl0 packet counters on both ends. The guest is killed in every case; the run is
bounded (BOOT_TIMEOUT_S).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guest.runner import result_of, run_in_guest

pytestmark = pytest.mark.root

BOOT_TIMEOUT_S = 300
SCRIPT = """
modprobe veth
python -m tests.guest.ipip_guest
"""


@pytest.fixture
def guest_result(tmp_path: Path) -> dict:
    return result_of(run_in_guest(SCRIPT, tmp_path, timeout=BOOT_TIMEOUT_S))


def test_ipip_between_workloads_on_different_subnets(guest_result: dict) -> None:
    r = guest_result
    assert r["missing_module_ok"], r["missing_module_error"]
    assert r["node-a_apply"]["ok"] and r["node-b_apply"]["ok"], r
    assert r["node-a_routes_ok"] and r["node-b_routes_ok"]
    assert r["tunl0"] == {"mtu": 1480, "up": True, "addrs": ["10.65.1.0/32"]}
    assert r["route"] == {"gateway": "192.168.20.2", "dev": "tunl0", "flags": ["onlink"]}
    assert r["ping"] is True
    assert r["tcp_peer"] == "10.65.1.5"
    assert r["tunl0_tx_a"] >= 6 and r["tunl0_rx_b"] >= 6, r
    assert sorted(r["repair_changes"]) == ["addr-del 10.99.0.1/24", "mtu 1300->1480"]
    assert r["noop_writes"] == 0
