"""The kinds Tabby knows, and lookups by calicoctl's names for them.

Adding a kind = writing its module and adding one line to `KINDS`. Lookup tables are built from
the classes' own KIND / PLURAL / ALIASES / GROUP_VERSION, so nothing else needs editing.
"""

from __future__ import annotations

import difflib
from functools import cache

from datamodel.resources.bgp import BGPConfiguration, BGPPeer
from datamodel.resources.common import Resource
from datamodel.resources.errors import ResourceError
from datamodel.resources.ipamconfig import IPAMConfiguration
from datamodel.resources.ippool import IPPool
from datamodel.resources.kubernetes import Namespace, NetworkPolicy
from datamodel.resources.node import Node
from datamodel.resources.workloadendpoint import WorkloadEndpoint

KINDS: list[type[Resource]] = [
    IPPool,
    IPAMConfiguration,
    Node,
    BGPConfiguration,
    BGPPeer,
    WorkloadEndpoint,
    NetworkPolicy,
    Namespace,
]

# Older spellings of `kind:` accepted in documents and rewritten to the current one.
KIND_SYNONYMS: dict[str, str] = {"IPAMConfig": "IPAMConfiguration"}


def all_kinds() -> list[type[Resource]]:
    """Every registered kind, in registration order."""
    return list(KINDS)


@cache
def _names() -> dict[str, type[Resource]]:
    table: dict[str, type[Resource]] = {}
    for cls in KINDS:
        for alias in {cls.KIND.lower(), cls.PLURAL.lower(), *(a.lower() for a in cls.ALIASES)}:
            if alias in table and table[alias] is not cls:
                raise RuntimeError(f"resource name {alias!r} claimed by {table[alias].KIND} and {cls.KIND}")
            table[alias] = cls
    return table


def kind_for_name(name: str) -> type[Resource]:
    """The kind calicoctl would pick for `name` (case-insensitive: singular, plural or short form)."""
    cls = _names().get(name.lower())
    if cls is None:
        valid = ", ".join(sorted(c.KIND.lower() for c in KINDS))
        close = difflib.get_close_matches(name.lower(), list(_names()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ResourceError(f"unknown resource type '{name}'{hint}; valid types: {valid}")
    return cls


def kinds_named(kind: str) -> list[type[Resource]]:
    """Classes whose `kind:` is exactly `kind` (one per apiVersion; synonyms resolved)."""
    kind = KIND_SYNONYMS.get(kind, kind)
    return [cls for cls in KINDS if kind == cls.KIND]


def kind_for_document(api_version: str, kind: str) -> type[Resource] | None:
    """The class for an (apiVersion, kind) pair as written in a document, or None."""
    for cls in kinds_named(kind):
        if api_version == cls.GROUP_VERSION:
            return cls
    return None
