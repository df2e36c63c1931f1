"""Resource commands: create, apply, replace, delete, get, label, patch (calicoctl's verbs).

Every command parses and validates its whole input before touching etcd, then hands the
resources to :class:`controller.resource_store.ResourceStore`, which checks them against the
datastore and writes all or nothing. Output wording follows calicoctl
("Successfully created 2 'IPPool' resource(s)") so scripts keep working.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from controller.cli import output
from controller.cli.context import UserError, datastore_options, state

if TYPE_CHECKING:
    from controller.resource_store import Outcome
    from datamodel.resources import Resource

_INPUT_SUFFIXES = (".yaml", ".yml", ".json")


# -- input ------------------------------------------------------------------------------
def _read_sources(filename: str) -> list[tuple[str, str]]:
    """(text, source name) for ``-f``: a file, ``-`` for stdin, or a directory of YAML/JSON."""
    if filename == "-":
        return [(sys.stdin.read(), "<stdin>")]
    path = Path(filename)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _INPUT_SUFFIXES)
        if not files:
            raise UserError(f"{filename}: directory holds no .yaml, .yml or .json file")
        return [(_read_text(p), str(p)) for p in files]
    return [(_read_text(path), filename)]


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror or exc}") from None


def load_resources(filename: str, namespace: str | None = None, *, skip_unsupported: bool = False) -> list[Resource]:
    """Parse every document of ``filename``; any bad document fails the whole input.

    With ``skip_unsupported``, documents of Calico kinds Tabby does not model are left out (and
    named on stderr) instead of failing the input.
    """
    from datamodel.resources import ResourceError, parse_documents

    resources: list[Resource] = []
    problems: list[str] = []
    skipped: list[str] | None = [] if skip_unsupported else None
    for text, source in _read_sources(filename):
        try:
            resources.extend(parse_documents(text, source, skipped))
        except ResourceError as exc:
            problems.extend(exc.problems)
    if problems:
        raise UserError(problems)
    if skipped:
        click.echo(
            f"Skipped {len(skipped)} document(s) of Calico kinds Tabby does not support: {', '.join(skipped)}", err=True
        )
    if not resources and skipped:
        raise UserError("nothing left to apply: every document is of a Calico kind Tabby does not support")
    if not resources:
        raise UserError(f"{'<stdin>' if filename == '-' else filename}: no resources found")
    return [_in_namespace(r, namespace) for r in resources]


def _in_namespace(res: Resource, namespace: str | None) -> Resource:
    """Put a namespaced resource that names no namespace into ``-n NS`` (calicoctl does)."""
    if not namespace or not type(res).NAMESPACED or res.namespace == namespace:
        return res
    if res.namespace not in (None, "default"):
        raise UserError(
            f"{res.KIND} {res.namespace}/{res.name}: metadata.namespace {res.namespace!r} "
            f"does not match --namespace {namespace!r}"
        )
    from datamodel.resources import parse_resource

    doc = res.to_dict()
    doc["metadata"]["namespace"] = namespace
    return parse_resource(doc, f"{res.KIND} {res.name}", 0)


def terminal_progress(verb: str) -> Any:
    """A ``progress(done, total)`` that redraws one stderr line, only when stderr is a terminal
    (scripts and pipes get no progress noise)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{verb} {done}/{total} resources ({100 * done // max(total, 1)}%){end}")
        sys.stderr.flush()

    return show


def enforce_support_policy(resources: Sequence[Resource]) -> None:
    """Refuse valid fields Tabby cannot honour yet, warn about recorded-only ones (support policy)."""
    from controller import support_policy

    report = support_policy.check(resources)
    if report.refused:
        raise UserError(report.refused)
    for line in report.warnings:
        click.echo(f"Warning: {line}", err=True)


def kind_class(name: str) -> type[Resource]:
    from datamodel.resources import kind_for_name

    return kind_for_name(name)


def _counted(verb: str, resources: Sequence[Resource], fallback_kind: str | None = None) -> str:
    """calicoctl's success line: one kind is named, a mixture is just counted."""
    kinds = {r.KIND for r in resources} or ({fallback_kind} if fallback_kind else set())
    if len(kinds) == 1:
        return f"Successfully {verb} {len(resources)} '{next(iter(kinds))}' resource(s)"
    return f"Successfully {verb} {len(resources)} resource(s)"


def _report(verb: str, outcome: Outcome, resources: Sequence[Any], skipped_why: str) -> None:
    kind = next(iter({r.KIND for r in resources}), None) if resources else None
    click.echo(_counted(verb, outcome.done, kind if len({r.KIND for r in resources}) == 1 else None))
    if outcome.skipped:
        names = ", ".join(r.label for r in outcome.skipped)
        click.echo(f"Skipped {len(outcome.skipped)} resource(s) that {skipped_why}: {names}")


def _namespace_option(func: Any) -> Any:
    return click.option("-n", "--namespace", metavar="NS", help="Namespace for namespaced kinds (default: 'default').")(
        func
    )


def _skip_unsupported_option(func: Any) -> Any:
    return click.option(
        "--skip-unsupported",
        is_flag=True,
        help="Leave out documents of Calico kinds Tabby does not support and apply the rest.",
    )(func)


def _filename_option(required: bool) -> Any:
    return click.option(
        "-f",
        "--filename",
        metavar="FILE",
        required=required,
        help="YAML or JSON file with one or more resources ('-' for stdin, or a directory).",
    )


# -- create / apply / replace -------------------------------------------------------------
def _write_command(
    mode: str, filename: str, namespace: str | None, skip_exists: bool = False, skip_unsupported: bool = False
) -> None:
    from controller.resource_store import ResourceStore

    resources = load_resources(filename, namespace, skip_unsupported=skip_unsupported)
    enforce_support_policy(resources)

    async def body(ds: Any) -> Outcome:
        store = ResourceStore(ds, progress=terminal_progress(verb_ing[mode]))
        return await store.write(resources, mode, skip_exists=skip_exists)  # type: ignore[arg-type]

    verb_ing = {"create": "creating", "replace": "replacing", "apply": "applying"}

    outcome = state().run(body)
    verb = {"create": "created", "replace": "replaced", "apply": "applied"}[mode]
    _report(verb, outcome, resources, "already exist")


@click.command()
@_filename_option(required=True)
@click.option("--skip-exists", is_flag=True, help="Do not fail on resources that already exist.")
@_skip_unsupported_option
@_namespace_option
@datastore_options
def create(filename: str, skip_exists: bool, skip_unsupported: bool, namespace: str | None) -> None:
    """Create resources from a file; fails (writing nothing) if any already exists."""
    _write_command("create", filename, namespace, skip_exists, skip_unsupported)


@click.command()
@_filename_option(required=True)
@_skip_unsupported_option
@_namespace_option
@datastore_options
def apply(filename: str, skip_unsupported: bool, namespace: str | None) -> None:
    """Create resources, or replace them where they exist."""
    _write_command("apply", filename, namespace, skip_unsupported=skip_unsupported)


@click.command()
@_filename_option(required=True)
@_skip_unsupported_option
@_namespace_option
@datastore_options
def replace(filename: str, skip_unsupported: bool, namespace: str | None) -> None:
    """Replace existing resources; fails (writing nothing) if any does not exist."""
    _write_command("replace", filename, namespace, skip_unsupported=skip_unsupported)


# -- delete ---------------------------------------------------------------------------------
@click.command()
@click.argument("target", nargs=-1, metavar="[KIND NAME...]")
@_filename_option(required=False)
@click.option("-s", "--skip-not-exists", is_flag=True, help="Do not fail on resources that do not exist.")
@_skip_unsupported_option
@_namespace_option
@datastore_options
def delete(
    target: tuple[str, ...], filename: str | None, skip_not_exists: bool, skip_unsupported: bool, namespace: str | None
) -> None:
    """Delete resources named in a file, or KIND NAME...; all of them or none."""
    from controller.resource_store import Ref, ResourceStore

    refs: list[Ref]
    if filename:
        if target:
            raise UserError("give either -f FILE or KIND NAME..., not both")
        resources = load_resources(filename, namespace, skip_unsupported=skip_unsupported)
        refs = [Ref.of(r) for r in resources]
    else:
        if len(target) < 2:
            raise UserError("delete needs -f FILE or KIND NAME... (e.g. tabbyctl delete ippool pool-a)")
        cls = kind_class(target[0])
        refs = [Ref(cls, name, namespace) for name in target[1:]]

    async def body(ds: Any) -> Outcome:
        return await ResourceStore(ds, progress=terminal_progress("deleting")).delete(
            refs, skip_not_exists=skip_not_exists
        )

    outcome = state().run(body)
    kinds = {r.cls.KIND for r in refs}
    click.echo(_counted("deleted", outcome.done, next(iter(kinds)) if len(kinds) == 1 else None))
    if outcome.skipped:
        names = ", ".join(r.label for r in outcome.skipped)
        click.echo(f"Skipped {len(outcome.skipped)} resource(s) that do not exist: {names}")


# -- get --------------------------------------------------------------------------------------
_FORMATS = ("ps", "wide", "yaml", "json")


def _check_format(fmt: str) -> str:
    if fmt in _FORMATS or fmt.startswith("custom-columns="):
        return fmt
    raise UserError(f"unknown output format {fmt!r}: use ps, wide, yaml, json or custom-columns=COL,COL")


def _table(resources: Sequence[Resource], fmt: str, wide: dict[str, Any] | None = None) -> str:
    """``wide`` holds extra wide_row() arguments (a Node's inherited cluster AS)."""
    extra = wide or {}
    if fmt == "ps":
        rows = [r.ps_row() for r in resources]
    elif fmt == "wide":
        rows = [r.wide_row(**extra) for r in resources]
    else:
        columns = [c.strip().upper() for c in fmt.split("=", 1)[1].split(",") if c.strip()]
        if not columns:
            raise UserError("custom-columns= needs at least one column name")
        rows = [{c: {**r.wide_row(**extra), **r.ps_row()}.get(c, "") for c in columns} for r in resources]
        return output.tabwriter(rows, columns)
    if not rows:
        return ""
    return output.tabwriter(rows)


def _empty_headers(cls: type[Resource], fmt: str) -> list[str]:
    """Headers of an empty listing: calicoctl prints them even with no rows."""
    from datamodel.resources import parse_resource

    if fmt.startswith("custom-columns="):
        return [c.strip().upper() for c in fmt.split("=", 1)[1].split(",") if c.strip()]
    try:
        sample = _sample(cls, parse_resource)
    except Exception:  # a kind without a constructible sample prints no header
        return []
    return list((sample.ps_row() if fmt == "ps" else sample.wide_row()).keys())


def _sample(cls: type[Resource], parse_resource: Any) -> Resource:
    """A throw-away valid instance of ``cls``, only to learn its column headers."""
    samples: tuple[dict[str, Any], ...] = (
        {},
        {"cidr": "10.0.0.0/16"},
        {"peerIP": "192.0.2.1", "asNumber": 64512},
        {"node": "x"},
    )
    for spec in samples:
        try:
            doc: dict[str, Any] = {"apiVersion": cls.GROUP_VERSION, "kind": cls.KIND, "metadata": {"name": "default"}}
            if spec:
                doc["spec"] = spec
            return parse_resource(doc, "sample", 0)  # type: ignore[no-any-return]
        except Exception:
            continue
    raise LookupError(cls.KIND)


@click.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@click.option("-o", "--output", "fmt", default="ps", show_default=True, help="ps, wide, yaml, json, custom-columns=A,B")
@_namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="List namespaced resources of every namespace.")
@datastore_options
def get(kind: str, names: tuple[str, ...], fmt: str, namespace: str | None, all_namespaces: bool) -> None:
    """Show one resource (the object itself) or list a kind (a <Kind>List in yaml/json)."""
    from controller.resource_store import NotFound, ResourceStore

    fmt = _check_format(fmt)
    cls = kind_class(kind)

    wide_args: dict[str, Any] = {}

    async def body(ds: Any) -> tuple[list[Resource], int, list[str]]:
        store = ResourceStore(ds)
        if cls.KIND == "Node" and fmt != "ps":
            wide_args["default_asn"] = await _cluster_as(store)
        if not names:
            items, rev = await store.list(cls, namespace, all_namespaces=all_namespaces)
            return items, rev, []
        if all_namespaces and cls.NAMESPACED:
            items, rev = await store.list(cls, all_namespaces=True)
            found = [r for r in items if r.name in names]
            missing = [f"resource does not exist: {cls.KIND} {n}" for n in names if n not in {r.name for r in found}]
            return found, rev, missing
        found, missing = [], []
        for name in names:
            try:
                found.append(await store.get(cls, name, namespace))
            except NotFound as exc:
                missing.extend(exc.problems)
        return found, 0, missing

    items, revision, missing = state().run(body)
    single = len(names) == 1 and not all_namespaces
    if fmt in ("yaml", "json"):
        if single and items:
            doc: Any = items[0].to_dict()
        elif single:
            doc = None
        else:
            doc = output.list_object(cls.KIND, [r.to_dict() for r in items], revision)
        if doc is not None:
            click.echo(output.to_yaml(doc) if fmt == "yaml" else output.to_json(doc), nl=False)
    else:
        text = _table(items, fmt, wide_args)
        if not items and not (names and missing):
            headers = _empty_headers(cls, fmt)
            text = output.tabwriter([], headers) if headers else ""
        if text:
            click.echo(text, nl=False)
    if missing:
        raise UserError(missing)


async def _cluster_as(store: Any) -> int:
    """The AS a node without its own inherits: BGPConfiguration default's asNumber, else 64512."""
    from controller.resource_store import NotFound
    from datamodel.resources import DEFAULT_AS_NUMBER, kind_for_name

    try:
        cfg = await store.get(kind_for_name("bgpconfiguration"), "default")
    except NotFound:
        return DEFAULT_AS_NUMBER
    return cfg.spec.asNumber or DEFAULT_AS_NUMBER


# -- label --------------------------------------------------------------------------------------
@click.command()
@click.argument("kind")
@click.argument("name")
@click.argument("label", metavar="KEY[=VALUE]")
@click.option("--overwrite", is_flag=True, help="Change the value of an existing label.")
@click.option("--remove", is_flag=True, help="Remove the label KEY.")
@_namespace_option
@datastore_options
def label(kind: str, name: str, label: str, overwrite: bool, remove: bool, namespace: str | None) -> None:
    """Set KEY=VALUE on a resource's labels, or remove KEY with --remove."""
    from controller.resource_store import ResourceStore

    cls = kind_class(kind)
    key, eq, value = label.partition("=")
    if remove and eq:
        raise UserError("--remove takes a label key only, not KEY=VALUE")
    if not remove and not eq:
        raise UserError(f"label {label!r}: expected KEY=VALUE (or KEY --remove)")
    if not key:
        raise UserError(f"label {label!r}: the key is empty")
    what = f"{cls.KIND} {name}"

    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        labels = doc.setdefault("metadata", {}).setdefault("labels", {}) or {}
        if remove:
            if key not in labels:
                raise UserError(f"{what} has no label {key!r}")
            del labels[key]
        else:
            if key in labels and labels[key] != value and not overwrite:
                raise UserError(f"{what} already has label {key}={labels[key]}; use --overwrite to change it")
            labels[key] = value
        doc["metadata"]["labels"] = labels or None
        if not labels:
            doc["metadata"].pop("labels", None)
        return doc

    state().run(lambda ds: ResourceStore(ds).modify(cls, name, namespace, mutate))
    if remove:
        click.echo(f"Successfully removed label {key} from {what}")
    else:
        click.echo(f"Successfully set label {key} on {what}")


# -- patch ------------------------------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@click.command()
@click.argument("kind")
@click.argument("name")
@click.option("-p", "--patch", "patch_text", required=True, metavar="JSON", help="JSON merge patch.")
@click.option(
    "-t",
    "--type",
    "patch_type",
    type=click.Choice(["merge", "strategic"]),
    default="merge",
    show_default=True,
    help="Patch type; 'strategic' is accepted and applied as a merge patch.",
)
@_namespace_option
@datastore_options
def patch(kind: str, name: str, patch_text: str, patch_type: str, namespace: str | None) -> None:
    """Apply a JSON merge patch, validate the result fully, write it on the read revision."""
    from controller.resource_store import ResourceStore

    cls = kind_class(kind)
    try:
        patch_doc = json.loads(patch_text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--patch: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(patch_doc, dict):
        raise UserError('--patch: must be a JSON object such as \'{"spec":{"disabled":true}}\'')

    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        merged = merge_patch(doc, patch_doc)
        assert isinstance(merged, dict)
        return merged

    state().run(lambda ds: ResourceStore(ds).modify(cls, name, namespace, mutate))
    click.echo(f"Successfully patched 1 '{cls.KIND}' resource")


COMMANDS = (create, apply, replace, delete, get, label, patch)
