"""``tabbyctl datastore migrate lock|unlock``: calicoctl's datastore lock (ClusterInformation datastoreReady).

Why: Calico's documented IPAM-leak workflow is ``lock`` -> ``ipam check -o report`` ->
``ipam release --from-report`` -> ``unlock``; the lock is ClusterInformation's
``datastoreReady: false``, which tells every component to stop changing IPAM while the report is
made and used.

``export``/``import`` follow calicoctl's file format and rules: export needs the datastore locked and
prints three parts separated by ``===`` lines -- the resources as one YAML ``<Kind>List`` per kind
(``---`` between kinds, uid/resourceVersion/creationTimestamp removed as ``get --export`` does), the
ClusterInformation as JSON, and the IPAM records as JSON. Import refuses a datastore that already
holds resources or IPAM records, initialises and locks it, writes every resource in one
all-or-nothing write, carries clusterGUID and calicoVersion over, writes the IPAM records (create-
only transactions), and leaves the datastore locked until ``datastore migrate unlock``.

Deviations (Tabby migrates etcd to etcd, calicoctl etcd to Kubernetes): node names are kept (no
orchRef renaming), WorkloadEndpoints are exported (Tabby's agents write them; ``ipam check`` needs
them to tell live addresses from leaks), the IPAM part holds Tabby's own records
(``{"ipam_blocks", "block_affinities", "ipam_handles"}``, each a list of ``{"key", "value"}`` with the
values in Calico's AllocationBlock/IPAMHandle field names) and IPAMConfiguration travels with the
resources.
"""

from __future__ import annotations

import json
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


#: Kinds not in the resource part: ClusterInformation has its own part, BlockAffinity is IPAM's view.
_NOT_EXPORTED = frozenset({"ClusterInformation", "BlockAffinity"})
#: IPAM part name -> key prefix (datastore.keys BLOCKS, AFFINITIES, HANDLES; spelled out to keep start-up light).
_IPAM_PARTS = {
    "ipam_blocks": "ipam/v2/block/",
    "block_affinities": "ipam/v2/affinity/",
    "ipam_handles": "ipam/v2/handle/",
}
_SEPARATOR = "===\n"


def export_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """``get --export``: the document without what the datastore assigned (uid, resourceVersion,
    creationTimestamp, deletion fields), so it can be applied to another datastore."""
    md = doc.get("metadata")
    if isinstance(md, dict):
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "generation"):
            md.pop(key, None)
    return doc


@migrate.command("export")
@datastore_options
def export_cmd() -> None:
    """Print every resource, the ClusterInformation and the IPAM records (needs the datastore locked).

    Save the output to a file for `datastore migrate import`.
    """
    from controller.cli import output
    from controller.cluster_info import KEY as CLUSTER_INFO_KEY
    from controller.cluster_info import datastore_ready
    from controller.resource_store import ResourceStore
    from datamodel.resources import all_kinds

    async def body(ds: Any) -> str:
        if await datastore_ready(ds) or await ds.get(CLUSTER_INFO_KEY) is None:
            raise UserError(
                "datastore is not locked. Run the `tabbyctl datastore migrate lock` command in order to begin migration"
            )
        store = ResourceStore(ds)
        parts: list[str] = []
        for cls in all_kinds():
            if cls.KIND in _NOT_EXPORTED:
                continue
            items, _ = await store.list(cls, all_namespaces=True)
            listing = output.list_object(cls.KIND, [export_doc(r.to_dict()) for r in items], 0, cls.GROUP_VERSION)
            listing["metadata"] = {}
            parts.append(output.to_yaml(listing) + "---\n")
        info = (await ds.get(CLUSTER_INFO_KEY)).json()
        parts.append(_SEPARATOR + json.dumps(info, indent=2) + "\n")
        ipam: dict[str, list[dict[str, Any]]] = {}
        for part, prefix in _IPAM_PARTS.items():
            kvs, _ = await ds.list(prefix)
            ipam[part] = [{"key": kv.key, "value": kv.json()} for kv in kvs]
        parts.append(_SEPARATOR + json.dumps(ipam, indent=2) + "\n")
        return "".join(parts)

    click.echo(state().run(body), nl=False)


