"""Kernel features this host lacks, in a guest kernel: vrf, gre, bonding, and a containerlab
topology with dummy and VLAN (8021q) interfaces deployed by ``tabbyctl lab`` (issue 16).

Why: lab topologies from the field use these devices (``exec: ip link add ... type vlan``), and
the host kernel of a CI machine has none of them as modules. One guest boot runs
tests/guest/features_guest.py, which checks each feature with real packets and reports one
result per part; the tests below assert on them. The guest is killed in every case; the run is
bounded (BOOT_TIMEOUT_S).
"""

from __future__ import annotations

import shlex
import uuid

import pytest

from tests.guest.qemu import GuestRun
from tests.guest.runner import result_of, run_in_guest

pytestmark = pytest.mark.root

BOOT_TIMEOUT_S = 480
#: Two linux nodes on one veth; the exec lines build a VLAN on it and a dummy per node, routed
#: across the VLAN (containerlab-compatible: the same file deploys with containerlab on Docker).
TOPOLOGY = """\
name: {name}
topology:
  defaults:
    kind: linux
    image: alpine:3.20
  nodes:
    r1:
      exec:
        - ip link add link eth1 name eth1.10 type vlan id 10
        - ip addr add 10.10.0.1/24 dev eth1.10
        - ip link set dev eth1.10 up
        - ip link add d0 type dummy
        - ip addr add 10.99.1.1/32 dev d0
        - ip link set dev d0 up
        - ip route add 10.99.2.1/32 via 10.10.0.2
    r2:
      exec:
        - ip link add link eth1 name eth1.10 type vlan id 10
        - ip addr add 10.10.0.2/24 dev eth1.10
        - ip link set dev eth1.10 up
        - ip link add d0 type dummy
        - ip addr add 10.99.2.1/32 dev d0
        - ip link set dev d0 up
        - ip route add 10.99.1.1/32 via 10.10.0.1
  links:
    - endpoints: ["r1:eth1", "r2:eth1"]
"""


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory: pytest.TempPathFactory) -> GuestRun:
    work = tmp_path_factory.mktemp("guest-features")
    topo = work / "vlan-dummy.clab.yml"
    topo.write_text(TOPOLOGY.format(name=f"gv{uuid.uuid4().hex[:6]}"))
    script = f"""
for m in veth vrf ip_gre bonding 8021q dummy bridge sctp; do
  modprobe $m || echo "TABBY-GUEST-STEP modprobe $m failed"
done
python -m tests.guest.features_guest {shlex.quote(str(topo))}
"""
    return run_in_guest(script, work, timeout=BOOT_TIMEOUT_S)


@pytest.fixture(scope="module")
def features(guest_run: GuestRun) -> dict:
    return result_of(guest_run, "features")


def test_vrf_isolates_and_routes_in_its_table(features: dict) -> None:
    r = features
    assert (r["vrf_kind"], r["vrf_table"], r["vrf_master"]) == ("vrf", 10, "vrf-blue"), r
    assert "10.1.0.0/24" in r["vrf_table_routes"] and "10.1.0.0/24" not in r["vrf_main_routes"], r
    assert r["vrf_ping_in_vrf"] is True
    assert r["vrf_ping_outside_vrf"] is False  # the main table has no route: the VRF isolates


def test_gre_tunnel_carries_the_ping(features: dict) -> None:
    r = features
    assert r["gre_kind"] == "gre"
    assert r["gre_ping"] is True
    assert r["gre_tx_x"] >= 3 and r["gre_rx_y"] >= 3, r


def test_bonding_active_backup_fails_over(features: dict) -> None:
    r = features
    assert r["bond_kind"] == "bond" and r["bond_ports"] == ["p1", "p2"], r
    assert r["bond_ping"] is True
    assert r["bond_active_before"] in ("p1", "p2")
    assert r["bond_active_after"] in ("p1", "p2") and r["bond_active_after"] != r["bond_active_before"], r
    assert r["bond_ping_after_failover"] is True


def test_sctp_is_policed_by_networkpolicy_ports(guest_run: GuestRun) -> None:
    """Issue 9's SCTP ports, on a kernel that has SCTP: allowed port associates, the other does not."""
    r = result_of(guest_run, "sctp")
    assert r["error"] is None, r["error"]
    assert r["sctp_9000_before"] is True and r["sctp_9001_before"] is True, r  # open before the policy
    assert r["sctp_9000_after"] is True, r
    assert r["sctp_9001_after"] is False, r


def test_lab_with_dummy_and_vlan_interfaces(guest_run: GuestRun) -> None:
    r = result_of(guest_run, "lab")
    assert r["deploy_rc"] == 0, r["deploy_err"]
    for node in ("r1", "r2"):
        assert r[f"{node}_vlan"] == {"kind": "vlan", "id": 10, "link": "eth1", "up": True}, r
        assert r[f"{node}_dummy_kind"] == "dummy"
    assert r["ping_rc"] == 0, r["ping_out"]
    assert r["r2_vlan_rx"] >= 3, r  # the echo requests arrived tagged, on eth1.10
    assert r["destroy_rc"] == 0 and r["netns_left"] == [], r
