"""FelixConfiguration and ClusterInformation models; Calico kinds Tabby does not model."""

from __future__ import annotations

import pytest

from datamodel.resources import (
    FELIX_DEFAULTS,
    FelixConfiguration,
    ResourceError,
    effective_felix_config,
    kind_for_name,
    parse_documents,
    parse_resource,
)


def felix(name: str, **spec: object) -> FelixConfiguration:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration", "metadata": {"name": name}, "spec": spec}
    res = parse_resource(doc)
    assert isinstance(res, FelixConfiguration)
    return res


def test_felix_defaults_then_default_then_node_override() -> None:
    configs = [felix("default", vxlanPort=4790, logSeverityScreen="Warning"), felix("node.n1", vxlanPort=4800)]
    n1 = effective_felix_config(configs, "n1")
    n2 = effective_felix_config(configs, "n2")
    assert n1["vxlanPort"] == 4800 and n2["vxlanPort"] == 4790
    assert n1["logSeverityScreen"] == "Warning"
    assert n2["routeRefreshInterval"] == "90s" and n2["vxlanVNI"] == 4096
    ports = {(p["protocol"], p["port"]) for p in FELIX_DEFAULTS["failsafeInboundHostPorts"]}
    assert {("TCP", 22), ("UDP", 68), ("TCP", 179), ("TCP", 2379), ("TCP", 6443)} <= ports
    assert felix("default").to_dict()["spec"] == {}  # only what the user set is stored


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"logSeverityScreen": "info"}, "spec.logSeverityScreen"),
        ({"vxlanPort": 0}, "spec.vxlanPort"),
        ({"vxlanVNI": 16777216}, "spec.vxlanVNI"),
        ({"natOutgoingAddress": "fd00::1"}, "spec.natOutgoingAddress"),
        ({"failsafeInboundHostPorts": [{"protocol": "ICMP", "port": 1}]}, "spec.failsafeInboundHostPorts[0].protocol"),
        ({"mtuIfacePattern": "(("}, "spec.mtuIfacePattern"),
        ({"routeRefreshInterval": "90"}, "spec.routeRefreshInterval"),
        ({"Bogus_Field": 1}, "spec.Bogus_Field"),
    ],
)
def test_felix_fields_checked_as_calico_does(spec: dict[str, object], path: str) -> None:
    with pytest.raises(ResourceError, match=path.replace("[", r"\[").replace("]", r"\]")):
        felix("default", **spec)


def test_cluster_information_is_a_singleton() -> None:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "ClusterInformation", "metadata": {"name": "x"}}
    with pytest.raises(ResourceError, match="singleton"):
        parse_resource(doc)
    ok = parse_resource({**doc, "metadata": {"name": "default"}, "spec": {"datastoreReady": False}})
    assert ok.ps_row() == {"NAME": "default", "CALICOVERSION": "", "DATASTOREREADY": "false"}


def test_calico_kind_tabby_does_not_model_is_named_not_guessed() -> None:
    text = "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: p}\n"
    with pytest.raises(ResourceError) as info:
        parse_documents(text, "np.yaml")
    (line,) = info.value.problems
    assert "HostEndpoint is a Calico kind Tabby does not support" in line and "did you mean" not in line
    skipped: list[str] = []
    assert parse_documents(text, "np.yaml", skipped) == []
    assert skipped == ["np.yaml document 1 (HostEndpoint p)"]
    with pytest.raises(ResourceError, match="HostEndpoint is a Calico kind Tabby does not support"):
        kind_for_name("hep")
    with pytest.raises(ResourceError, match="unknown resource type 'frobnicator'"):
        kind_for_name("frobnicator")
