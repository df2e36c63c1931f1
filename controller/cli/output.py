"""How tabbyctl prints: calicoctl's tables, YAML and JSON, byte for byte where it matters.

Scripts written for calicoctl parse its output, so the shapes are copied: ``get -o ps``
is Go's tabwriter (columns padded by three spaces, minimum width five), ``ipam show`` is the
boxed ASCII table of olekukonko/tablewriter (headers centred, numbers right-aligned), YAML is
block style with keys sorted (calicoctl goes through JSON to YAML, which sorts them), JSON is
indented by two spaces in the models' field order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

API_VERSION = "projectcalico.org/v3"
_NUMBER = re.compile(r"^-?\d+\.?\d*$")


def tabwriter(rows: Sequence[Mapping[str, str]], headers: Sequence[str] | None = None) -> str:
    """calicoctl's ``-o ps``/``-o wide`` table (Go tabwriter: minwidth 5, padding 3)."""
    if headers is None:
        headers = list(rows[0].keys()) if rows else []
    if not headers:
        return ""
    table = [list(headers)] + [[str(r.get(h, "")) for h in headers] for r in rows]
    widths = [max(5, *(len(line[i]) + 3 for line in table)) for i in range(len(headers))]
    out = []
    for line in table:
        out.append("".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(out) + "\n"


def _pad_center(text: str, width: int) -> str:
    gap = width - len(text)
    left = gap // 2
    return " " * left + text + " " * (gap - left)


def box_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, center_headers: bool = True) -> str:
    """olekukonko/tablewriter's default rendering, as ``calicoctl ipam show`` prints it; with
    ``center_headers=False``, go-pretty's default (headers left-aligned), as ``--show-borrowed`` prints."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    cells = [_pad_center(h, w) if center_headers else h.ljust(w) for h, w in zip(headers, widths, strict=True)]
    lines = [border, "| " + " | ".join(cells) + " |", border]
    for row in rows:
        cells = [c.rjust(w) if _NUMBER.match(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        lines.append(border)
    return "\n".join(lines) + "\n"


def go_g5(value: float) -> str:
    """Go's ``%.5g`` (Python's matches it for these magnitudes)."""
    return f"{value:.5g}"


def usage_cell(part: float, total: float) -> str:
    """``5 (8%)`` as calicoctl prints in-use/free counts."""
    pct = 100 * part / total if total else 0.0
    return f"{go_g5(part)} ({pct:.0f}%)"


REDACTED = "<redacted>"
_URL_CREDS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)


def redact_secrets(value: Any) -> Any:
    """``get -o yaml/json``: a secret's value never prints.

    Calico's kinds hold references only (``BGPPeer.spec.password.secretKeyRef`` and
    ``BGPConfiguration.spec.nodeMeshPassword.secretKeyRef`` name a secret and a key; Tabby's model
    refuses an inline password, and the refusal does not echo it). What could still hold one is free
    text: an annotation or label whose name says password/secret/token/private, or a URL with
    ``user:password@`` in any string. Those print as ``<redacted>``; a ``secretKeyRef`` prints as is.
    """
    from datamodel.resources.errors import SECRET_FIELD

    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if k == "secretKeyRef":
                out[k] = v
            elif SECRET_FIELD.search(str(k)) and isinstance(v, str | int | float) and not isinstance(v, bool):
                out[k] = REDACTED
            else:
                out[k] = redact_secrets(v)
        return out
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    if isinstance(value, str):
        return _URL_CREDS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
    return value


def to_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, allow_unicode=True)


def to_json(doc: Any) -> str:
    return json.dumps(doc, indent=2) + "\n"


def list_object(
    kind: str, items: list[dict[str, Any]], revision: int, api_version: str = API_VERSION
) -> dict[str, Any]:
    """The ``<Kind>List`` calicoctl prints for a listing in yaml/json (in the kind's group/version)."""
    return {
        "kind": f"{kind}List",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": str(revision)},
        "items": items,
    }
