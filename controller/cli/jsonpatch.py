"""RFC 6902 JSON Patch (``tabbyctl patch --type json``), on plain JSON values; pure, no I/O.

Why not a library: the RFC is small (six operations over RFC 6901 pointers) and the error messages
must name the failing operation and path in tabbyctl's one-line style; the implementation follows
the RFC's rules exactly (``-`` appends, ``test`` compares by JSON equality, ``move`` refuses moving a
location into its own child, every operation applies to the result of the previous one, and the
document is left unchanged when any operation fails).
"""

from __future__ import annotations

import copy
from typing import Any

OPS = ("add", "remove", "replace", "move", "copy", "test")


class PatchError(ValueError):
    """One line naming the operation (1-based) and why it failed."""


def _tokens(pointer: Any, where: str) -> list[str]:
    if not isinstance(pointer, str):
        raise PatchError(f"{where}: must be a JSON pointer string such as '/spec/disabled'")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"{where}: JSON pointer {pointer!r} must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list[Any], token: str, where: str, *, allow_end: bool) -> int:
    if allow_end and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"{where}: {token!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise PatchError(f"{where}: index {i} is out of range (array of {len(container)})")
    return i


def _parent(doc: Any, tokens: list[str], where: str) -> Any:
    node = doc
    for depth, token in enumerate(tokens[:-1]):
        here = "/" + "/".join(tokens[: depth + 1])
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"{where}: path {here} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, where, allow_end=False)]
        else:
            raise PatchError(f"{where}: path {here} does not exist")
    return node


def _get(doc: Any, tokens: list[str], where: str) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens, where)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{where}: path /{'/'.join(tokens)} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, where, allow_end=False)]
    raise PatchError(f"{where}: path /{'/'.join(tokens)} does not exist")


def _add(doc: Any, tokens: list[str], value: Any, where: str) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens, where)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, where, allow_end=True), value)
    else:
        raise PatchError(f"{where}: cannot add below a {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: list[str], where: str) -> Any:
    if not tokens:
        raise PatchError(f"{where}: cannot remove the whole document")
    parent = _parent(doc, tokens, where)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{where}: path /{'/'.join(tokens)} does not exist")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, where, allow_end=False)]
    else:
        raise PatchError(f"{where}: path /{'/'.join(tokens)} does not exist")
    return doc


def _equal(a: Any, b: Any) -> bool:
    """JSON equality (RFC 6902 4.6): 1 and 1.0 are equal, true and 1 are not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def apply_patch(doc: Any, patch: Any) -> Any:
    """``doc`` with every operation of ``patch`` applied in order (a new value; ``doc`` is untouched)."""
    if not isinstance(patch, list):
        raise PatchError('--patch: a JSON patch is an array of operations, e.g. [{"op":"replace","path":...}]')
    result = copy.deepcopy(doc)
    for n, op in enumerate(patch, 1):
        where = f"--patch operation {n}"
        if not isinstance(op, dict):
            raise PatchError(f"{where}: must be an object with op and path")
        name = op.get("op")
        if name not in OPS:
            raise PatchError(f"{where}: op must be one of {', '.join(OPS)}, got {name!r}")
        where = f"{where} ({name})"
        path = _tokens(op.get("path"), f"{where}: path")
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{where}: value is required")
        if name == "add":
            result = _add(result, path, copy.deepcopy(op["value"]), where)
        elif name == "remove":
            result = _remove(result, path, where)
        elif name == "replace":
            _get(result, path, where)
            result = _add(_remove(result, path, where), path, copy.deepcopy(op["value"]), where) if path else \
                copy.deepcopy(op["value"])
        elif name == "test":
            if not _equal(_get(result, path, where), op["value"]):
                raise PatchError(f"{where}: the value at {op['path']} is not {op['value']!r}")
        else:  # move, copy
            source = _tokens(op.get("from"), f"{where}: from")
            value = copy.deepcopy(_get(result, source, where))
            if name == "move":
                if path[: len(source)] == source and len(path) > len(source):
                    raise PatchError(f"{where}: cannot move {op['from']} into its own child {op['path']}")
                result = _remove(result, source, where)
            result = _add(result, path, value, where)
    return result
