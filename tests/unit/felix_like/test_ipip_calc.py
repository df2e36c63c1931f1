"""The pure part of the IPIP manager: the MTU rule and the error text the agent surfaces."""

from __future__ import annotations

from felix_like.ipip import MODULE_MISSING, IPIPConfig, desired_mtu


def test_mtu_is_nic_minus_20_unless_configured() -> None:
    assert desired_mtu(IPIPConfig("10.65.1.0", "eth0"), 1500) == 1480
    assert desired_mtu(IPIPConfig("10.65.1.0", "eth0"), 9000) == 8980
    assert desired_mtu(IPIPConfig("10.65.1.0", "eth0", mtu=1400), 9000) == 1400


def test_missing_module_message_is_clear() -> None:
    assert MODULE_MISSING.startswith("ipip kernel module not available")
