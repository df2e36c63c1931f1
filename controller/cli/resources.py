"""Resource commands: create, apply, replace, delete, get, label, patch (calicoctl's verbs).

Every command parses and validates its whole input before touching etcd, then hands the
resources to :class:`controller.resource_store.ResourceStore`, which checks them against the
datastore and writes all or nothing. Output wording follows calicoctl
("Successfully created 2 'IPPool' resource(s)") so scripts keep working.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from controller.cli import output
from controller.cli.context import CalicoctlError, UserError, datastore_options, state

if TYPE_CHECKING:
    from controller.resource_store import Outcome
    from datamodel.resources import Resource

_INPUT_SUFFIXES = (".yaml", ".yml", ".json")


# -- input ------------------------------------------------------------------------------
def _read_sources(filename: str, recursive: bool = False, skip_empty: bool = False) -> list[tuple[str, str]]:
    """(text, source name) for ``-f``: a file, ``-`` for stdin, or a directory of YAML/JSON
    (with ``recursive``, its subdirectories too: calicoctl's ``-R``)."""
    if filename == "-":
        return [(sys.stdin.read(), "<stdin>")]
    path = Path(filename)
    if path.is_dir():
        candidates = path.rglob("*") if recursive else path.iterdir()
        files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in _INPUT_SUFFIXES)
        if not files:
            if skip_empty:
                return []
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


class NoResources(Exception):
    """``--skip-empty`` and the input held no document: calicoctl prints "No resources specified"."""


def load_resources(
    filename: str,
    namespace: str | None = None,
    *,
    skip_unsupported: bool = False,
    recursive: bool = False,
    skip_empty: bool = False,
) -> list[Resource]:
    """Parse every document of ``filename``; any bad document fails the whole input.

    With ``skip_unsupported``, documents of Calico kinds Tabby does not model are left out (and
    named on stderr) instead of failing the input. ``recursive``: directories are walked (``-R``).
    ``skip_empty``: files and directories without documents are not an error (:class:`NoResources`
    when nothing at all is left).
    """
    from datamodel.resources import ResourceError, parse_documents

    resources: list[Resource] = []
    problems: list[str] = []
    skipped: list[str] | None = [] if skip_unsupported else None
    for text, source in _read_sources(filename, recursive, skip_empty):
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
    if not resources and skip_empty:
        raise NoResources
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


class TerminalProgress:
    """``progress(done, total)`` for a write larger than one transaction: a rich bar on stderr.

    Only made when stderr is a terminal (:func:`terminal_progress`): scripts, pipes and CI logs get
    no progress noise. Redrawn on each call (no refresh thread), finished at ``done == total`` or by
    :meth:`close` (a write that failed half-way leaves the line finished, not dangling).
    """

    def __init__(self, verb: str) -> None:
        from rich.console import Console

        self.verb = verb
        self.console = Console(stderr=True)
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        if self._progress is None:
            self._progress = Progress(TextColumn(f"{self.verb} resources"), BarColumn(), MofNCompleteColumn(),
                                      TaskProgressColumn(), TimeElapsedColumn(), console=self.console,
                                      auto_refresh=False, transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.verb, total=max(total, 1))
        self._progress.update(self._task, completed=done, total=max(total, 1))
        self._progress.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def terminal_progress(verb: str) -> TerminalProgress | None:
    """A progress display only when stderr is a terminal (a person is waiting), else None."""
    return TerminalProgress(verb) if sys.stderr.isatty() else None


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


def _report(verb: str, outcome: Outcome, kinds: set[str], skipped_why: str) -> None:
    """calicoctl's success line; --skip-exists / --skip-not-exists skips count as handled, as calicoctl
    counts them (the names of the skipped go to stderr, so the stdout line stays the one scripts parse)."""
    count = len(outcome.done) + len(outcome.skipped)
    if len(kinds) == 1:
        click.echo(f"Successfully {verb} {count} '{next(iter(kinds))}' resource(s)")
    else:
        click.echo(f"Successfully {verb} {count} resource(s)")
    if outcome.skipped:
        names = ", ".join(r.label for r in outcome.skipped)
        click.echo(f"Skipped {len(outcome.skipped)} resource(s) that {skipped_why}: {names}", err=True)


_CALICO_PROBLEM = re.compile(r"^(resource already exists|resource does not exist|update conflict): (\w+) (\S+)")


