"""A subset of Go's text/template for ``tabbyctl get -o go-template=...`` / ``-o go-template-file=...``.

calicoctl runs the template on the list of results (one ``<Kind>List`` for a listing, the resource
itself for a named get) with Go field names (``{{range .}}{{range .Items}}{{.ObjectMeta.Name}}{{end}}{{end}}``).
Tabby's resources are JSON-shaped dicts, so a field name is looked up exactly, then case-insensitively
(``CIDR`` finds ``cidr``, ``IPIPMode`` finds ``ipipMode``), with Go's struct names for the wrappers
(``ObjectMeta`` is ``metadata``, ``Items`` is ``items``); json-style lowercase paths work as well.

Supported: text; ``{{pipeline}}`` output; field chains ``.A.B``, ``.``, ``$`` and ``$var.A``;
``{{range PIPE}}..{{else}}..{{end}}`` (``range $i, $v := PIPE`` and ``range $v := PIPE`` too);
``{{if PIPE}}..{{else if PIPE}}..{{else}}..{{end}}``; ``{{with PIPE}}..{{end}}``; string, number,
``true``/``false``/``nil`` literals; the functions ``index``, ``len``, ``join`` (calicoctl's),
``printf`` (``%s %d %v %q``), ``print``, ``println``, ``not``, ``and``, ``or``, ``eq``, ``ne``;
pipes ``PIPE | fn``; ``{{- `` / `` -}}`` trim markers; ``{{/* comments */}}``.
Not supported (refused with a message): ``define``/``template``/``block``, variable assignment
outside ``range``, method calls. Values print as Go's fmt ``%v`` does (``map[k:v]``, ``[a b]``,
``<no value>`` for a missing field).
"""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)|(?P<pipe>\|)|(?P<lp>\()|(?P<rp>\))'
    r"|(?P<field>(?:\$[A-Za-z0-9_]*)?(?:\.[A-Za-z0-9_]+)+|\.|\$[A-Za-z0-9_]*)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*))"
)
_ALIASES = {"objectmeta": "metadata", "typemeta": None}


class TemplateError(ValueError):
    """A template the subset cannot parse or run; one line."""


