"""Reading resource documents: multi-document YAML or JSON, `<Kind>List` and `List` wrappers.

All documents are checked and every problem is collected before anything is returned, so a user
fixing a file sees all mistakes at once and a command never acts on half a file.

YAML is read with go-yaml's scalar rules rather than PyYAML's YAML 1.1 extras: calicoctl (Go) reads
`value: 65000:10` as a string and an unquoted date as a string, where PyYAML would produce a base-60
integer and a datetime. Duplicate keys are an error, as in go-yaml.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

import yaml
from pydantic import ValidationError

from datamodel.resources.common import API_VERSION, Resource
from datamodel.resources.errors import ResourceError, describe_value, format_validation_error
from datamodel.resources.ippool import IPPool, pool_overlaps
from datamodel.resources.registry import (
    KIND_SYNONYMS,
    KINDS,
    UNSUPPORTED_CALICO_KINDS,
    kind_for_document,
    kinds_named,
    unsupported_kind,
    unsupported_kind_message,
)

# --------------------------------------------------------------------------------------------
# YAML loader with Go's scalar resolution
# --------------------------------------------------------------------------------------------

_INT_RE = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


# libyaml's C scanner/parser when present (PyYAML's pure-Python scanner is most of the time of a
# 10,000-document apply); resolvers and constructors stay the Python ones below either way.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _GoLikeLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader without sexagesimal numbers and timestamps, refusing duplicate mapping keys;
    merge keys (``<<``) read as Go's yaml reads them.

    PyYAML merges by flattening the merged *nodes* into the mapping, which gets two cases wrong: an
    anchored mapping that itself merges and overrides a key (``&a {<<: *x, k: 1}``) is flattened to two
    ``k`` entries, so using it raised a false "duplicate key"; and merging such a mapping (``{<<: *a}``)
    yielded the overridden value (``k: 0``) instead of ``a``'s own (``k: 1``). Go's yaml merges the
    *constructed* mappings: the keys written beside ``<<`` win, then the merged mappings in their order
    (an earlier one in ``<<: [*a, *b]`` wins over a later one)."""

    _MERGE = "tag:yaml.org,2002:merge"
    #: (scalar text, implicit flags) -> tag. PyYAML runs its regex table over every scalar (165,000 in a
    #: 10,000-document apply, a quarter of parsing), and manifests repeat the same keys and values.
    _scalar_tags: dict[tuple[str, Any], str] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is not yaml.ScalarNode or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = self._scalar_tags.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(self._scalar_tags) >= 100_000:
                self._scalar_tags.clear()
            self._scalar_tags[key] = tag
        return tag

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark)
        written: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == self._MERGE:
                for source in self._merge_sources(node, value_node):
                    for key, value in source.items():
                        merged.setdefault(key, value)
                continue
            # A plain string key (nearly every key) is taken by its text: constructing every key through
            # the generic path was a measurable share of a 10,000-document apply.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
                key: Any = key_node.value
            else:
                key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in written
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            written[key] = self.construct_object(value_node, deep=deep)
        if not merged:
            return written
        merged.update(written)
        return merged

    def _merge_sources(self, node: yaml.MappingNode, value_node: yaml.Node) -> list[dict[Any, Any]]:
        """The mappings a ``<<`` merges, their keys read now. Not through ``construct_object``: an anchored
        mapping used elsewhere in the document may already be constructed there but not yet filled
        (PyYAML fills mappings after their parent), and merging that would merge nothing."""
        nodes = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        sources = []
        for sub in nodes:
            if not isinstance(sub, yaml.MappingNode):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"expected a mapping or list of mappings for merging, but found {sub.id}", sub.start_mark)
            sources.append(self.construct_mapping(sub, deep=True))
        return sources


_GoLikeLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()  # same resolver table
}
_GoLikeLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
_GoLikeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _syntax_error(where: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: YAML syntax error{position}: {detail}"


def _load_documents(text: str, source: str, problems: list[str]) -> list[tuple[int, Any]]:
    """(1-based position, parsed data) for each document; syntax errors appended to `problems`."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        docs = _load_json_stream(text)
        if docs is not None:
            return list(enumerate(docs, 1))
    out: list[tuple[int, Any]] = []
    loader = _GoLikeLoader(text)
    index = 0
    try:
        while True:
            index += 1
            try:
                if not loader.check_node():
                    break
                node = loader.get_node()
                data = _fast_construct(node)
                if data is _SLOW:  # anchors, merge keys, explicit tags: PyYAML's own constructor
                    data = loader.construct_document(node)
                    if _contains_itself(data):
                        problems.append(f"{source} document {index}: a YAML alias refers to a mapping or list "
                                        "that contains it (a recursive document)")
                        continue
            except yaml.YAMLError as exc:
                problems.append(_syntax_error(f"{source} document {index}", exc))
                break
            out.append((index, data))
    finally:
        loader.dispose()
    return out


def _contains_itself(data: Any) -> bool:
    """Whether an alias made the document recursive (``&a [*a]``, a merge of an enclosing mapping)."""
    path: set[int] = set()

    def walk(item: Any) -> bool:
        if not isinstance(item, dict | list):
            return False
        if id(item) in path:
            return True
        path.add(id(item))
        children = item.values() if isinstance(item, dict) else item
        found = any(walk(child) for child in children)
        path.discard(id(item))
        return found

    return walk(data)


_SLOW = object()
_STR, _INT, _FLOAT, _BOOL, _NULL = (f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


def _fast_construct(node: yaml.Node) -> Any:
    """The document as PyYAML's constructor (with the Go-like resolvers above) builds it, without its
    generator machinery: plain maps, sequences and str/int/float/bool/null scalars, duplicate keys
    refused. Anything else (anchors/aliases, ``<<`` merges, explicit or other tags) returns ``_SLOW``
    and the caller uses the full constructor, so results are the same either way. About 3x faster
    on a 10,000-document apply, where construction was the largest share of parsing."""
    seen: dict[int, Any] = {}

    def build(n: yaml.Node) -> Any:
        if id(n) in seen:  # an alias: PyYAML shares the object; let it do so
            raise _Slow
        tag = n.tag
        if isinstance(n, yaml.ScalarNode):
            if tag == _STR:
                return n.value
            if tag == _INT:
                return _SAFE.construct_yaml_int(n)
            if tag == _BOOL:
                return _SAFE.construct_yaml_bool(n)
            if tag == _NULL:
                return None
            if tag == _FLOAT:
                return _SAFE.construct_yaml_float(n)
            raise _Slow
        if isinstance(n, yaml.MappingNode):
            if tag != _MAP:
                raise _Slow
            seen[id(n)] = True
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _Slow
                key = build(key_node)
                try:
                    duplicate = key in out
                except TypeError:
                    raise _Slow from None
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", n.start_mark, f"duplicate key {key!r}", key_node.start_mark
                    )
                out[key] = build(value_node)
            return out
        if isinstance(n, yaml.SequenceNode):
            if tag != _SEQ:
                raise _Slow
            seen[id(n)] = True
            return [build(item) for item in n.value]
        raise _Slow

    try:
        return build(node)
    except _Slow:
        return _SLOW


class _Slow(Exception):
    """Internal: the node needs PyYAML's full constructor."""


_SAFE = yaml.constructor.SafeConstructor()


def _load_json_stream(text: str) -> list[Any] | None:
    """Concatenated JSON values (calicoctl accepts several objects in a row); None if not JSON."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None  # let the YAML reader (a JSON superset) report the error with its position
        docs.append(value)


# --------------------------------------------------------------------------------------------
# One document
# --------------------------------------------------------------------------------------------


def _label(data: Any) -> str:
    """`(<Kind> <name>)` for problem lines, from whatever the document holds."""
    if not isinstance(data, dict):
        return ""
    kind = data.get("kind") if isinstance(data.get("kind"), str) else None
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None
    parts = [p for p in (kind, name) if p]
    return f" ({' '.join(parts)})" if parts else ""


def _known_kinds() -> str:
    return ", ".join(sorted({cls.KIND for cls in KINDS}))


def _parse_one(data: Any, where: str, problems: list[str], skipped: list[str] | None = None) -> Resource | None:
    """Validate one resource mapping; on failure append its problem lines and return None.

    A Calico kind Tabby does not model is a problem, or, when `skipped` is a list, is recorded
    there (`<where> (<Kind> <name>)`) and left out.
    """
    prefix = where + _label(data)
    if not isinstance(data, dict):
        problems.append(f"{prefix}: a resource document must be a mapping, got {describe_value(data)}")
        return None
    kind = data.get("kind")
    if kind is None:
        problems.append(f"{prefix}: kind: required field missing (e.g. kind: IPPool)")
        return None
    if not isinstance(kind, str):
        problems.append(f"{prefix}: kind: must be a string, got {describe_value(kind)}")
        return None
    candidates = kinds_named(kind)
    # a Calico kind Tabby lacks; also a projectcalico.org/v3 NetworkPolicy, whose name the Kubernetes
    # networking.k8s.io/v1 kind shares
    calico_v3 = data.get("apiVersion", API_VERSION) == API_VERSION
    lacking = unsupported_kind(kind) if not candidates else (
        kind if kind in UNSUPPORTED_CALICO_KINDS and not any(c.GROUP_VERSION == API_VERSION for c in candidates)
        else None)
    if lacking and calico_v3:
        if skipped is not None:
            skipped.append(prefix)
        else:
            problems.append(
                f"{prefix}: kind: {unsupported_kind_message(kind)}; use --skip-unsupported to apply the rest"
            )
        return None
    if not candidates:
        close = difflib.get_close_matches(kind.lower(), [c.KIND.lower() for c in KINDS], n=1, cutoff=0.6)
        hint = next((f" (did you mean '{c.KIND}'?)" for c in KINDS if close and c.KIND.lower() == close[0]), "")
        problems.append(f"{prefix}: kind: unknown kind {kind!r}{hint}; known kinds: {_known_kinds()}")
        return None
    api_version = data.get("apiVersion")
    expected = " or ".join(sorted({c.GROUP_VERSION for c in candidates}))
    if api_version is None:
        problems.append(f"{prefix}: apiVersion: required field missing (expected {expected})")
        return None
    cls = kind_for_document(api_version, kind) if isinstance(api_version, str) else None
    if cls is None:
        problems.append(f"{prefix}: apiVersion: must be {expected} for {candidates[0].KIND}, got {api_version!r}")
        return None
    if kind in KIND_SYNONYMS:
        data = {**data, "kind": cls.KIND}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems.extend(format_validation_error(exc, prefix, cls))
        return None


def parse_resource(data: dict[str, Any], source: str = "<input>", index: int = 1) -> Resource:
    """Validate one resource dict (e.g. read back from etcd); ResourceError lists every problem."""
    problems: list[str] = []
    resource = _parse_one(data, f"{source} document {index}", problems)
    if resource is None:
        raise ResourceError(problems)
    return resource


# --------------------------------------------------------------------------------------------
# Whole inputs
# --------------------------------------------------------------------------------------------

_LIST_FIELDS = {"apiVersion", "kind", "metadata", "items"}


def _list_kind(data: dict[str, Any]) -> str | None:
    """'' for a generic List, the item kind for `<Kind>List`, None when `data` is not a list."""
    kind = data.get("kind")
    if not isinstance(kind, str):
        return None
    if kind == "List":
        return ""
    if kind.endswith("List") and kinds_named(kind[: -len("List")]):
        return kind[: -len("List")]
    return None


def _parse_list(
    data: dict[str, Any],
    item_kind: str,
    where: str,
    out: list[tuple[str, Resource]],
    problems: list[str],
    skipped: list[str] | None = None,
) -> None:
    prefix = f"{where} ({data['kind']})"
    for key in data:
        if key not in _LIST_FIELDS:
            problems.append(f"{prefix}: {key}: unknown field (a list has apiVersion, kind, metadata, items)")
    versions = sorted({c.GROUP_VERSION for c in kinds_named(item_kind)}) if item_kind else []
    if item_kind and data.get("apiVersion", versions[0]) not in versions:
        problems.append(f"{prefix}: apiVersion: must be {' or '.join(versions)}, got {data.get('apiVersion')!r}")
    items = data.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        problems.append(f"{prefix}: items: must be a list, got {describe_value(items)}")
        return
    for i, item in enumerate(items, 1):
        if item_kind and isinstance(item, dict):
            # calicoctl's typed lists may leave apiVersion/kind off the items.
            item = {"apiVersion": data.get("apiVersion", versions[0]), "kind": item_kind, **item}
        resource = _parse_one(item, f"{where} item {i}", problems, skipped)
        if resource is not None:
            out.append((f"{where} item {i}", resource))


def _cross_document_problems(parsed: list[tuple[str, Resource]]) -> list[str]:
    """Rules that span documents: overlapping IP pools in one input."""
    where = {id(res): w for w, res in parsed}
    pools = [res for _, res in parsed if isinstance(res, IPPool)]
    return [
        f"{where[id(b)]} (IPPool {b.name}): spec.cidr: {b.spec.cidr} overlaps IPPool {a.name} ({a.spec.cidr})"
        for a, b in pool_overlaps(pools)
    ]


def parse_documents(text: str, source: str = "<stdin>", skipped: list[str] | None = None) -> list[Resource]:
    """Parse multi-document YAML/JSON into resources; all-or-nothing, every problem reported at once.

    `skipped`: when given, documents of Calico kinds Tabby does not model are left out and named
    there instead of failing the input (tabbyctl's --skip-unsupported).
    """
    problems: list[str] = []
    parsed: list[tuple[str, Resource]] = []
    for index, data in _load_documents(text, source, problems):
        if data is None:
            continue
        where = f"{source} document {index}"
        item_kind = _list_kind(data) if isinstance(data, dict) else None
        if item_kind is not None:
            _parse_list(data, item_kind, where, parsed, problems, skipped)
            continue
        resource = _parse_one(data, where, problems, skipped)
        if resource is not None:
            parsed.append((where, resource))
    if not problems:
        problems.extend(_cross_document_problems(parsed))
    if problems:
        raise ResourceError(problems)
    return [res for _, res in parsed]
