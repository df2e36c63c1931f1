"""tabbyctl with Kubernetes NetworkPolicy and Namespace documents against a real etcd."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

DOCS = """\
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 80}]
"""


def test_apply_get_delete_networkpolicy_and_namespace(ctl: Any, write: Callable[[str, str], str]) -> None:
    res = ctl("apply", "-f", write("p.yaml", DOCS))
    assert res.rc == 0, res.err
    res = ctl("get", "netpol", "--namespace", "prod", "-o", "json")
    assert res.rc == 0, res.err
    [item] = json.loads(res.out)["items"]
    assert item["apiVersion"] == "networking.k8s.io/v1"
    assert item["spec"]["policyTypes"] == ["Ingress"]  # defaulted and stored, as the API server does
    res = ctl("get", "knp", "--namespace", "prod")
    assert res.rc == 0 and "allow-web" in res.out and 'app == "web"' in res.out, res.out + res.err
    res = ctl("get", "ns", "prod", "-o", "yaml")
    assert res.rc == 0 and "team: a" in res.out, res.err
    res = ctl("delete", "netpol", "allow-web", "--namespace", "prod")
    assert res.rc == 0, res.err
    assert json.loads(ctl("get", "netpol", "--namespace", "prod", "-o", "json").out)["items"] == []


def test_bad_policy_refused_naming_the_field_and_nothing_written(ctl: Any, write: Callable[[str, str], str]) -> None:
    bad = DOCS.replace("ports: [{port: 80}]", "ports: [{port: 80, endPort: 70}]")
    res = ctl("apply", "-f", write("bad.yaml", bad))
    assert res.rc != 0
    assert any("spec.ingress[0].ports[0].endPort: must be greater than or equal to port" in line
               for line in res.err_lines), res.err
    # all or nothing: the valid Namespace in the same file was not written either
    assert json.loads(ctl("get", "ns", "-o", "json").out)["items"] == []


CALICO = """\
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-fe, namespace: prod}
spec:
  tier: security
  order: 10
  selector: app == 'web'
  ingress: [{action: Allow, protocol: TCP, source: {selector: role == 'fe'}, destination: {ports: [80]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-blue}
spec: {namespaceSelector: team == 'blue', ingress: [{action: Deny}]}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod}
spec: {ingress: [{action: Allow}], egress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: ext, namespace: prod, labels: {role: ext}}
spec: {nets: [192.0.2.0/24]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: gext, labels: {role: ext}}
spec: {nets: [198.51.100.0/24, 2001:db8::/64]}
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: try-this, namespace: prod}
spec: {stagedAction: Set, selector: all(), ingress: [{action: Deny}]}
"""


def _table(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_calico_kinds_get_with_calicoctl_columns(ctl: Any, write: Callable[[str, str], str]) -> None:
    res = ctl("apply", "-f", write("c.yaml", CALICO))
    assert res.rc == 0, res.err
    assert _table(ctl("get", "networkpolicy", "--namespace", "prod").out) == [
        ["NAMESPACE", "NAME", "TIER"], ["prod", "allow-fe", "security"]]
    res = ctl("get", "np", "-n", "prod", "-o", "wide")
    assert _table(res.out)[0] == ["NAMESPACE", "NAME", "TIER", "ORDER", "SELECTOR"], res.out + res.err
    assert _table(res.out)[1][:4] == ["prod", "allow-fe", "security", "10"], res.out
    assert _table(ctl("get", "gnp").out) == [["NAME", "TIER"], ["deny-blue", "default"]]
    # Calico's fixed tiers are listed whether or not a document was written, by order
    assert _table(ctl("get", "tiers").out) == [
        ["NAME", "ORDER"], ["security", "100"], ["adminnetworkpolicy", "1000"], ["default", "1e+06"],
        ["baselineadminnetworkpolicy", "1e+07"]]
    assert _table(ctl("get", "profile").out) == [["NAME"], ["kns.prod"]]
    assert _table(ctl("get", "netsets", "-n", "prod").out) == [["NAMESPACE", "NAME"], ["prod", "ext"]]
    assert _table(ctl("get", "globalnetworkset", "-o", "wide").out) == [
        ["NAME", "NETS"], ["gext", "198.51.100.0/24,2001:db8::/64"]]
    assert _table(ctl("get", "snp", "-n", "prod").out) == [["NAMESPACE", "NAME", "TIER"],
                                                          ["prod", "try-this", "default"]]
    stored = json.loads(ctl("get", "policy", "allow-fe", "-n", "prod", "-o", "json").out)
    assert stored["spec"]["types"] == ["Ingress"] and stored["apiVersion"] == "projectcalico.org/v3"
    # the Kubernetes kind keeps kubectl's names
    assert json.loads(ctl("get", "netpol", "-n", "prod", "-o", "json").out)["items"] == []
    res = ctl("delete", "gnp", "deny-blue")
    assert res.rc == 0, res.err
    assert _table(ctl("get", "gnp").out) == [["NAME", "TIER"]]


def test_calico_fields_tabby_cannot_honour_are_refused_at_apply(ctl: Any, write: Callable[[str, str], str]) -> None:
    host_only = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\n"
                 "spec: {applyOnForward: true, ingress: [{action: Allow}]}\n")
    res = ctl("apply", "-f", write("g.yaml", host_only))
    assert res.rc == 1 and res.err_lines == [
        "Error: GlobalNetworkPolicy g: spec.applyOnForward: a host-endpoint-only field: Tabby has no host endpoints,"
        " so the policy could not act as written (Tabby does not support this)"], res.err
    sa = ("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n"
          "spec: {ingress: [{action: Allow, source: {serviceAccounts: {names: [api]}}}]}\n")
    res = ctl("apply", "-f", write("sa.yaml", sa))
    assert res.rc == 1 and "spec.ingress[0].source.serviceAccounts.names: Tabby does not support this yet" in res.err
    assert _table(ctl("get", "gnp").out) == [["NAME", "TIER"]] and _table(ctl("get", "np", "-n", "prod").out) == [
        ["NAMESPACE", "NAME", "TIER"]]


def test_policy_tier_must_exist_and_fixed_tiers_stay(ctl: Any, write: Callable[[str, str], str]) -> None:
    orphan = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\n"
              "spec: {tier: nowhere, ingress: [{action: Allow}]}\n")
    res = ctl("apply", "-f", write("o.yaml", orphan))
    assert res.rc == 1 and res.err_lines == [
        "Error: GlobalNetworkPolicy g: spec.tier: tier 'nowhere' does not exist (create the Tier first)"], res.err
    assert _table(ctl("get", "gnp").out) == [["NAME", "TIER"]]
    tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: nowhere}\nspec: {order: 5}\n"
    assert ctl("apply", "-f", write("t.yaml", tier)).rc == 0
    res = ctl("apply", "-f", write("o.yaml", orphan))
    assert res.rc == 0, res.err
    fixed = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: default}\n"
    assert ctl("apply", "-f", write("d.yaml", fixed)).rc == 0
    res = ctl("delete", "tier", "default")
    assert res.rc == 1, res.err
    assert "operation Delete is not supported on default: Cannot delete default tier" in res.err, res.err
    # a tier a policy is in cannot go (Calico's words); with the policy deleted in the same request it can
    res = ctl("delete", "tier", "nowhere")
    assert res.rc == 1 and res.err_lines == [
        "Error: operation delete is not supported on nowhere: Cannot delete a non-empty tier"], res.err
    assert _table(ctl("get", "gnp").out) == [["NAME", "TIER"], ["g", "nowhere"]]
    res = ctl("delete", "-f", write("both.yaml", orphan + "---\n" + tier))
    assert res.rc == 0, res.err
    assert "nowhere" not in ctl("get", "tier").out
