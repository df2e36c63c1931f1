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


def _spec_of(text: str) -> dict[str, object]:
    from datamodel.resources.parsing import _GoLikeLoader, yaml

    return yaml.load(text, Loader=_GoLikeLoader)  # type: ignore[no-any-return]


def test_a_merged_mapping_that_merges_and_overrides_is_read_as_constructed() -> None:
    # PyYAML's node flattening raised a false "duplicate key 'k'" for the first and gave b k=0 in the second
    assert _spec_of("x: &x {k: 0}\nb: {<<: &a {<<: *x, k: 1}, j: 2}\nc: *a\n") == {
        "x": {"k": 0}, "b": {"k": 1, "j": 2}, "c": {"k": 1}}
    assert _spec_of("x: &x {k: 0}\na: &a {<<: *x, k: 1}\nb: {<<: *a}\nc: {<<: *a, k: 3}\n") == {
        "x": {"k": 0}, "a": {"k": 1}, "b": {"k": 1}, "c": {"k": 3}}


def test_earlier_mappings_in_a_merge_list_win_and_written_keys_win_over_all() -> None:
    assert _spec_of("x: &x {k: 0, m: 0}\ny: &y {k: 1, n: 1}\nb: {<<: [*x, *y], m: 5}\n")["b"] == {
        "k": 0, "m": 5, "n": 1}


def test_a_recursive_document_is_refused_not_passed_on() -> None:
    head = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a}\n"
    with pytest.raises(ResourceError, match="recursive document"):
        parse_documents(head + "spec: &s\n  cidr: 10.1.0.0/16\n  inner: {<<: *s}\n")
    with pytest.raises(ResourceError, match="recursive document"):
        parse_documents(head + "spec: {cidr: 10.1.0.0/16}\nx: &l [*l]\n")
