"""Reading stored resources with Calico defaults."""

from __future__ import annotations

from ipam.model import IPAMConfig, Pool, new_ipam_config_resource


def test_pool_defaults_when_fields_missing() -> None:
    p = Pool.from_resource({"metadata": {"name": "p"}, "spec": {"cidr": "10.1.0.0/16"}})
    assert (p.block_size, p.node_selector, p.disabled, p.allowed_uses) == (26, "all()", False, ("Workload", "Tunnel"))
    p6 = Pool.from_resource({"metadata": {"name": "p6"}, "spec": {"cidr": "fd00::/48"}})
    assert p6.block_size == 122 and p6.version == 6


def test_pool_selector() -> None:
    p = Pool(name="p", cidr="10.0.0.0/16", block_size=26, node_selector="zone == 'a'")
    assert p.matches({"zone": "a"}) and not p.matches({}) and not p.matches({"zone": "b"})
    broken = Pool(name="p", cidr="10.0.0.0/16", block_size=26, node_selector="zone ==")
    assert not broken.matches({"zone": "a"})


def test_pool_contains() -> None:
    p = Pool(name="p", cidr="10.0.0.0/16", block_size=26)
    assert p.contains("10.0.3.64/26") and p.contains("10.0.0.1")
    assert not p.contains("10.1.0.0/26") and not p.contains("fd00::/122") and not p.contains("10.0.0.0/15")


def test_ipam_config_defaults_and_resource_shape() -> None:
    assert IPAMConfig.from_resource(None) == IPAMConfig(False, True, 0)
    doc = new_ipam_config_resource(IPAMConfig(strict_affinity=True))
    assert doc["apiVersion"] == "projectcalico.org/v3" and doc["kind"] == "IPAMConfiguration"
    assert doc["metadata"]["name"] == "default"
    assert doc["spec"] == {"strictAffinity": True, "autoAllocateBlocks": True, "maxBlocksPerHost": 0}
