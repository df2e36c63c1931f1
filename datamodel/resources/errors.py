"""Error reporting for resource documents.

Users apply whole files of calicoctl YAML, so an error has to say *which* document and *which* field
is wrong, in one line per problem, and all problems at once. Pydantic's own messages carry noise
("Value error, ", "Input should be ...") and Python type names; this module turns them into
`<source> document <n> (<Kind> <name>): <field.path>: <reason>` lines.

Cross-field rules run in model validators, where pydantic only knows the location of the model
itself. They raise `FieldProblems`, which carries paths relative to that model; pydantic keeps the
exception object in the error's context, so the formatter can expand it into precise paths.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


class ResourceError(ValueError):
    """One or more problems with resource input; `problems` holds one line each."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class FieldProblems(ValueError):
    """Raised from model validators: several (relative path, reason) pairs found in one pass.

    Raising a subclass of ValueError keeps pydantic collecting errors from sibling fields; the
    formatter recognises this class and prefixes each relative path with the model's location.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p}: {r}" if p else r for p, r in self.problems))


class Problems:
    """Collector used inside validators: `add()` every mistake, then `raise_if_any()`."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append((path, reason))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise FieldProblems(self.items)


def join_path(parts: Iterable[str | int]) -> str:
    """('spec', 'communities', 0, 'value') -> 'spec.communities[0].value'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out and part:
            out += "." + part if not part.startswith("[") else part
        else:
            out += part
    return out


_TYPE_NAMES = {
    dict: "mapping",
    list: "list",
    str: "string",
    int: "integer",
    bool: "boolean",
    float: "number",
    type(None): "null",
}


#: Field names whose values are never echoed in an error (an inline BGP password written where Calico
#: wants a secretKeyRef must not end up in a terminal, a CI log or a shell history of errors).
SECRET_FIELD = re.compile(r"pass(word|wd)|secret|token|private", re.I)


def is_secret_path(loc: Sequence[str | int]) -> bool:
    return any(isinstance(p, str) and SECRET_FIELD.search(p) for p in loc)


def describe_value(value: Any, *, secret: bool = False) -> str:
    """A short, YAML-flavoured description of a bad value: `integer 5`, `mapping`, `string 'x'`
    (with ``secret``, the kind only: ``string (not shown: a secret)``)."""
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return kind
    if secret and value is not None:
        return f"{kind} (not shown: a secret)"
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "a boolean (true or false)",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "float_type": "a number",
}


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes reachable through Optional/list/dict/Annotated wrappers of a field type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, dict, tuple, typing.Literal):
        found: list[Any] = []
        for arg in typing.get_args(annotation):
            found.extend(_unwrap(arg))
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(model: type[BaseModel] | None, loc: Sequence[str | int]) -> type[BaseModel] | None:
    """Walk field annotations along `loc` to the model class that owns the last element."""
    current = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) or next(
            (f for f in current.model_fields.values() if f.alias == part), None)  # `from`, `except`
        if field is None:
            return None
        nested = _unwrap(field.annotation)
        current = nested[0] if nested else None
    return current


def _unknown_field_reason(model: type[BaseModel] | None, loc: Sequence[str | int]) -> str:
    owner = _model_at(model, loc[:-1])
    name = loc[-1]
    if owner is not None and isinstance(name, str):
        names = [f.alias or n for n, f in owner.model_fields.items()]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if not close:
            close = [n for n in names if n.lower() == name.lower()]
        if close:
            return f"unknown field (did you mean '{close[0]}'?)"
        return "unknown field (valid fields: " + ", ".join(names) + ")"
    return "unknown field"


def _reason(err: dict[str, Any], model: type[BaseModel] | None) -> str:
    kind = err["type"]
    loc = err["loc"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    secret = is_secret_path(loc)
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        return _unknown_field_reason(model, loc)
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, got {describe_value(value, secret=secret)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}, got {describe_value(value, secret=secret)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt")), "?")
        return f"must be {op} {bound}, got {describe_value(value, secret=secret)}"
    message = str(err.get("msg", kind))
    if secret and isinstance(value, str) and value and value in message:
        message = message.replace(value, "<not shown: a secret>")
    for noise in ("Value error, ", "Assertion failed, "):
        if message.startswith(noise):
            message = message[len(noise) :]
    return message


def format_validation_error(exc: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> list[str]:
    """Turn a pydantic ValidationError into problem lines `<prefix>: <field.path>: <reason>`.

    `model` is the class that was validated; it lets unknown-field errors suggest the right name.
    """
    lines: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblems):
            for rel, reason in cause.problems:
                path = join_path([*loc, rel]) if rel else join_path(loc)
                lines.append(f"{prefix}: {path}: {reason}" if path else f"{prefix}: {reason}")
            continue
        path = join_path(loc)
        reason = _reason(err, model)
        lines.append(f"{prefix}: {path}: {reason}" if path else f"{prefix}: {reason}")
    return lines
