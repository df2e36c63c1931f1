"""The pure half of the VXLAN manager: MAC derivation and desired device/neighbour/FDB entries."""

from __future__ import annotations

import hashlib

import pytest

from felix_like.vxlan import (
    FDBEntry,
    NeighEntry,
    RemoteVTEP,
    VXLANLocal,
    calculate_vxlan,
    derive_vtep_mac,
    normalise_mac,
)

LOCAL = VXLANLocal("node-a", "192.168.77.1/24", "eth0", "10.65.1.0")


def test_derived_mac_is_calicos_formula_and_stable() -> None:
    sha = hashlib.sha1(b"node-a").digest()
    assert derive_vtep_mac("node-a") == ":".join(f"{b:02x}" for b in (0x66, *sha[:5]))
    assert derive_vtep_mac("node-a") == derive_vtep_mac("node-a")
    assert derive_vtep_mac("node-a") != derive_vtep_mac("node-b")
    assert derive_vtep_mac("node-a", ipv6=True) != derive_vtep_mac("node-a")


@pytest.mark.parametrize("name", ["node-a", "worker-17.example.com", "", "ü"])
def test_derived_mac_is_locally_administered_unicast(name: str) -> None:
    first = int(derive_vtep_mac(name).split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_normalise_mac() -> None:
    assert normalise_mac("66-0A-B:1:2:3") == "66:0a:0b:01:02:03"
    with pytest.raises(ValueError):
        normalise_mac("66:0a")


def test_device_defaults() -> None:
    dev = calculate_vxlan(LOCAL, [], nic_mtu=1500).device
    assert (dev.name, dev.vni, dev.port, dev.local, dev.parent) == ("vxlan.tabby", 4096, 4789, "192.168.77.1", "eth0")
    assert (dev.mtu, dev.mac, dev.address, dev.learning) == (1450, derive_vtep_mac("node-a"), "10.65.1.0/32", False)


def test_configured_mac_mtu_vni_port_win() -> None:
    local = VXLANLocal(
        "node-a", "192.168.77.1", "eth0", "10.65.1.0/26", mac="02:AA:00:00:00:01", vni=7, port=8472, mtu=1400
    )
    dev = calculate_vxlan(local, [], nic_mtu=9000).device
    assert (dev.mac, dev.vni, dev.port, dev.mtu, dev.address) == ("02:aa:00:00:00:01", 7, 8472, 1400, "10.65.1.0/32")


def test_ipv6_device() -> None:
    local = VXLANLocal("node-a", "fd77::1/64", "eth0", "fd00:65::1")
    dev = calculate_vxlan(local, [], nic_mtu=1500).device
    assert (dev.name, dev.mtu, dev.address, dev.local) == ("vxlan-v6.tabby", 1430, "fd00:65::1/128", "fd77::1")
    assert dev.mac == derive_vtep_mac("node-a", ipv6=True)


def test_entries_from_remote_nodes() -> None:
    remotes = [
        RemoteVTEP("node-c", "192.168.78.3/24", "10.65.3.0", "66:00:00:00:00:03"),
        RemoteVTEP("node-b", "192.168.77.2/24", "10.65.2.0/32", "66:00:00:00:00:02"),
        RemoteVTEP("node-a", "192.168.77.1/24", "10.65.1.0", derive_vtep_mac("node-a")),  # ourselves: skipped
        RemoteVTEP("node-v6", "fd77::2", "fd00:65::2", "66:00:00:00:00:06"),  # other family: skipped
        RemoteVTEP("node-bad", "not-an-ip", "10.65.9.0", "66:00:00:00:00:09"),  # unusable: skipped
    ]
    desired = calculate_vxlan(LOCAL, remotes, nic_mtu=1500)
    assert desired.neighbours == {
        NeighEntry("10.65.2.0", "66:00:00:00:00:02"),
        NeighEntry("10.65.3.0", "66:00:00:00:00:03"),
    }
    assert desired.fdb == {
        FDBEntry("66:00:00:00:00:02", "192.168.77.2"),
        FDBEntry("66:00:00:00:00:03", "192.168.78.3"),
    }


def test_conflicting_remotes_lowest_name_wins() -> None:
    remotes = [
        RemoteVTEP("node-z", "192.168.77.26", "10.65.2.0", "66:00:00:00:00:26"),  # same VTEP IP as node-b
        RemoteVTEP("node-b", "192.168.77.2", "10.65.2.0", "66:00:00:00:00:02"),
        RemoteVTEP("node-y", "192.168.77.25", "10.65.25.0", "66:00:00:00:00:02"),  # same MAC as node-b
    ]
    desired = calculate_vxlan(LOCAL, remotes, nic_mtu=1500)
    assert desired.neighbours == {NeighEntry("10.65.2.0", "66:00:00:00:00:02")}
    assert desired.fdb == {FDBEntry("66:00:00:00:00:02", "192.168.77.2")}


def test_calculation_is_order_independent() -> None:
    remotes = [
        RemoteVTEP(f"node-{i}", f"192.168.77.{i}", f"10.65.{i}.0", derive_vtep_mac(f"node-{i}")) for i in range(2, 9)
    ]
    assert calculate_vxlan(LOCAL, remotes, 1500) == calculate_vxlan(LOCAL, list(reversed(remotes)), 1500)
