"""YAML merge keys (``<<: *anchor``) in manifests, as Go's yaml (calicoctl) reads them: the merged
keys fill in, the keys written beside the merge override them, a written key twice is still an error."""

from __future__ import annotations

import pytest

from datamodel.resources.errors import ResourceError
from datamodel.resources.parsing import parse_documents

LIST = """
apiVersion: projectcalico.org/v3
kind: List
items:
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata:
    name: p1
  spec: &spec
    cidr: 10.9.0.0/16
    ipipMode: Never
    natOutgoing: true
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata:
    name: p2
  spec:
    <<: *spec
    cidr: 10.10.0.0/16
"""


def test_merged_keys_fill_in_written_keys_override() -> None:
    p1, p2 = parse_documents(LIST)
    assert p2.name == "p2"
    assert str(p2.spec.cidr) == "10.10.0.0/16"
    assert p2.spec.natOutgoing is True and p2.spec.ipipMode == p1.spec.ipipMode


def test_a_written_key_twice_and_a_scalar_merge_are_refused() -> None:
    head = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a}\nspec:\n"
    with pytest.raises(ResourceError, match="duplicate key 'cidr'"):
        parse_documents(head + "  cidr: 10.1.0.0/16\n  cidr: 10.2.0.0/16\n")
    with pytest.raises(ResourceError, match="expected a mapping or list of mappings for merging"):
        parse_documents(head + "  <<: 5\n  cidr: 10.2.0.0/16\n")
