"""``tabbyctl version``: client version always, cluster version when a datastore answers.

Why "unknown" instead of an error: ``version`` is what people run first when something is
wrong, often exactly when etcd is unreachable; it must still print what it knows and exit 0.
"""

from __future__ import annotations

from typing import Any

import click

from controller.cli.context import datastore_options, state

#: Calico's ClusterInformation resource, where a cluster records the version that set it up.
CLUSTER_INFO = ("clusterinformations", "default")
#: Seconds ``version`` waits for etcd before printing "unknown".
VERSION_TIMEOUT = 2.0


def client_version() -> str:
    from controller.cluster_info import tabby_version

    return tabby_version()


async def _cluster_version(ds: Any) -> str:
    from datastore.keys import resource_key

    kv = await ds.get(resource_key(*CLUSTER_INFO))
    if kv is None:
        return "unknown"
    try:
        spec = kv.json().get("spec") or {}
    except (ValueError, AttributeError):
        return "unknown"
    return str(spec.get("tabbyVersion") or spec.get("calicoVersion") or "unknown")


@click.command()
@datastore_options
def version() -> None:
    """Print the client version and, if etcd answers, the cluster version."""
    click.echo(f"Client Version:    {client_version()}")
    try:
        cluster = state().run(_cluster_version, timeout=min(VERSION_TIMEOUT, state().etcd_config().connect_timeout))
    except Exception as exc:  # unreachable, misconfigured: the client version is still useful
        import structlog

        structlog.get_logger("tabby.cli").debug("version.cluster_unknown", error=str(exc))
        cluster = "unknown"
    click.echo(f"Cluster Version:   {cluster}")
    click.echo("Cluster Type:      tabby,etcdv3,bgp")
