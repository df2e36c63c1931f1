"""The etcd key layout, in one place (documented in docs/datastore.md).

All keys are relative to the configured prefix (default ``/tabby/``)::

    resources/v3/<plural>/<name>                 cluster-scoped resources (ippools, nodes, ...)
    resources/v3/<plural>/<namespace>/<name>     namespaced resources (workloadendpoints, ...)
    ipam/v2/block/<cidr>                         one allocation block, "/" written as "-"
    ipam/v2/affinity/<node>/<cidr>               a node's claim on a block (pending|confirmed)
    ipam/v2/handle/<handle id>                   which IPs a handle (pod, tunnel) holds
    resources/guards/<plural>                    bumped by every write of a collection whose members
                                                 are checked against each other (IPPool overlaps)
    nodestatus/live/<node>                       attached to a lease the node's agent keeps alive
                                                 (gone = the agent stopped renewing it)
    controller/leader                            attached to the lease of the acting cluster controller
"""

from __future__ import annotations

import ipaddress

RESOURCES = "resources/v3/"
GUARDS = "resources/guards/"
IPAM = "ipam/v2/"
BLOCKS = IPAM + "block/"
AFFINITIES = IPAM + "affinity/"
HANDLES = IPAM + "handle/"
LIVENESS = "nodestatus/live/"
CONTROLLER_LEADER = "controller/leader"


def cidr_to_key(cidr: str) -> str:
    """``10.0.0.0/26`` -> ``10.0.0.0-26`` (etcd keys read badly with a slash inside)."""
    return str(ipaddress.ip_network(cidr)).replace("/", "-")


def key_to_cidr(part: str) -> str:
    addr, _, length = part.rpartition("-")
    return str(ipaddress.ip_network(f"{addr}/{length}"))


def resource_prefix(plural: str, namespace: str | None = None) -> str:
    return f"{RESOURCES}{plural}/" + (f"{namespace}/" if namespace else "")


def resource_key(plural: str, name: str, namespace: str | None = None) -> str:
    return resource_prefix(plural, namespace) + name


def block_key(cidr: str) -> str:
    return BLOCKS + cidr_to_key(cidr)


def affinity_prefix(node: str | None = None) -> str:
    return AFFINITIES + (f"{node}/" if node else "")


def affinity_key(node: str, cidr: str) -> str:
    return f"{AFFINITIES}{node}/{cidr_to_key(cidr)}"


def parse_affinity_key(key: str) -> tuple[str, str]:
    """``ipam/v2/affinity/<node>/<cidr>`` -> (node, cidr)."""
    rest = key[len(AFFINITIES) :]
    node, _, cidr_part = rest.rpartition("/")
    return node, key_to_cidr(cidr_part)


def handle_key(handle_id: str) -> str:
    return HANDLES + handle_id


def guard_key(plural: str) -> str:
    """The key every write of ``plural`` compares and bumps, so two racing writers cannot both pass a
    collection-wide check (two overlapping IPPools created at once)."""
    return GUARDS + plural


def liveness_key(node: str) -> str:
    """The leased key a node's agent keeps alive (the cluster controller reads it)."""
    return LIVENESS + node
