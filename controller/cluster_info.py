"""ClusterInformation `default`: written at first datastore initialisation, read by `version` and locks.

Why here (controller layer): tabbyctl and the node agent both initialise the datastore, and
calico-node's rule is that whichever finds no ClusterInformation writes it. The write is a
create-if-absent transaction, so two racing writers leave exactly one record.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import structlog

from datastore import Datastore, Put, mod_is
from datastore.keys import resource_key

log = structlog.get_logger("tabby.cluster_info")

KEY = resource_key("clusterinformations", "default")
CLUSTER_TYPE = "tabby,etcdv3,bgp"


def tabby_version() -> str:
    """``v<package version>`` (what ClusterInformation's calicoVersion records), or ``unknown``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "v" + version("tabby")
    except PackageNotFoundError:
        return "unknown"


def new_record() -> dict[str, Any]:
    """The ClusterInformation a fresh datastore gets (Calico's field names)."""
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "ClusterInformation",
        "metadata": {
            "name": "default",
            "uid": str(uuid.uuid4()),
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {
            "clusterGUID": uuid.uuid4().hex,
            "clusterType": CLUSTER_TYPE,
            "calicoVersion": tabby_version(),
            "datastoreReady": True,
            "variant": "Tabby",
        },
    }


async def ensure_cluster_information(ds: Datastore) -> bool:
    """Write ClusterInformation `default` if there is none; True if this call wrote it."""
    if await ds.get(KEY) is not None:
        return False
    result = await ds.txn([mod_is(KEY, 0)], [Put(KEY, new_record())])
    if result.succeeded:
        log.info("cluster_info.initialised", version=tabby_version())
    return bool(result.succeeded)


async def datastore_ready(ds: Datastore) -> bool:
    """calico's datastoreReady: False only when ClusterInformation says so (absent counts as ready)."""
    kv = await ds.get(KEY)
    if kv is None:
        return True
    try:
        return (kv.json().get("spec") or {}).get("datastoreReady") is not False
    except ValueError:
        return True
