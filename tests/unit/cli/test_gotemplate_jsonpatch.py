"""The go-template subset (get -o go-template) and RFC 6902 JSON patch (patch --type json): pure logic."""

from __future__ import annotations

from typing import Any

import pytest

from controller.cli.gotemplate import TemplateError, execute
from controller.cli.jsonpatch import PatchError, apply_patch

LISTS = [{"kind": "IPPoolList", "apiVersion": "projectcalico.org/v3", "metadata": {}, "items": [
    {"metadata": {"name": "a", "labels": {"team": "x", "env": "p"}},
     "spec": {"cidr": "10.0.0.0/16", "ipipMode": "Always", "natOutgoing": True, "allowedUses": ["Workload", "Tunnel"]}},
    {"metadata": {"name": "b"}, "spec": {"cidr": "10.1.0.0/16", "natOutgoing": False}},
]}]


@pytest.mark.parametrize(("template", "expected"), [
    # calicoctl's documented form, Go field names on JSON-shaped data
    ("{{range .}}{{range .Items}}{{.ObjectMeta.Name}},{{end}}{{end}}", "a,b,"),
    ("{{range .}}{{range .Items}}{{.Spec.CIDR}} {{.Spec.IPIPMode}}\n{{end}}{{end}}",
     "10.0.0.0/16 Always\n10.1.0.0/16 <no value>\n"),
    ("{{range .}}{{range .items}}{{.metadata.name}}{{end}}{{end}}", "ab"),  # json names work too
    ("{{range $i, $p := (index . 0).Items}}{{$i}}:{{$p.metadata.name}} {{end}}", "0:a 1:b "),
    ("{{with index . 0}}{{len .Items}}{{end}}", "2"),
    ("{{(index (index . 0).Items 0).metadata.labels.team}}", "x"),
    ("{{(index . 0).kind | printf \"%s!\" | len}}", "11"),
    ("{{range (index . 0).Items}}{{if .spec.natOutgoing}}nat{{else if .spec.ipipMode}}ipip{{else}}-{{end}}{{end}}",
     "nat-"),
    ("{{range (index . 0).Items}}{{join .spec.allowedUses \",\"}};{{end}}", "Workload,Tunnel;;"),
    ("{{(index (index . 0).Items 0).metadata.labels}}", "map[env:p team:x]"),
    ("{{range (index . 0).Items}}{{if eq .metadata.name \"b\"}}{{.spec.cidr}}{{end}}{{end}}", "10.1.0.0/16"),
    ("  {{- \"trim\" -}}  \n", "trim"),
    ("{{/* a comment */}}{{true}} {{not true}} {{printf \"%s=%d\" \"n\" 3}}", "true false n=3"),
    ("{{range (index . 0).nothing}}x{{else}}none{{end}}", "none"),
])
def test_template_subset(template: str, expected: str) -> None:
    assert execute(template, LISTS) == expected


@pytest.mark.parametrize(("template", "message"), [
    ("{{range .}}", "missing {{end}}"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{.a", "unclosed action"),
    ('{{define "x"}}{{end}}', "{{define}} is not supported"),
    ("{{$x := 1}}", "variable assignment is not supported"),
    ("{{nosuch .}}", 'function "nosuch" not defined'),
    ("{{$nope.a}}", "undefined variable: $nope"),
])
def test_template_errors_are_one_line(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("$", r"\$")):
        execute(template, LISTS)


DOC: dict[str, Any] = {"metadata": {"name": "p", "labels": {"a/b": "1"}}, "spec": {"cidr": "10.0.0.0/16",
                                                                                  "uses": ["Workload"]}}


def test_json_patch_operations_follow_rfc6902() -> None:
    out = apply_patch(DOC, [
        {"op": "add", "path": "/spec/uses/-", "value": "Tunnel"},
        {"op": "add", "path": "/spec/uses/0", "value": "LoadBalancer"},
        {"op": "replace", "path": "/spec/cidr", "value": "10.9.0.0/16"},
        {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
        {"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"},
        {"op": "move", "from": "/metadata/annotations/a~1b", "path": "/metadata/annotations/c"},
        {"op": "remove", "path": "/spec/uses/1"},
        {"op": "add", "path": "/spec/disabled", "value": True},
    ])
    assert out == {"metadata": {"name": "p", "labels": {"a/b": "1"}, "annotations": {"c": "1"}},
                   "spec": {"cidr": "10.9.0.0/16", "uses": ["LoadBalancer", "Tunnel"], "disabled": True}}
    assert DOC["spec"]["uses"] == ["Workload"], "the input is never changed"


@pytest.mark.parametrize(("patch", "message"), [
    ({"op": "add"}, "a JSON patch is an array"),
    ([{"op": "frob", "path": "/x"}], "operation 1: op must be one of"),
    ([{"op": "replace", "path": "/spec/nope", "value": 1}], r"operation 1 \(replace\): path /spec/nope does not exist"),
    ([{"op": "remove", "path": "/spec/uses/5"}], "index 5 is out of range"),
    ([{"op": "add", "path": "spec", "value": 1}], "must start with '/'"),
    ([{"op": "test", "path": "/spec/cidr", "value": "x"}], "is not 'x'"),
    ([{"op": "add", "path": "/spec/x", "value": 1}, {"op": "test", "path": "/spec/x", "value": True}], "is not True"),
    ([{"op": "move", "from": "/spec", "path": "/spec/inner"}], "into its own child"),
    ([{"op": "add", "path": "/spec/x"}], "value is required"),
])
def test_json_patch_errors_name_the_operation(patch: Any, message: str) -> None:
    with pytest.raises(PatchError, match=message):
        apply_patch(DOC, patch)
