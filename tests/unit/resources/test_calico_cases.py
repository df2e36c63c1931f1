"""Calico's verdict on each case of calico/validation_cases.yaml, asserted against Tabby's parser.

The data file is the specification (one line per case, with the Calico rule that decides it);
this test only builds the document, parses it, and compares verdicts. An invalid case must be
refused with a line containing its `expect` fragment; a valid case must parse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from datamodel.resources import API_VERSION, ResourceError, parse_resource

CASES: list[dict[str, Any]] = yaml.safe_load((Path(__file__).parent / "calico" / "validation_cases.yaml").read_text())
SINGLETON_DEFAULT = {
    "BGPConfiguration",
    "IPAMConfiguration",
    "FelixConfiguration",
    "ClusterInformation",
    "KubeControllersConfiguration",
}


def _document(case: dict[str, Any]) -> dict[str, Any]:
    name = case.get("name", "default" if case["kind"] in SINGLETON_DEFAULT else "r1")
    if "name_length" in case:
        name = "a" * case["name_length"]
    metadata: dict[str, Any] = {"name": name, **case.get("metadata", {})}
    if "pad_annotations" in case:
        key = "pad"
        metadata["annotations"] = {key: "x" * (case["pad_annotations"] - len(key))}
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": case["kind"], "metadata": metadata}
    if case.get("spec") is not None:
        doc["spec"] = case["spec"]
    return doc


def test_corpus_is_large_and_ids_unique() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 150
    assert len(set(ids)) == len(ids)
    kinds = {c["kind"] for c in CASES}
    assert {"IPPool", "BGPConfiguration", "BGPPeer", "Node", "IPAMConfiguration"} <= kinds
    assert all(("expect" in c) != c["valid"] for c in CASES), "invalid cases name what is wrong; valid ones do not"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_tabby_decides_as_calico(case: dict[str, Any]) -> None:
    doc = _document(case)
    if case["valid"]:
        try:
            parse_resource(doc, "case")
        except ResourceError as exc:
            pytest.fail(f"Calico accepts {case['id']}, Tabby refused it:\n{exc}")
        return
    with pytest.raises(ResourceError) as info:
        parse_resource(doc, "case")
    assert any(case["expect"] in line for line in info.value.problems), (
        f"expected {case['expect']!r} in:\n" + "\n".join(info.value.problems)
    )
