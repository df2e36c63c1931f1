"""``tabbyctl datastore migrate lock|unlock``: calicoctl's datastore lock (ClusterInformation datastoreReady).

Why: Calico's documented IPAM-leak workflow is ``lock`` -> ``ipam check -o report`` ->
``ipam release --from-report`` -> ``unlock``; the lock is ClusterInformation's
``datastoreReady: false``, which tells every component to stop changing IPAM while the report is
made and used. ``export``/``import`` are not implemented yet (refused with a clear message).
"""

from __future__ import annotations

from typing import Any

import click

from controller.cli.context import UserError, datastore_options, state


@click.group()
def datastore() -> None:
    """Datastore maintenance (calicoctl's `datastore migrate`)."""


@datastore.group()
def migrate() -> None:
    """Lock or unlock the datastore (ClusterInformation datastoreReady)."""


def _set_ready(ready: bool) -> None:
    from controller.cluster_info import ensure_cluster_information
    from controller.resource_store import ResourceStore
    from datamodel.resources import ClusterInformation

    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        doc.setdefault("spec", {})["datastoreReady"] = ready
        return doc

    async def body(ds: Any) -> None:
        await ensure_cluster_information(ds)
        await ResourceStore(ds).modify(ClusterInformation, "default", None, mutate)

    state().run(body)


@migrate.command()
@datastore_options
def lock() -> None:
    """Set datastoreReady false: CNI ADDs and agents' IPAM writes are to stop until unlock."""
    _set_ready(False)
    click.echo("Datastore locked.")


@migrate.command()
@datastore_options
def unlock() -> None:
    """Set datastoreReady true again."""
    _set_ready(True)
    click.echo("Datastore unlocked.")


@migrate.command("export")
def export_cmd() -> None:
    """Not implemented yet."""
    raise UserError("datastore migrate export: not implemented in Tabby yet")


@migrate.command("import")
def import_cmd() -> None:
    """Not implemented yet."""
    raise UserError("datastore migrate import: not implemented in Tabby yet")