def calicoctl_failure(action: str, kinds: set[str], total: int, problems: Sequence[str]) -> CalicoctlError | None:
    """calicoctl's failure line for an all-or-nothing write refused over existence or a conflict
    (``Failed to create 'IPPool' resource: [resource already exists: IPPool(pool-a)]``), or None when a
    problem is of another sort (those keep Tabby's one ``Error:`` line per problem)."""
    errors = []
    for line in problems:
        m = _CALICO_PROBLEM.match(line)
        if m is None:
            return None
        what, kind, name = m.groups()
        key = f"{kind}({name})"
        errors.append(f"{what}: {key} with error: <nil>" if what == "resource does not exist" else f"{what}: {key}")
    single = next(iter(kinds)) if len(kinds) == 1 else ""
    if action == "delete":
        prefix = f"Failed to delete '{single}' resource: " if single else "Failed to delete resource: "
        return CalicoctlError([prefix + e for e in errors])
    listed = "[" + " ".join(errors) + "]"
    if total == 1:
        return CalicoctlError([f"Failed to {action} '{single}' resource: {listed}"])
    if single:
        return CalicoctlError([f"Failed to {action} any '{single}' resources: {listed}"])
    return CalicoctlError([f"Failed to {action} any resources: {listed}"])


def _run_write(action: str, kinds: set[str], total: int, body: Any) -> Any:
    from controller.resource_store import StoreError

    try:
        return state().run(body)
    except StoreError as exc:
        failure = calicoctl_failure(action, kinds, total, exc.problems)
        if failure is None:
            raise
        raise failure from None


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


def _input_options(func: Any) -> Any:
    """calicoctl's -R/--recursive and --skip-empty for commands that read -f."""
    func = click.option(
        "--skip-empty", is_flag=True, help="Do not fail when the files or directories given with -f hold no data."
    )(func)
    return click.option("-R", "--recursive", is_flag=True, help="Process the directory given with -f recursively.")(
        func
    )


# -- create / apply / replace -------------------------------------------------------------
def _write_command(
    mode: str,
    filename: str,
    namespace: str | None,
    skip_exists: bool = False,
    skip_unsupported: bool = False,
    recursive: bool = False,
    skip_empty: bool = False,
) -> None:
    from controller.resource_store import ResourceStore

    try:
        resources = load_resources(
            filename, namespace, skip_unsupported=skip_unsupported, recursive=recursive, skip_empty=skip_empty
        )
    except NoResources:
        click.echo("No resources specified")
        return
    enforce_support_policy(resources)

    async def body(ds: Any) -> Outcome:
        progress = terminal_progress(verb_ing[mode])
        try:
            store = ResourceStore(ds, progress=progress)
            return await store.write(resources, mode, skip_exists=skip_exists)  # type: ignore[arg-type]
        finally:
            if progress is not None:
                progress.close()

    verb_ing = {"create": "creating", "replace": "replacing", "apply": "applying"}

    outcome = _run_write(mode, {r.KIND for r in resources}, len(resources), body)
    verb = {"create": "created", "replace": "replaced", "apply": "applied"}[mode]
    _report(verb, outcome, {r.KIND for r in resources}, "already exist")


@click.command()
@_filename_option(required=True)
@click.option("--skip-exists", is_flag=True, help="Do not fail on resources that already exist.")
@_skip_unsupported_option
@_input_options
@_namespace_option
@datastore_options
def create(
    filename: str, skip_exists: bool, skip_unsupported: bool, recursive: bool, skip_empty: bool, namespace: str | None
) -> None:
    """Create resources from a file; fails (writing nothing) if any already exists."""
    _write_command("create", filename, namespace, skip_exists, skip_unsupported, recursive, skip_empty)


@click.command()
@_filename_option(required=True)
@_skip_unsupported_option
@_input_options
@_namespace_option
@datastore_options
def apply(filename: str, skip_unsupported: bool, recursive: bool, skip_empty: bool, namespace: str | None) -> None:
    """Create resources, or replace them where they exist."""
    _write_command("apply", filename, namespace, skip_unsupported=skip_unsupported, recursive=recursive,
                   skip_empty=skip_empty)


@click.command()
@_filename_option(required=True)
@_skip_unsupported_option
@_input_options
@_namespace_option
@datastore_options
def replace(filename: str, skip_unsupported: bool, recursive: bool, skip_empty: bool, namespace: str | None) -> None:
    """Replace existing resources; fails (writing nothing) if any does not exist."""
    _write_command("replace", filename, namespace, skip_unsupported=skip_unsupported, recursive=recursive,
                   skip_empty=skip_empty)


