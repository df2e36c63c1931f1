"""The IPIP manager on the host kernel, inside a fresh namespace.

This machine's kernel has no ipip module, so the useful host-side check is the error path: a
clear ``ipip kernel module not available`` report, no exception, nothing created. Where the
module is loaded (``tunl0`` exists in every namespace) the same test checks address, MTU and
up-state instead. Traffic over IPIP is tested in a guest kernel under QEMU (tests/guest).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from felix_like.ipip import MODULE_MISSING, IPIPConfig, IPIPManager
from tests.uml.nslab import Lab, Netns

pytestmark = pytest.mark.root


@pytest.fixture
def node() -> Iterator[Netns]:
    with Lab() as lab:
        ns = lab.netns("node")
        lab.veth(ns, "eth0", lab.netns("peer"), "eth0")
        ns.ip("link", "set", "eth0", "mtu", "1450")
        yield ns


def test_tunl0_managed_or_clear_error(node: Netns) -> None:
    has_tunl0 = node.ip("link", "show", "dev", "tunl0", check=False).returncode == 0
    before = node.ip("-j", "link", "show").stdout
    result = IPIPManager(node.name).apply(IPIPConfig("10.65.1.0", "eth0"))
    if not has_tunl0:
        assert not result.ok and result.error == MODULE_MISSING
        assert "ipip kernel module not available" in result.error
        assert result.writes == 0 and node.ip("-j", "link", "show").stdout == before
        return
    assert result.ok, result.error
    tunl = json.loads(node.ip("-j", "addr", "show", "dev", "tunl0").stdout)[0]
    assert tunl["mtu"] == 1430 and "UP" in tunl["flags"]
    assert [(a["local"], a["prefixlen"]) for a in tunl["addr_info"] if a["family"] == "inet"] == [("10.65.1.0", 32)]
    assert IPIPManager(node.name).apply(IPIPConfig("10.65.1.0", "eth0")).writes == 0


def test_missing_nic_or_bad_address_is_reported(node: Netns) -> None:
    result = IPIPManager(node.name).apply(IPIPConfig("10.65.1.0", "nosuch0"))
    assert not result.ok  # module missing or NIC missing: reported either way, never raised
    assert result.error == MODULE_MISSING or "nosuch0" in (result.error or "")
