"""The kinds Tabby knows, and lookups by calicoctl's names for them.

Adding a kind = writing its module and adding one line to `KINDS`. Lookup tables are built from
the classes' own KIND / PLURAL / ALIASES / GROUP_VERSION, so nothing else needs editing.
"""

from __future__ import annotations

import difflib
from functools import cache

from datamodel.resources.bgp import BGPConfiguration, BGPFilter, BGPPeer
from datamodel.resources.calicopolicy import (
    CalicoNetworkPolicy,
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    NetworkSet,
    Profile,
    StagedGlobalNetworkPolicy,
    StagedKubernetesNetworkPolicy,
    StagedNetworkPolicy,
    Tier,
)
from datamodel.resources.clusterinfo import ClusterInformation
from datamodel.resources.common import API_VERSION, Resource
from datamodel.resources.errors import ResourceError
from datamodel.resources.felixconfig import FelixConfiguration
from datamodel.resources.ipamconfig import IPAMConfiguration
from datamodel.resources.ipamkinds import BlockAffinity, IPReservation
from datamodel.resources.ippool import IPPool
from datamodel.resources.kubecontrollers import KubeControllersConfiguration
from datamodel.resources.kubernetes import Namespace, NetworkPolicy
from datamodel.resources.node import Node
from datamodel.resources.nodestatus import CalicoNodeStatus
from datamodel.resources.workloadendpoint import WorkloadEndpoint

KINDS: list[type[Resource]] = [
    IPPool,
    IPAMConfiguration,
    Node,
    BGPConfiguration,
    BGPPeer,
    BGPFilter,
    WorkloadEndpoint,
    FelixConfiguration,
    ClusterInformation,
    NetworkPolicy,
    Namespace,
    CalicoNetworkPolicy,
    GlobalNetworkPolicy,
    Tier,
    Profile,
    NetworkSet,
    GlobalNetworkSet,
    StagedNetworkPolicy,
    StagedGlobalNetworkPolicy,
    StagedKubernetesNetworkPolicy,
    # issue 13 (calicoctl fidelity): kinds Calico users' manifests carry
    KubeControllersConfiguration,
    IPReservation,
    BlockAffinity,
    CalicoNodeStatus,
]

#: projectcalico.org/v3 kinds Tabby does not model (yet): refused by name, never "did you mean".
#: Keys are the kind; values the calicoctl resource names (plural and short forms) for `get`/`delete`.
UNSUPPORTED_CALICO_KINDS: dict[str, tuple[str, ...]] = {
    "BlockAffinity": ("blockaffinity", "blockaffinities", "affinity", "affinities"),
    "CalicoNodeStatus": ("caliconodestatus", "caliconodestatuses", "cns"),
    "HostEndpoint": ("hostendpoint", "hostendpoints", "hep", "heps"),
    "IPAMBlock": ("ipamblock", "ipamblocks"),
    "IPAMHandle": ("ipamhandle", "ipamhandles"),
    "IPReservation": ("ipreservation", "ipreservations"),
    "KubeControllersConfiguration": ("kubecontrollersconfiguration", "kubecontrollersconfigurations"),
}


def unsupported_kind_message(kind: str) -> str:
    """The one wording for a Calico kind Tabby does not model (documents, get, delete)."""
    return f"{kind} is a Calico kind Tabby does not support (Tabby supports: {supported_kinds()})"


def supported_kinds() -> str:
    return ", ".join(sorted(cls.KIND for cls in KINDS))


def unsupported_kind(name: str) -> str | None:
    """The Calico kind a document kind or a calicoctl resource name denotes, if Tabby lacks it."""
    if name in UNSUPPORTED_CALICO_KINDS and not kinds_named(name):
        return name
    lowered = name.lower()
    for kind, names in UNSUPPORTED_CALICO_KINDS.items():
        if (lowered == kind.lower() or lowered in names) and not kinds_named(kind):
            return kind
    return None


# Older spellings of `kind:` accepted in documents and rewritten to the current one.
KIND_SYNONYMS: dict[str, str] = {"IPAMConfig": "IPAMConfiguration"}


def all_kinds() -> list[type[Resource]]:
    """Every registered kind, in registration order."""
    return list(KINDS)


@cache
def _names() -> dict[str, type[Resource]]:
    table: dict[str, type[Resource]] = {}
    calico_kinds = {cls.KIND for cls in KINDS if cls.GROUP_VERSION == API_VERSION}
    for cls in KINDS:
        # a kind name two groups share (NetworkPolicy) is calicoctl's: the Calico kind's
        own = {cls.KIND.lower()} if cls.GROUP_VERSION == API_VERSION or cls.KIND not in calico_kinds else set()
        for alias in {*own, cls.PLURAL.lower(), *(a.lower() for a in cls.ALIASES)}:
            if alias in table and table[alias] is not cls:
                raise RuntimeError(f"resource name {alias!r} claimed by {table[alias].KIND} and {cls.KIND}")
            table[alias] = cls
    return table


def kind_for_name(name: str) -> type[Resource]:
    """The kind calicoctl would pick for `name` (case-insensitive: singular, plural or short form)."""
    cls = _names().get(name.lower())
    if cls is None:
        calico = unsupported_kind(name)
        if calico is not None:
            raise ResourceError(unsupported_kind_message(calico))
        valid = ", ".join(sorted({c.KIND.lower() for c in KINDS}))  # two NetworkPolicy kinds: one name
        close = difflib.get_close_matches(name.lower(), list(_names()), n=1, cutoff=0.8)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ResourceError(f"unknown resource type '{name}'{hint}; valid types: {valid}")
    return cls


def kinds_named(kind: str) -> list[type[Resource]]:
    """Classes whose `kind:` is exactly `kind` (one per apiVersion; synonyms resolved)."""
    kind = KIND_SYNONYMS.get(kind, kind)
    return list(_by_kind().get(kind, ()))


@cache
def _by_kind() -> dict[str, tuple[type[Resource], ...]]:
    # Looked up twice per document; a scan of KINDS each time was 7% of parsing a large apply.
    out: dict[str, tuple[type[Resource], ...]] = {}
    for cls in KINDS:
        out[cls.KIND] = (*out.get(cls.KIND, ()), cls)
    return out


def kind_for_document(api_version: str, kind: str) -> type[Resource] | None:
    """The class for an (apiVersion, kind) pair as written in a document, or None."""
    for cls in kinds_named(kind):
        if api_version == cls.GROUP_VERSION:
            return cls
    return None