# -- delete ---------------------------------------------------------------------------------
@click.command()
@click.argument("target", nargs=-1, metavar="[KIND NAME...]")
@_filename_option(required=False)
@click.option("-s", "--skip-not-exists", is_flag=True, help="Do not fail on resources that do not exist.")
@_skip_unsupported_option
@_input_options
@_namespace_option
@datastore_options
def delete(
    target: tuple[str, ...],
    filename: str | None,
    skip_not_exists: bool,
    skip_unsupported: bool,
    recursive: bool,
    skip_empty: bool,
    namespace: str | None,
) -> None:
    """Delete resources named in a file, or KIND NAME...; all of them or none."""
    from controller.resource_store import Ref, ResourceStore

    refs: list[Ref]
    if filename:
        if target:
            raise UserError("give either -f FILE or KIND NAME..., not both")
        try:
            resources = load_resources(filename, namespace, skip_unsupported=skip_unsupported, recursive=recursive,
                                       skip_empty=skip_empty)
        except NoResources:
            click.echo("No resources specified")
            return
        refs = [Ref.of(r) for r in resources]
    else:
        if len(target) < 2:
            raise UserError("delete needs -f FILE or KIND NAME... (e.g. tabbyctl delete ippool pool-a)")
        cls = kind_class(target[0])
        refs = [Ref(cls, name, namespace) for name in target[1:]]

    async def body(ds: Any) -> Outcome:
        progress = terminal_progress("deleting")
        try:
            return await ResourceStore(ds, progress=progress).delete(refs, skip_not_exists=skip_not_exists)
        finally:
            if progress is not None:
                progress.close()

    kinds = {r.cls.KIND for r in refs}
    outcome = _run_write("delete", kinds, len(refs), body)
    _report("deleted", outcome, kinds, "do not exist")


# -- get --------------------------------------------------------------------------------------
_FORMATS = ("ps", "wide", "yaml", "json")


def _check_format(fmt: str) -> str:
    if fmt in _FORMATS or fmt.startswith(("custom-columns=", "go-template=")):
        return fmt
    if fmt.startswith("go-template-file="):
        path = fmt.split("=", 1)[1]
        try:
            return "go-template=" + Path(path).read_text()
        except OSError as exc:
            raise UserError(f"go-template-file: {path}: {exc.strerror or exc}") from None
    raise UserError(
        f"unknown output format {fmt!r}: use ps, wide, yaml, json, custom-columns=COL,COL, go-template=TEMPLATE"
        " or go-template-file=FILE"
    )


def _go_template(template: str, data: list[Any]) -> str:
    from controller.cli.gotemplate import TemplateError, execute

    try:
        return execute(template, data)
    except TemplateError as exc:
        raise UserError(f"go-template: {exc}") from None


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
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@_filename_option(required=False)
@click.option("-R", "--recursive", is_flag=True, help="Process the directory given with -f recursively.")
@click.option(
    "-o",
    "--output",
    "fmt",
    default="ps",
    show_default=True,
    help="ps, wide, yaml, json, custom-columns=A,B, go-template=TEMPLATE, go-template-file=FILE",
)
@click.option("--export", is_flag=True, help="Leave out uid, resourceVersion and creationTimestamp (yaml/json).")
@_namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="List namespaced resources of every namespace.")
@datastore_options
def get(
    kind: str | None,
    names: tuple[str, ...],
    filename: str | None,
    recursive: bool,
    fmt: str,
    export: bool,
    namespace: str | None,
    all_namespaces: bool,
) -> None:
    """Show one resource (the object itself) or list a kind (a <Kind>List in yaml/json); -f FILE shows the
    resources a file names."""
    fmt = _check_format(fmt)
    if filename:
        if kind:
            raise UserError("give either -f FILE or KIND [NAME...], not both")
        _get_from_file(filename, recursive, fmt, export, namespace)
        return
    if not kind:
        raise UserError("get needs KIND [NAME...] or -f FILE (e.g. tabbyctl get ippools)")
    _get_kind(kind_class(kind), names, fmt, export, namespace, all_namespaces)


def _out_doc(res: Resource, export: bool) -> dict[str, Any]:
    from controller.cli.datastore_cmd import export_doc

    doc = res.to_dict()
    return export_doc(doc) if export else doc


def _get_kind(
    cls: type[Resource], names: tuple[str, ...], fmt: str, export: bool, namespace: str | None, all_namespaces: bool
) -> None:
    from controller.resource_store import NotFound, ResourceStore

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
    if cls.KIND == "Tier":
        items, missing = _with_fixed_tiers(items, names, missing)
    single = len(names) == 1 and not all_namespaces
    listing = output.list_object(cls.KIND, [_out_doc(r, export) for r in items], revision, cls.GROUP_VERSION)
    if export:
        listing["metadata"] = {}
    if fmt.startswith("go-template="):
        # calicoctl runs the template on its list of results: the <Kind>List of a listing, else each resource.
        data: list[Any] = [output.redact_secrets(d) for d in ([_out_doc(r, export) for r in items] if names
                                                               else [listing])]
        click.echo(_go_template(fmt.split("=", 1)[1], data), nl=False)
    elif fmt in ("yaml", "json"):
        if single and items:
            doc: Any = _out_doc(items[0], export)
        elif single:
            doc = None
        else:
            doc = listing
        if doc is not None:
            doc = output.redact_secrets(doc)
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