def _split_import(filename: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The three parts of an export file (calicoctl's ``===`` separators), parsed; one line per problem."""
    from controller.cli.resources import _read_sources

    ((text, source),) = _read_sources(filename) if filename != "-" else [(click.get_text_stream("stdin").read(),
                                                                          "<stdin>")]
    parts = text.split(_SEPARATOR)
    if len(parts) != 3:
        raise UserError(
            f"Imported file: {source} is improperly formatted. Try recreating with 'tabbyctl datastore migrate export'"
        )
    try:
        info, ipam = json.loads(parts[1]), json.loads(parts[2])
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: the cluster information or IPAM part is not JSON: {exc.msg}") from None
    if not isinstance(ipam, dict) or set(ipam) - set(_IPAM_PARTS) or not all(
        isinstance(ipam.get(p, []), list) for p in _IPAM_PARTS
    ):
        raise UserError(f"{source}: IPAM part: expected an object with {', '.join(sorted(_IPAM_PARTS))} lists")
    for part, prefix in _IPAM_PARTS.items():
        for i, rec in enumerate(ipam.get(part, []), 1):
            if not isinstance(rec, dict) or not str(rec.get("key", "")).startswith(prefix) or "value" not in rec:
                raise UserError(f"{source}: IPAM part: {part}[{i}]: expected {{key: {prefix}..., value: ...}}")
    if not isinstance(info, dict) or info.get("kind") != "ClusterInformation":
        raise UserError(f"{source}: cluster information part: not a ClusterInformation")
    return parts[0], info, ipam


@migrate.command("import")
@click.option("-f", "--filename", required=True, metavar="FILE", help="A file written by export ('-' for stdin).")
@datastore_options
def import_cmd(filename: str) -> None:
    """Import a file written by `datastore migrate export` into an empty datastore (left locked)."""
    from controller.cli.resources import enforce_support_policy
    from controller.cluster_info import ensure_cluster_information
    from controller.resource_store import ResourceStore
    from datamodel.resources import ClusterInformation, ResourceError, parse_documents
    from datastore import Put, mod_is
    from datastore.keys import RESOURCES

    resource_text, info, ipam = _split_import(filename)
    try:
        resources = parse_documents(resource_text, filename)
    except ResourceError as exc:
        raise UserError(exc.problems) from None
    enforce_support_policy(resources)
    records = [(rec["key"], rec["value"]) for part in _IPAM_PARTS for rec in ipam.get(part, [])]

    async def body(ds: Any) -> int:
        kvs, _ = await ds.list(RESOURCES)
        found = sorted({kv.key[len(RESOURCES):].split("/", 1)[0] for kv in kvs} - {"clusterinformations"})
        if found:
            raise UserError(
                f"Datastore already has Tabby resources: Found existing {found[0]} resources."
                " Import needs an empty datastore."
            )
        for prefix in _IPAM_PARTS.values():
            if (await ds.list(prefix))[0]:
                raise UserError("Datastore already has Tabby resources: Found existing IPAM resources."
                                " Import needs an empty datastore.")
        await ensure_cluster_information(ds)
        store = ResourceStore(ds)

        def lock(doc: dict[str, Any]) -> dict[str, Any]:
            spec = doc.setdefault("spec", {})
            spec["datastoreReady"] = False
            for key in ("clusterGUID", "calicoVersion"):
                if (info.get("spec") or {}).get(key):
                    spec[key] = info["spec"][key]
            return doc

        await store.modify(ClusterInformation, "default", None, lock)
        if resources:
            await store.create(resources)
        click.echo(f"Successfully applied {len(resources)} resource(s)")
        click.echo("Importing IPAM resources")
        for i in range(0, len(records), 127):
            chunk = records[i : i + 127]
            res = await ds.txn([mod_is(k, 0) for k, _ in chunk], [Put(k, v) for k, v in chunk])
            if not res.succeeded:
                raise UserError("IPAM records appeared while importing: another writer is using this datastore")
        return len(records)

    count = state().run(body)
    click.echo(f"Successfully applied {count} IPAM resource(s)")
    click.echo(
        "Datastore information successfully imported. Check it, then run `tabbyctl datastore migrate unlock`."
    )
