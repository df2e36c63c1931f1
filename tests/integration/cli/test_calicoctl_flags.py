"""calicoctl's flags through tabbyctl as a subprocess against a real etcd: get -f, -o go-template /
go-template-file, --export, -R, --skip-empty, patch --type json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

POOLS = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a, labels: {team: a}}
spec: {cidr: 10.71.0.0/16, ipipMode: Always}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-b}
spec: {cidr: 10.72.0.0/16}
"""
PEER = """apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 192.0.2.1, asNumber: 65001}
"""


def test_get_from_file_and_go_templates(ctl: Any, write: Any, tmp_path: Path) -> None:
    path = write("mixed.yaml", POOLS + "---\n" + PEER)
    assert ctl("apply", "-f", path).out.strip() == "Successfully applied 3 resource(s)"
    table = ctl("get", "-f", path)
    assert table.rc == 0, table.err
    assert table.out.split("\n\n")[0].split() == ["NAME", "CIDR", "SELECTOR", "pool-a", "10.71.0.0/16", "all()",
                                                  "pool-b", "10.72.0.0/16", "all()"]
    assert "tor" in table.out.split("\n\n")[1]
    docs = list(yaml.safe_load_all(ctl("get", "-f", path, "-o", "yaml").out))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("IPPool", "pool-a"), ("IPPool", "pool-b"),
                                                                  ("BGPPeer", "tor")]
    # calicoctl's documented template: the list of results, Go field names.
    res = ctl("get", "ippools", "-o", "go-template={{range .}}{{range .Items}}{{.ObjectMeta.Name}},{{end}}{{end}}")
    assert res.rc == 0 and res.out == "pool-a,pool-b,", res.err
    tmpl = tmp_path / "t.tmpl"
    tmpl.write_text("{{range .}}{{.metadata.name}}={{.Spec.CIDR}} {{.Spec.IPIPMode}}\n{{end}}")
    res = ctl("get", "ippool", "pool-a", "pool-b", "-o", f"go-template-file={tmpl}")
    assert res.out == "pool-a=10.71.0.0/16 Always\npool-b=10.72.0.0/16 Never\n", res.err
    bad = ctl("get", "ippools", "-o", "go-template={{range .}}")
    assert bad.rc == 1 and bad.err_lines == ["Error: go-template: missing {{end}}"]
    missing = ctl("get", "ippools", "-o", "go-template-file=/nonexistent.tmpl")
    assert missing.rc == 1 and missing.err_lines == [
        "Error: go-template-file: /nonexistent.tmpl: No such file or directory"
    ]


def test_export_strips_what_the_datastore_assigned(ctl: Any) -> None:
    assert ctl("apply", "-f", "-", input=POOLS).rc == 0
    full = yaml.safe_load(ctl("get", "ippool", "pool-a", "-o", "yaml").out)
    assert {"uid", "resourceVersion", "creationTimestamp"} <= set(full["metadata"])
    exported = yaml.safe_load(ctl("get", "ippool", "pool-a", "-o", "yaml", "--export").out)
    assert exported["metadata"] == {"name": "pool-a", "labels": {"team": "a"}}
    listing = json.loads(ctl("get", "ippools", "-o", "json", "--export").out)
    assert listing["metadata"] == {} and all(set(i["metadata"]) <= {"name", "labels"} for i in listing["items"])
    # An exported document applies unchanged elsewhere (here: replaces itself).
    assert ctl("apply", "-f", "-", input=yaml.safe_dump(exported)).rc == 0


def test_recursive_and_skip_empty(ctl: Any, tmp_path: Path, run_ds: Any) -> None:
    top = tmp_path / "manifests"
    (top / "nested" / "deeper").mkdir(parents=True)
    (top / "a.yaml").write_text(POOLS.split("---\n")[0])
    (top / "nested" / "deeper" / "b.yml").write_text(POOLS.split("---\n")[1])
    (top / "nested" / "empty.yaml").write_text("")
    flat = ctl("apply", "-f", str(top))
    assert flat.rc == 0 and flat.out.strip() == "Successfully applied 1 'IPPool' resource(s)", flat.err
    deep = ctl("apply", "--recursive", "-f", str(top))  # an empty file among others is fine
    assert deep.rc == 0, deep.err
    assert deep.out.strip() == "Successfully applied 2 'IPPool' resource(s)"
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    refused = ctl("apply", "-f", str(empty_dir))
    assert refused.rc == 1
    assert refused.err_lines == [f"Error: {empty_dir}: directory holds no .yaml, .yml or .json file"]
    skipped = ctl("apply", "--skip-empty", "-f", str(empty_dir))
    assert skipped.rc == 0 and skipped.out == "No resources specified\n"
    empty_file = tmp_path / "empty.yaml"
    empty_file.write_text("# nothing here\n")
    assert ctl("create", "-f", str(empty_file)).rc == 1
    assert ctl("delete", "--skip-empty", "-f", str(empty_file)).out == "No resources specified\n"
    removed = ctl("delete", "-R", "-f", str(top))
    assert removed.out.strip() == "Successfully deleted 2 'IPPool' resource(s)", removed.err


def test_patch_type_json(ctl: Any) -> None:
    assert ctl("apply", "-f", "-", input=POOLS).rc == 0
    ops = [{"op": "replace", "path": "/spec/ipipMode", "value": "CrossSubnet"},
           {"op": "add", "path": "/metadata/labels/env", "value": "prod"},
           {"op": "test", "path": "/spec/cidr", "value": "10.71.0.0/16"}]
    res = ctl("patch", "ippool", "pool-a", "--type", "json", "-p", json.dumps(ops))
    assert res.rc == 0 and res.out.strip() == "Successfully patched 1 'IPPool' resource", res.err
    got = yaml.safe_load(ctl("get", "ippool", "pool-a", "-o", "yaml").out)
    assert got["spec"]["ipipMode"] == "CrossSubnet" and got["metadata"]["labels"] == {"team": "a", "env": "prod"}
    failed = ctl("patch", "ippool", "pool-a", "--type", "json", "-p",
                 '[{"op":"replace","path":"/spec/ipipMode","value":"Never"},'
                 '{"op":"test","path":"/spec/cidr","value":"10.0.0.0/8"}]')
    assert failed.rc == 1 and failed.err_lines == [
        "Error: --patch operation 2 (test): the value at /spec/cidr is not '10.0.0.0/8'"
    ]
    invalid = ctl("patch", "ippool", "pool-a", "-t", "json", "-p", '[{"op":"replace","path":"/spec/ipipMode",'
                                                                  '"value":"Sometimes"}]')
    assert invalid.rc == 1 and "spec.ipipMode" in invalid.err
    after = yaml.safe_load(ctl("get", "ippool", "pool-a", "-o", "yaml").out)
    assert after["spec"]["ipipMode"] == "CrossSubnet", "a failed patch writes nothing"
    assert ctl("patch", "ippool", "pool-a", "-t", "json", "-p", '{"spec":{}}').err_lines == [
        'Error: --patch: a JSON patch is an array such as \'[{"op":"replace","path":"/spec/disabled","value":true}]\''
    ]