def _with_fixed_tiers(items: list[Resource], names: tuple[str, ...],
                      missing: list[str]) -> tuple[list[Resource], list[str]]:
    """Calico's fixed tiers exist whether or not a document was written (an install creates them):
    list them with their fixed order and default action, sorted by order as calicoctl sorts (none = last)."""
    from datamodel.resources.calicopolicy import FIXED_TIERS, Tier

    have = {r.name for r in items}
    wanted = [n for n in FIXED_TIERS if n not in have and (not names or n in names)]
    items = [*items, *(Tier(metadata={"name": n}, spec={}) for n in wanted)]
    missing = [m for m in missing if not any(m.endswith(f"Tier {n}") for n in wanted)]
    items.sort(key=lambda t: (t.spec.order is None, t.spec.order or 0.0, t.name))  # type: ignore[attr-defined]
    return items, missing


def _get_from_file(filename: str, recursive: bool, fmt: str, export: bool, namespace: str | None) -> None:
    """``get -f FILE``: the stored version of every resource the file names (grouped by kind, in file order)."""
    from controller.resource_store import NotFound, ResourceStore

    wanted = load_resources(filename, namespace, recursive=recursive)

    async def body(ds: Any) -> tuple[list[Resource], list[str]]:
        store = ResourceStore(ds)
        found, missing = [], []
        for res in wanted:
            try:
                found.append(await store.get(type(res), res.name, res.namespace))
            except NotFound as exc:
                missing.extend(exc.problems)
        return found, missing

    items, missing = state().run(body)
    docs = [output.redact_secrets(_out_doc(r, export)) for r in items]
    if fmt.startswith("go-template="):
        click.echo(_go_template(fmt.split("=", 1)[1], docs), nl=False)
    elif fmt == "yaml":
        click.echo("---\n".join(output.to_yaml(d) for d in docs), nl=False)
    elif fmt == "json":
        if len(docs) == 1:
            click.echo(output.to_json(docs[0]), nl=False)
        elif docs:
            click.echo(output.to_json({"kind": "List", "apiVersion": "v1", "items": docs}), nl=False)
    else:
        tables = []
        for cls in dict.fromkeys(type(r) for r in items):
            tables.append(_table([r for r in items if type(r) is cls], fmt))
        if tables:
            click.echo("\n".join(tables), nl=False)
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
    what = f"{kind} {name}"  # calicoctl names the resource as the user typed its kind
    updated = [False]

    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        labels = doc.setdefault("metadata", {}).setdefault("labels", {}) or {}
        if remove:
            if key not in labels:
                raise UserError(f"cannot remove label of {what}, key {key} does not exist")
            del labels[key]
        else:
            if key in labels and labels[key] != value and not overwrite:
                raise UserError(
                    f"failed to update label of {what}, key {key} is already present."
                    " please use '--overwrite' to set a new value."
                )
            updated[0] = key in labels
            labels[key] = value
        doc["metadata"]["labels"] = labels or None
        if not labels:
            doc["metadata"].pop("labels", None)
        return doc

    state().run(lambda ds: ResourceStore(ds).modify(cls, name, namespace, mutate))
    if remove:
        click.echo(f"Successfully removed label {key} from {what}")
    elif updated[0]:
        click.echo(f"Successfully updated label {key} on {what}")
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
@click.option("-p", "--patch", "patch_text", required=True, metavar="JSON", help="The patch (JSON).")
@click.option(
    "-t",
    "--type",
    "patch_type",
    type=click.Choice(["merge", "strategic", "json"]),
    default="merge",
    show_default=True,
    help="merge (RFC 7386), json (RFC 6902 operations), or strategic (applied as a merge patch).",
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
    if patch_type == "json":
        from controller.cli.jsonpatch import PatchError, apply_patch

        if not isinstance(patch_doc, list):
            raise UserError('--patch: a JSON patch is an array such as \'[{"op":"replace","path":"/spec/disabled",'
                            '"value":true}]\'')

        def mutate(doc: dict[str, Any]) -> dict[str, Any]:
            try:
                patched = apply_patch(doc, patch_doc)
            except PatchError as exc:
                raise UserError(str(exc)) from None
            if not isinstance(patched, dict):
                raise UserError("--patch: the patched document is not an object")
            return patched

    else:
        if not isinstance(patch_doc, dict):
            raise UserError('--patch: must be a JSON object such as \'{"spec":{"disabled":true}}\'')

        def mutate(doc: dict[str, Any]) -> dict[str, Any]:
            merged = merge_patch(doc, patch_doc)
            assert isinstance(merged, dict)
            return merged

    state().run(lambda ds: ResourceStore(ds).modify(cls, name, namespace, mutate))
    click.echo(f"Successfully patched 1 '{cls.KIND}' resource")


COMMANDS = (create, apply, replace, delete, get, label, patch)
