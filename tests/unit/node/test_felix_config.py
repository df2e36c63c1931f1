"""Felix's precedence for the FelixConfiguration fields the agent consumes (controller/node/felix_config.py):
defaults < ``default`` < ``node.<name>`` < environment (FELIX_* and Tabby's own variables)."""

from __future__ import annotations

import math
from typing import Any

from controller.node.felix_config import describe, felix_settings
from datamodel.resources import parse_resource
from datamodel.resources.felixconfig import FelixConfiguration


def _cfg(name: str, **spec: Any) -> FelixConfiguration:
    res = parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                          "metadata": {"name": name}, "spec": spec})
    assert isinstance(res, FelixConfiguration)
    return res


def test_defaults_are_felix_defaults() -> None:
    s = felix_settings("n1", {}, [], env_log_level=None, env_resync=None)
    assert (s.log_level, s.resync_interval, s.metrics.enabled, s.metrics.port) == ("info", 90.0, False, 9091)
    assert set(s.sources.values()) == {"default"}


def test_node_document_wins_over_default() -> None:
    configs = [_cfg("default", logSeverityScreen="Debug", routeRefreshInterval="10s", prometheusMetricsEnabled=True),
               _cfg("node.n1", logSeverityScreen="Error", routeRefreshInterval="0s"),
               _cfg("node.n2", logSeverityScreen="Fatal")]
    s = felix_settings("n1", {}, configs, env_log_level=None, env_resync=None)
    assert (s.log_level, s.resync_interval, s.metrics.enabled) == ("error", math.inf, True)
    assert describe(s)["routeRefreshInterval"] is None
    assert felix_settings("n2", {}, configs, env_log_level=None, env_resync=None).log_level == "critical"
    assert felix_settings("n3", {}, configs, env_log_level=None, env_resync=None).resync_interval == 10.0


def test_environment_wins_as_in_felix() -> None:
    configs = [_cfg("default", logSeverityScreen="Debug", routeRefreshInterval="10s", prometheusMetricsEnabled=True,
                    prometheusMetricsPort=9200, prometheusMetricsHost="127.0.0.1")]
    s = felix_settings("n1", {"FELIX_PROMETHEUSMETRICSPORT": "9300", "FELIX_LOGSEVERITYSCREEN": "warning",
                              "FELIX_ROUTEREFRESHINTERVAL": "30"}, configs, env_log_level=None, env_resync=None)
    assert (s.log_level, s.resync_interval, s.metrics.port, s.metrics.host) == ("warning", 30.0, 9300, "127.0.0.1")
    assert s.sources["prometheusMetricsPort"] == "env" and s.sources["prometheusMetricsHost"] == "datastore"
    # Tabby's own variables count as environment too.
    s = felix_settings("n1", {}, configs, env_log_level="error", env_resync=5.0)
    assert (s.log_level, s.resync_interval) == ("error", 5.0)


def test_wireguard_and_bpf_found_in_etcd_are_reported_not_honoured() -> None:
    s = felix_settings("n1", {}, [_cfg("default", wireguardEnabled=True, bpfEnabled=False)],
                       env_log_level=None, env_resync=None)
    assert s.ignored == ("FelixConfiguration: wireguardEnabled: true is not honoured: Tabby has no WireGuard "
                         "encryption",)


def test_tunnel_switches_and_mtus() -> None:
    from controller.node.graph import EncapSettings

    s = felix_settings("n1", {}, [], env_log_level=None, env_resync=None)
    assert s.encap == EncapSettings() and s.encap.off() == set() and s.encap.mtus() == {}
    configs = [_cfg("default", vxlanEnabled=False, vxlanMTU=1400, ipipMTU=0),
               _cfg("node.n1", ipipEnabled=True, ipipMTU=1420)]
    s = felix_settings("n1", {}, configs, env_log_level=None, env_resync=None)
    assert s.encap == EncapSettings(ipip_enabled=True, vxlan_enabled=False, ipip_mtu=1420, vxlan_mtu=1400)
    assert s.encap.off() == {"vxlan"} and s.sources["vxlanEnabled"] == "datastore"
    assert describe(s)["vxlanMTU"] == 1400 and describe(s)["ipipEnabled"] is True
    # FELIX_* wins; a value Felix would not parse is ignored (the datastore's stays).
    s = felix_settings("n2", {"FELIX_VXLANENABLED": "TRUE", "FELIX_VXLANMTU": "1350", "FELIX_IPIPMTU": "x"},
                       configs, env_log_level=None, env_resync=None)
    assert (s.encap.vxlan_enabled, s.encap.vxlan_mtu, s.encap.ipip_mtu) == (True, 1350, None)
    assert s.sources["vxlanMTU"] == "env" and s.sources["ipipMTU"] == "datastore"