# -- parsing ------------------------------------------------------------------------------------
def _split(text: str) -> list[tuple[str, str]]:
    """[(kind, text)]: kind "text" or "action", with trim markers applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if m.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        out.append(("action", m.group(2).strip()))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", text[pos:]))
    if "{{" in text[pos:]:
        raise TemplateError("unclosed action: '{{' without '}}'")
    return [(k, t) for k, t in out if k == "action" or t]


def _parse(items: list[tuple[str, str]], pos: int, stop: tuple[str, ...]) -> tuple[list[Any], int, str]:
    """Nodes until one of ``stop`` ("end", "else"); returns (nodes, next position, the stop seen)."""
    nodes: list[Any] = []
    while pos < len(items):
        kind, text = items[pos]
        pos += 1
        if kind == "text":
            nodes.append(("text", text))
            continue
        if text.startswith("/*"):
            continue
        word = text.split(None, 1)[0] if text else ""
        if word in ("end", "else") and word in stop:
            return nodes, pos, text
        if word in ("end", "else"):
            raise TemplateError(f"unexpected {{{{{word}}}}}")
        if word in ("range", "if", "with"):
            head = text[len(word) :].strip()
            body, pos, seen = _parse(items, pos, ("end", "else"))
            alt: list[Any] = []
            if seen.startswith("else"):
                rest = seen[4:].strip()
                if rest.startswith("if "):  # {{else if X}} = {{else}}{{if X}}..{{end}}
                    inner, pos, seen2 = _parse(items, pos, ("end", "else"))
                    alt_else: list[Any] = []
                    if seen2.startswith("else"):
                        alt_else, pos, _ = _parse(items, pos, ("end",))
                    alt = [("if", _pipeline(rest[3:]), inner, alt_else)]
                else:
                    alt, pos, _ = _parse(items, pos, ("end",))
            if word == "range":
                names, pipe = _range_head(head)
                nodes.append(("range", names, pipe, body, alt))
            else:
                nodes.append((word, _pipeline(head), body, alt))
            continue
        if word in ("define", "template", "block"):
            raise TemplateError(f"{{{{{word}}}}} is not supported by tabbyctl's go-template subset")
        nodes.append(("out", _pipeline(text)))
    if stop:
        raise TemplateError("missing {{end}}")
    return nodes, pos, ""


def _range_head(head: str) -> tuple[list[str], Any]:
    m = re.match(r"^(\$\w*)\s*(?:,\s*(\$\w*))?\s*:=\s*(.*)$", head, re.S)
    if not m:
        return [], _pipeline(head)
    names = [n for n in (m.group(1), m.group(2)) if n]
    return names, _pipeline(m.group(3))


def _pipeline(text: str) -> list[list[Any]]:
    """Commands separated by '|', each a list of operands (tokens or nested pipelines)."""
    if ":=" in text or re.match(r"^\$\w*\s*=", text):
        raise TemplateError("variable assignment is not supported by tabbyctl's go-template subset")
    tokens = _tokenize(text)
    pipeline, rest = _commands(tokens, 0)
    if rest != len(tokens):
        raise TemplateError(f"unexpected ')' in {text!r}")
    if not pipeline or not pipeline[0]:
        raise TemplateError(f"empty action {{{{{text}}}}}")
    return pipeline


def _tokenize(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot parse {text[pos:].strip()!r} in {{{{{text}}}}}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _commands(tokens: list[tuple[str, str]], pos: int) -> tuple[list[list[Any]], int]:
    pipeline: list[list[Any]] = [[]]
    while pos < len(tokens):
        kind, value = tokens[pos]
        if kind == "rp":
            return pipeline, pos
        pos += 1
        if kind == "pipe":
            pipeline.append([])
        elif kind == "lp":
            inner, pos = _commands(tokens, pos)
            if pos >= len(tokens) or tokens[pos][0] != "rp":
                raise TemplateError("missing ')'")
            pos += 1
            if pos < len(tokens) and tokens[pos][0] == "field" and tokens[pos][1].startswith(".") \
                    and tokens[pos][1] != ".":
                pipeline[-1].append(("chain", (inner, tokens[pos][1])))  # (pipeline).Field
                pos += 1
            else:
                pipeline[-1].append(("sub", inner))
        else:
            pipeline[-1].append((kind, value))
    return pipeline, pos


# -- evaluation ---------------------------------------------------------------------------------
_MISSING = object()


def _field(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        if name in value:
            return value[name]
        lowered = name.lower()
        alias = _ALIASES.get(lowered, lowered)
        if alias is None:
            return value
        for key in value:
            if isinstance(key, str) and key.lower() == alias:
                return value[key]
        return _MISSING
    if value is None or value is _MISSING:
        return _MISSING
    raise TemplateError(f"can't evaluate field {name} in a {_kind(value)}")


def _kind(value: Any) -> str:
    return {dict: "map", list: "slice", str: "string", bool: "bool", int: "int", float: "float64"}.get(
        type(value), type(value).__name__
    )


def format_value(value: Any) -> str:
    """Go's fmt %v for JSON-shaped values."""
    if value is _MISSING or value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{format_value(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(format_value(v) for v in value) + "]"
    return str(value)


def _truth(value: Any) -> bool:
    if value is _MISSING or value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return bool(value)


def _printf(fmt: str, *args: Any) -> str:
    values = iter(args)

    def sub(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        value = next(values, _MISSING)
        if verb == "q":
            return '"' + format_value(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        return format_value(value)

    return re.sub(r"%([sdvq%])", sub, fmt)


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, _MISSING)
        elif isinstance(value, list):
            if not isinstance(key, int) or not 0 <= key < len(value):
                raise TemplateError(f"index out of range: {key}")
            value = value[key]
        else:
            raise TemplateError(f"can't index item of type {_kind(value)}")
    return value


def _eq(a: Any, *others: Any) -> bool:
    return any(a == b for b in others)


FUNCS: dict[str, Any] = {
    "index": _index,
    "len": lambda v: len(v) if isinstance(v, list | dict | str) else (_ for _ in ()).throw(
        TemplateError(f"len of type {_kind(v)}")),
    "join": lambda items, sep: sep.join(format_value(i) for i in (items if isinstance(items, list) else [])),
    "printf": _printf,
    "print": lambda *a: "".join(format_value(v) for v in a),
    "println": lambda *a: " ".join(format_value(v) for v in a) + "\n",
    "not": lambda v: not _truth(v),
    "and": lambda *a: next((v for v in a if not _truth(v)), a[-1]),
    "or": lambda *a: next((v for v in a if _truth(v)), a[-1]),
    "eq": _eq,
    "ne": lambda a, b: a != b,
}


class _Scope:
    def __init__(self, root: Any) -> None:
        self.vars: dict[str, Any] = {"$": root}


def _operand(tok: Any, dot: Any, scope: _Scope) -> Any:
    kind, value = tok
    if kind == "sub":
        return _run_pipeline(value, dot, scope)
    if kind == "chain":
        current = _run_pipeline(value[0], dot, scope)
        for name in [p for p in value[1].split(".") if p]:
            current = _field(current, name)
        return current
    if kind == "str":
        if value.startswith("`"):
            return value[1:-1]
        return bytes(value[1:-1], "utf-8").decode("unicode_escape")
    if kind == "num":
        return float(value) if "." in value else int(value)
    if kind == "field":
        base, _, path = value.partition(".") if value.startswith("$") else ("", "", value[1:])
        current = dot
        if value.startswith("$"):
            if base not in scope.vars:
                raise TemplateError(f"undefined variable: {base}")
            current = scope.vars[base]
        for name in [p for p in path.split(".") if p]:
            current = _field(current, name)
        return current
    if kind == "ident":
        if value in ("true", "false"):
            return value == "true"
        if value == "nil":
            return None
        raise TemplateError(f'function "{value}" not defined')
    raise TemplateError(f"unexpected {value!r}")


def _run_command(cmd: list[Any], dot: Any, scope: _Scope, piped: Any = _MISSING) -> Any:
    head = cmd[0]
    if head[0] == "ident" and head[1] in FUNCS:
        args = [_operand(t, dot, scope) for t in cmd[1:]]
        if piped is not _MISSING:
            args.append(piped)
        try:
            return FUNCS[head[1]](*args)
        except TypeError:
            raise TemplateError(f"wrong number of arguments to {head[1]}") from None
    if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
        raise TemplateError(f'function "{head[1]}" not defined')
    if len(cmd) > 1 or piped is not _MISSING:
        raise TemplateError(f"{head[1]} is not a function")
    return _operand(head, dot, scope)


def _run_pipeline(pipeline: list[list[Any]], dot: Any, scope: _Scope) -> Any:
    value: Any = _MISSING
    for i, cmd in enumerate(pipeline):
        if not cmd:
            raise TemplateError("missing command in pipeline")
        value = _run_command(cmd, dot, scope, value if i else _MISSING)
    return value


def _render(nodes: list[Any], dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            out.append(format_value(_run_pipeline(node[1], dot, scope)))
        elif kind in ("if", "with"):
            value = _run_pipeline(node[1], dot, scope)
            if _truth(value):
                _render(node[2], value if kind == "with" else dot, scope, out)
            else:
                _render(node[3], dot, scope, out)
        elif kind == "range":
            _, names, pipe, body, alt = node
            value = _run_pipeline(pipe, dot, scope)
            if isinstance(value, dict):
                pairs = sorted(value.items())
            elif isinstance(value, list):
                pairs = list(enumerate(value))
            elif value is None or value is _MISSING:
                pairs = []
            else:
                raise TemplateError(f"range can't iterate over {format_value(value)}")
            if not pairs:
                _render(alt, dot, scope, out)
            for key, item in pairs:
                if len(names) == 2:
                    scope.vars[names[0]], scope.vars[names[1]] = key, item
                elif names:
                    scope.vars[names[0]] = item
                _render(body, item, scope, out)


def execute(template: str, data: Any) -> str:
    """Run ``template`` on ``data``; TemplateError (one line) on a template it cannot handle."""
    nodes, _, _ = _parse(_split(template), 0, ())
    out: list[str] = []
    _render(nodes, data, _Scope(data), out)
    return "".join(out)
