"""Create, replace, apply, delete, get and list projectcalico.org/v3 resources in etcd.

Why this module exists: tabbyctl, the controller and the node agent all write resources, and
each write has rules that span more than one key (an IPPool must not overlap another pool,
its cidr and blockSize never change, a pool with live allocations cannot go away). Putting
those rules here, beside the transaction that writes, means every writer obeys them.

How a write works (:meth:`ResourceStore.write`, :meth:`ResourceStore.delete`):

1. Read the current value of every target key (and, for kinds with cross-resource rules,
   the whole collection).
2. Check every document: existence rules of the verb, ``metadata.resourceVersion`` when the
   document carries one, immutable fields (``Resource.check_update``), cross-resource rules against the datastore *and*
   the other documents of the same input. Collect every problem; if there is one, raise
   :class:`StoreError` with all of them and write nothing.
3. Write everything in ONE etcd transaction that compares each target key's mod_revision
   with what step 1 read (0 = must still be absent). A concurrent writer makes the compare
   fail and the whole read-check-write runs again on fresh data (bounded, with jitter).

Cross-resource rules need more than per-key compares: two clients creating overlapping pools
at the same time would each see a world without the other's pool. Every write to such a kind
therefore also compares and bumps one guard key per kind (``resources/guards/<plural>``, not
under any resource prefix), which serialises those writers. Tiers have one too, shared by a Tier's
delete and every policy write that names a tier of its own: a delete that found the tier empty and a
policy created in it at the same moment (which found the tier present) cannot both land.

etcd refuses transactions with more than 128 operations (``--max-txn-ops``) or about 1.5 MiB.
Inputs larger than one transaction are written with :mod:`datastore.staged`: an intent record,
staged values that readers resolve to the old value, and ONE commit transaction that makes the
whole input visible at once; a writer killed half-way leaves nothing visible, and the next writer
rolls its intent back (or completes it, once committed). Reads here (get/list/planning) resolve
staged values the same way.

``metadata.resourceVersion`` is the key's etcd mod_revision (never stored in the value);
``metadata.uid`` and ``metadata.creationTimestamp`` are set on create and kept on replace.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, overload

import structlog

from datastore import KV, Conflict, Datastore, Delete, Put, mod_is, retry_on_conflict, staged
from datastore.client import encode
from datastore.keys import AFFINITIES, guard_key, parse_affinity_key, resource_key, resource_prefix

if TYPE_CHECKING:
    from datamodel.resources import Resource

log = structlog.get_logger("tabby.resource_store")

WriteMode = Literal["create", "replace", "apply"]
AllocationCounter = Callable[[str], Awaitable[int]]

#: etcd's default --max-txn-ops is 128; one slot is kept for the guard key.
MAX_TXN_OPS = 128
MAX_TXN_RESOURCES = MAX_TXN_OPS - 1
#: Kinds whose writes are checked against the rest of the collection (see module docstring).
GUARDED_KINDS = frozenset({"IPPool"})
DEFAULT_NAMESPACE = "default"


class StoreError(Exception):
    """A write or read was refused; ``problems`` holds one line per reason, in input order."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class NotFound(StoreError):
    """The named resource does not exist."""


class UpdateConflict(StoreError):
    """The document's resourceVersion is not the stored one: someone else wrote first."""


@dataclass(frozen=True)
class Ref:
    """Which resource: kind class plus name (and namespace for namespaced kinds)."""

    cls: type[Resource]
    name: str
    namespace: str | None = None
    resource_version: str | None = None

    @functools.cached_property
    def key(self) -> str:  # asked five times per resource by a write's plan and commit
        return resource_key(self.cls.PLURAL, self.name, self.namespace if self.cls.NAMESPACED else None)

    @property
    def label(self) -> str:
        """``IPPool pool-a`` or ``NetworkPolicy ns1/allow-dns``: how messages name it."""
        if self.cls.NAMESPACED and self.namespace:
            return f"{self.cls.KIND} {self.namespace}/{self.name}"
        return f"{self.cls.KIND} {self.name}"

    @classmethod
    def of(cls, res: Resource) -> Ref:
        version = res.metadata.resourceVersion
        return cls(type(res), res.name, res.namespace, str(version) if version else None)


class LazyResults(Sequence["Resource"]):
    """The resources a write stored, each built when first read: ``tabbyctl apply`` of 10,000
    documents only counts them, and building them (a model copy each) was a fifth of its time."""

    def __init__(self) -> None:
        self._makers: list[Callable[[], Resource]] = []
        self._made: dict[int, Resource] = {}

    def add(self, maker: Callable[[], Resource]) -> None:
        self._makers.append(maker)

    def __len__(self) -> int:
        return len(self._makers)

    @overload
    def __getitem__(self, index: int) -> Resource: ...
    @overload
    def __getitem__(self, index: slice) -> list[Resource]: ...
    def __getitem__(self, index: int | slice) -> Resource | list[Resource]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError and negative indices as a list has them
        if i not in self._made:
            self._made[i] = self._makers[i]()
        return self._made[i]


@dataclass(repr=False)
class Outcome:
    """What a write or delete did: resources as now stored (or as they were, for deletes)."""

    done: LazyResults = field(default_factory=LazyResults)
    skipped: list[Ref] = field(default_factory=list)
    revision: int = 0

    def __repr__(self) -> str:
        # asyncio may repr a finished task's result; 10,000 models would take seconds to print.
        return f"Outcome(done={len(self.done)}, skipped={len(self.skipped)}, revision={self.revision})"


@dataclass
class _Plan:
    """The checked, ready-to-send operations for a set of resources."""

    refs: list[Ref]
    docs: list[dict[str, Any] | None]  # stored value to put; None for a delete
    compares: list[tuple[str, int]]  # (key, expected mod_revision) per ref
    old: list[KV | None]
    skipped: list[Ref]
    guards: dict[str, int]  # guard key -> expected mod_revision
    sources: list[Resource | None] = field(default_factory=list)  # the validated input per ref (writes)


def now_rfc3339() -> str:
    """creationTimestamp as Kubernetes and Calico write it: second precision, UTC, ``Z``."""
    return _rfc3339(int(time.time()))


@functools.lru_cache(maxsize=4)
def _rfc3339(second: int) -> str:
    # strftime is ~20 us; a 10,000-document apply asked for the same second 10,000 times.
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metadata(doc: dict[str, Any]) -> dict[str, Any]:
    md = doc.get("metadata")
    if not isinstance(md, dict):
        md = {}
        doc["metadata"] = md
    return md


class ResourceStore:
    """Resource CRUD with Calico's semantics over a :class:`~datastore.Datastore`.

    ``allocation_count(cidr)`` says how many addresses are allocated inside a pool; by
    default it asks :class:`ipam.IPAMClient`. It is a parameter so the node agent and tests
    can supply their own view.
    """

    def __init__(
        self,
        ds: Datastore,
        *,
        allocation_count: AllocationCounter | None = None,
        conflict_attempts: int = 20,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.ds = ds
        self._allocation_count = allocation_count
        self._attempts = conflict_attempts
        #: ``progress(done, total)`` during a staged (larger than one transaction) write.
        self._progress = progress

    # -- conversions --------------------------------------------------------------------
    def _decode(self, cls: type[Resource], kv: KV) -> Resource:
        """Turn a stored value back into a Resource carrying its resourceVersion."""
        from datamodel.resources import ResourceError, parse_resource

        try:
            doc = kv.json()
        except ValueError as exc:
            raise StoreError([f"stored value at {kv.key} is not JSON: {exc}"]) from exc
        _metadata(doc)["resourceVersion"] = str(kv.mod_revision)
        try:
            return parse_resource(doc, f"etcd key {kv.key}", 0)
        except ResourceError as exc:
            raise StoreError([f"stored {cls.KIND} at {kv.key} is invalid: {p}" for p in exc.problems]) from exc

    def _with_version(
        self, ref: Ref, revision: int, stored: dict[str, Any], source: Resource | None = None
    ) -> Resource:
        """The resource as stored, with its resourceVersion; from the already validated input
        when there is one (re-validating 10,000 documents here would double the parse cost)."""
        md = stored.get("metadata") or {}
        if source is not None:
            meta = source.metadata.model_copy(
                update={
                    "resourceVersion": str(revision),
                    "uid": md.get("uid"),
                    "creationTimestamp": md.get("creationTimestamp"),
                    "name": ref.name,
                    "namespace": md.get("namespace", source.metadata.namespace),
                }
            )
            return source.model_copy(update={"metadata": meta})
        doc = copy.deepcopy(stored)
        _metadata(doc)["resourceVersion"] = str(revision)
        return _parse_named(doc, ref)

    # -- reads --------------------------------------------------------------------------
    async def get(self, cls: type[Resource], name: str, namespace: str | None = None) -> Resource:
        """The named resource, or :class:`NotFound` ("resource does not exist: IPPool x")."""
        ref = Ref(cls, name, self._namespace(cls, namespace))
        if cls.KIND == "BlockAffinity":
            found = [r for r in (await self._block_affinities())[0] if r.name == name]
            if not found:
                raise NotFound([f"resource does not exist: {ref.label}"])
            return found[0]
        kv = await staged.get_resolved(self.ds, ref.key)
        if kv is None:
            raise NotFound([f"resource does not exist: {ref.label}"])
        return self._decode(cls, kv)

    async def list(
        self, cls: type[Resource], namespace: str | None = None, *, all_namespaces: bool = False
    ) -> tuple[list[Resource], int]:
        """All resources of a kind (in one namespace, or all) and the revision read at."""
        if cls.KIND == "BlockAffinity":
            return await self._block_affinities()
        if cls.NAMESPACED and not all_namespaces:
            prefix = resource_prefix(cls.PLURAL, namespace or DEFAULT_NAMESPACE)
        else:
            prefix = resource_prefix(cls.PLURAL)
        kvs, revision = await staged.read_resolved(self.ds, prefix)
        return [self._decode(cls, kv) for kv in kvs], revision

    async def _block_affinities(self) -> tuple[list[Resource], int]:
        """IPAM's ``ipam/v2/affinity/<node>/<cidr>`` records as Calico's BlockAffinity resources (a view:
        IPAM owns them, see datamodel/resources/ipamkinds.py)."""
        from datamodel.resources import BlockAffinity, block_affinity_name

        kvs, revision = await self.ds.list(AFFINITIES)
        out: list[Resource] = []
        for kv in kvs:
            try:
                node, cidr = parse_affinity_key(kv.key)
                value = kv.json()
                out.append(BlockAffinity(
                    metadata={"name": block_affinity_name(node, cidr), "resourceVersion": str(kv.mod_revision)},
                    spec={"state": str(value.get("state") or "confirmed"), "node": node, "cidr": cidr,
                          "deleted": "true" if value.get("deleted") else "false", "type": "host"},
                ))
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("resource_store.bad_affinity", key=kv.key, error=str(exc))
        out.sort(key=lambda r: r.name)
        return out, revision

    @staticmethod
    def _refuse_read_only(refs: Sequence[Ref], verb: str) -> None:
        problems = [
            f"operation {verb} is not supported on {ref.label}: {ro}"
            for ref in refs
            if (ro := getattr(ref.cls, "READ_ONLY", None))
        ]
        if problems:
            raise StoreError(problems)

    # -- writes -------------------------------------------------------------------------
    async def create(self, resources: Sequence[Resource], *, skip_exists: bool = False) -> Outcome:
        return await self.write(resources, "create", skip_exists=skip_exists)

    async def replace(self, resources: Sequence[Resource]) -> Outcome:
        return await self.write(resources, "replace")

    async def apply(self, resources: Sequence[Resource]) -> Outcome:
        return await self.write(resources, "apply")

    async def write(self, resources: Sequence[Resource], mode: WriteMode, *, skip_exists: bool = False) -> Outcome:
        """Check every resource, then write all of them or none (see module docstring)."""
        refs = [Ref.of(r) for r in resources]
        by_ref = dict(zip(refs, resources, strict=True))
        self._refuse_read_only(refs, {"create": "Create", "replace": "Update", "apply": "Apply"}[mode])

        async def planner(pending: list[Ref]) -> _Plan:
            return await self._plan_write(pending, [by_ref[r] for r in pending], mode, skip_exists)

        return await self._execute(refs, planner)

    async def delete(self, refs: Sequence[Ref], *, skip_not_exists: bool = False) -> Outcome:
        """Delete every named resource or none; refuses pools that still hold addresses."""
        pending = [Ref(r.cls, r.name, self._namespace(r.cls, r.namespace), r.resource_version) for r in refs]
        self._refuse_read_only(pending, "Delete")

        async def planner(todo: list[Ref]) -> _Plan:
            return await self._plan_delete(todo, skip_not_exists)

        return await self._execute(pending, planner)

    async def _execute(self, refs: list[Ref], planner: Callable[[list[Ref]], Awaitable[_Plan]]) -> Outcome:
        """Plan, then commit all-or-nothing (one transaction, or an intent when larger); on a lost
        race, re-plan on fresh data and retry (bounded, with jitter)."""
        await self._recover()
        outcome = Outcome()
        conflicts = 0
        while True:
            plan = await planner(refs)
            try:
                if self._fits_one_txn(plan):
                    revision = await self._commit(plan, len(plan.refs)) if plan.refs else 0
                else:
                    revision = await self._commit_staged(plan)
            except Conflict as exc:
                conflicts += 1
                log.debug("resource_store.retry", reason=str(exc), attempt=conflicts)
                if conflicts >= self._attempts:
                    raise StoreError([f"gave up after {conflicts} conflicting concurrent writes; try again"]) from None
                await asyncio.sleep(random.uniform(0, min(0.2, 0.005 * 2**conflicts)))
                await self._recover()
                continue
            break
        outcome.skipped.extend(plan.skipped)
        sources = plan.sources or [None] * len(plan.refs)
        for ref, doc, kv, src in zip(plan.refs, plan.docs, plan.old, sources, strict=True):
            if doc is not None:
                outcome.done.add(functools.partial(self._with_version, ref, revision, doc, src))
            elif kv is not None:
                outcome.done.add(functools.partial(self._decode, ref.cls, kv))
        outcome.revision = revision
        return outcome

    def _fits_one_txn(self, plan: _Plan) -> bool:
        if len(plan.refs) + len(plan.guards) > MAX_TXN_OPS:
            return False
        docs = zip(plan.refs, plan.docs, strict=True)
        return sum(len(r.key) + (len(encode(d)) if d is not None else 0) for r, d in docs) <= staged.MAX_BYTES

    async def _commit_staged(self, plan: _Plan) -> int:
        ops = [
            staged.StagedOp(ref.key, doc, rev, kv.value if kv is not None else None)  # stored bytes: no re-encode
            for ref, doc, (_, rev), kv in zip(plan.refs, plan.docs, plan.compares, plan.old, strict=True)
        ]
        writer = staged.IntentWriter(self.ds, progress=self._progress)
        return await writer.write(ops, plan.guards)

    async def _recover(self) -> None:
        """Finish or roll back intents of writers that died (cheap when there are none)."""
        if (await self.ds.list(staged.RECORDS))[0]:
            await staged.recover(self.ds)

    async def modify(
        self,
        cls: type[Resource],
        name: str,
        namespace: str | None,
        mutate: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> Resource:
        """Read, change with ``mutate`` (a Calico-shaped dict), re-validate, write on revision.

        Used by ``label`` and ``patch``. A concurrent write makes the compare fail and the
        change is applied again to the fresh value, as ``kubectl patch`` does.
        """
        ref = Ref(cls, name, self._namespace(cls, namespace))
        self._refuse_read_only([ref], "Update")

        async def step() -> Resource:
            kv = await staged.get_resolved(self.ds, ref.key)
            if kv is None:
                raise NotFound([f"resource does not exist: {ref.label}"])
            current = self._decode(cls, kv).to_dict()
            _metadata(current)["resourceVersion"] = str(kv.mod_revision)
            changed = mutate(copy.deepcopy(current))
            md = _metadata(changed)
            for what, before in (("name", ref.name), ("namespace", ref.namespace)):
                if (cls.NAMESPACED or what == "name") and md.get(what, before) != before:
                    raise StoreError([f"{ref.label}: metadata.{what}: cannot be changed"])
            if changed.get("kind", cls.KIND) != cls.KIND:
                raise StoreError([f"{ref.label}: kind: cannot be changed"])
            md["resourceVersion"] = str(kv.mod_revision)
            res = _parse_named(changed, ref)
            try:
                outcome = await self.write([res], "replace")
            except UpdateConflict:
                raise Conflict(ref.key) from None
            return outcome.done[0]

        return await retry_on_conflict(step, attempts=self._attempts, what=f"update of {ref.label}")

    async def split_pool(self, old: Resource, parts: Sequence[Resource]) -> int:
        """``ipam split``: replace IPPool ``old`` by ``parts`` (its equal subnets) in ONE transaction.

        calicoctl disables the pool, creates the children one by one and deletes the parent, so a
        failure half-way leaves both; here the parent's delete and the children's creates land
        together or not at all (compare: the parent unchanged, the children absent, the pool guard).
        Existing blocks stay valid: each lies inside exactly one child.
        """
        refs = [Ref.of(p) for p in parts]
        old_ref = Ref(type(old), old.name)
        await self._recover()
        guards = await self._guards([old_ref])
        current = await self._current([old_ref.key, *(r.key for r in refs)])
        if current[0] is None or str(current[0].mod_revision) != str(old.metadata.resourceVersion):
            raise Conflict(old_ref.key)
        taken = [r.label for r, kv in zip(refs, current[1:], strict=True) if kv is not None]
        if taken:
            raise StoreError([f"resource already exists: {label}" for label in taken])
        compares = [mod_is(old_ref.key, current[0].mod_revision), *(mod_is(r.key, 0) for r in refs)]
        ops: list[Put | Delete] = [Delete(old_ref.key)]
        ops += [Put(r.key, self._stored_doc(p, None, r)) for r, p in zip(refs, parts, strict=True)]
        for key, rev in guards.items():
            compares.append(mod_is(key, rev))
            ops.append(Put(key, {"updated": now_rfc3339()}))
        result = await self.ds.txn(compares, ops)
        if not result.succeeded:
            raise Conflict(old_ref.key)
        log.info("resource_store.pool_split", pool=old.name, parts=[p.name for p in parts], revision=result.revision)
        return result.revision

    # -- planning -----------------------------------------------------------------------
    def _namespace(self, cls: type[Resource], namespace: str | None) -> str | None:
        if not cls.NAMESPACED:
            return None
        return namespace or DEFAULT_NAMESPACE

    async def _current(self, keys: Sequence[str]) -> list[KV | None]:
        """Current KV of each key: one range read per collection for large inputs, not one get
        per key. A key staged by a live intent (another apply in flight) is refused."""
        if len(keys) <= 64:
            kvs = list(await asyncio.gather(*(self.ds.get(k) for k in keys)))
        else:
            by_key: dict[str, KV] = {}
            for prefix in sorted({k.rsplit("/", 1)[0] + "/" for k in keys}):
                listed, _ = await self.ds.list(prefix)
                by_key.update((kv.key, kv) for kv in listed)
            kvs = [by_key.get(k) for k in keys]
        busy = sorted({i for kv in kvs if kv is not None and (i := _staged_intent(kv)) is not None})
        if busy:
            raise StoreError([f"another write is in progress on these resources (intent {', '.join(busy)}); try again"])
        return kvs

    async def _guards(self, refs: Sequence[Ref]) -> dict[str, int]:
        keys = sorted({guard_key(r.cls.PLURAL) for r in refs if r.cls.KIND in GUARDED_KINDS})
        kvs = await self._current(keys)
        return {k: (kv.mod_revision if kv else 0) for k, kv in zip(keys, kvs, strict=True)}

    async def _add_tier_guard(self, plan: _Plan) -> None:
        """Compare and bump the tiers' guard in this plan's commit. Read BEFORE the tier check that it
        protects: a racing writer that commits after this read makes our compare fail (and the whole
        plan is made again on fresh data)."""
        from datamodel.resources.calicopolicy import Tier

        key = guard_key(Tier.PLURAL)
        if key not in plan.guards:
            kv = (await self._current([key]))[0]
            plan.guards[key] = kv.mod_revision if kv else 0

    async def _plan_write(
        self, refs: list[Ref], resources: list[Resource], mode: WriteMode, skip_exists: bool
    ) -> _Plan:
        problems: list[str] = []
        guards = await self._guards(refs)
        olds = await self._current([r.key for r in refs])
        seen: dict[str, int] = {}
        plan = _Plan(refs=[], docs=[], compares=[], old=[], skipped=[], guards=guards)
        new_docs: list[tuple[Ref, dict[str, Any], dict[str, Any] | None]] = []
        for index, (ref, res, kv) in enumerate(zip(refs, resources, olds, strict=True), start=1):
            if ref.key in seen:
                problems.append(f"{ref.label}: appears twice in the input (documents {seen[ref.key]} and {index})")
                continue
            seen[ref.key] = index
            if mode == "create" and kv is not None:
                if skip_exists:
                    plan.skipped.append(ref)
                    continue
                problems.append(f"resource already exists: {ref.label}")
                continue
            if mode == "replace" and kv is None:
                problems.append(f"resource does not exist: {ref.label}")
                continue
            if kv is not None and ref.resource_version and ref.resource_version != str(kv.mod_revision):
                problems.append(
                    f"update conflict: {ref.label} has resourceVersion {kv.mod_revision}, "
                    f"the document has {ref.resource_version}"
                )
                continue
            old_doc = kv.json() if kv is not None else None
            doc = self._stored_doc(res, old_doc, ref)
            if kv is not None:
                problems.extend(f"{ref.label}: {p}" for p in res.check_update(self._decode(ref.cls, kv)))
            new_docs.append((ref, doc, old_doc))
            plan.refs.append(ref)
            plan.docs.append(doc)
            plan.compares.append((ref.key, kv.mod_revision if kv else 0))
            plan.old.append(kv)
            plan.sources.append(res)
        if any(_names_own_tier(ref, doc) for ref, doc, _ in new_docs):
            await self._add_tier_guard(plan)
        problems.extend(await self._collection_problems(new_docs))
        if problems:
            conflict_only = all(p.startswith("update conflict") for p in problems)
            raise (UpdateConflict if conflict_only else StoreError)(problems)
        return plan

    async def _plan_delete(self, refs: list[Ref], skip_not_exists: bool) -> _Plan:
        problems: list[str] = []
        guards = await self._guards(refs)
        olds = await self._current([r.key for r in refs])
        plan = _Plan(refs=[], docs=[], compares=[], old=[], skipped=[], guards=guards)
        seen: set[str] = set()
        pool_deletes: list[tuple[Ref, dict[str, Any]]] = []
        tier_deletes: list[Ref] = []
        for ref, kv in zip(refs, olds, strict=True):
            if ref.key in seen:
                continue
            seen.add(ref.key)
            if kv is None:
                if skip_not_exists:
                    plan.skipped.append(ref)
                else:
                    problems.append(f"resource does not exist: {ref.label}")
                continue
            if ref.resource_version and ref.resource_version != str(kv.mod_revision):
                problems.append(
                    f"update conflict: {ref.label} has resourceVersion {kv.mod_revision}, "
                    f"the document has {ref.resource_version}"
                )
                continue
            if ref.cls.KIND == "IPPool":
                pool_deletes.append((ref, kv.json()))
            if ref.cls.KIND == "Tier" and ref.name in ("default", "adminnetworkpolicy", "baselineadminnetworkpolicy"):
                problems.append(f"operation Delete is not supported on {ref.name}: Cannot delete {ref.name} tier"
                                " (one of Calico's fixed tiers)")
            elif ref.cls.KIND == "Tier":
                tier_deletes.append(ref)
            if ref.cls.KIND == "BGPConfiguration" and ref.name == "default":
                problems.append(
                    "BGPConfiguration default cannot be deleted: it holds the cluster-wide BGP settings"
                    " (change it with apply or patch instead)"
                )
            plan.refs.append(ref)
            plan.docs.append(None)
            plan.compares.append((ref.key, kv.mod_revision))
            plan.old.append(kv)
        problems.extend(await self._pools_delete_problems(pool_deletes))
        if tier_deletes:
            await self._add_tier_guard(plan)
        problems.extend(await self._tier_delete_problems(tier_deletes, {r.key for r in plan.refs}))
        if problems:
            raise StoreError(problems)
        return plan

    async def _tier_delete_problems(self, tiers: Sequence[Ref], deleting: set[str]) -> list[str]:
        """A Tier that a NetworkPolicy or GlobalNetworkPolicy still names cannot go, as Calico refuses
        it (its policies would fall to the end of the order); policies deleted in the same request
        do not count."""
        if not tiers:
            return []
        from datamodel.resources.calicopolicy import CalicoNetworkPolicy, GlobalNetworkPolicy

        names = {r.name for r in tiers}
        used: set[str] = set()
        for cls in (CalicoNetworkPolicy, GlobalNetworkPolicy):
            kvs, _ = await staged.read_resolved(self.ds, resource_prefix(cls.PLURAL))
            for kv in kvs:
                if kv.key in deleting:
                    continue
                try:
                    tier = str((kv.json().get("spec") or {}).get("tier") or "default")
                except (ValueError, AttributeError):
                    continue
                if tier in names:
                    used.add(tier)
        return [f"operation delete is not supported on {r.name}: Cannot delete a non-empty tier"
                for r in tiers if r.name in used]

    def _stored_doc(self, res: Resource, old: dict[str, Any] | None, ref: Ref) -> dict[str, Any]:
        """The value to store: the resource's Calico dict with identity metadata settled."""
        doc = res.to_dict()  # a fresh dict already: no copy needed
        md = _metadata(doc)
        md.pop("resourceVersion", None)
        md["name"] = ref.name
        if ref.cls.NAMESPACED:
            md["namespace"] = ref.namespace
        old_md = (old or {}).get("metadata") or {}
        md["uid"] = old_md.get("uid") or _new_uid()
        md["creationTimestamp"] = old_md.get("creationTimestamp") or now_rfc3339()
        return doc

    async def _collection_problems(
        self, new_docs: Sequence[tuple[Ref, dict[str, Any], dict[str, Any] | None]]
    ) -> list[str]:
        """Rules that look at the whole collection: for now, IPPool cidrs must not overlap.

        A sorted sweep (O(n log n) plus the clashes), so applying 10,000 pools does not compare
        every pair; each network is parsed once.
        """
        problems = await self._tier_problems(new_docs)
        pools = [(ref, doc) for ref, doc, _ in new_docs if ref.cls.KIND == "IPPool"]
        if not pools:
            return problems
        cls = pools[0][0].cls
        kvs, _ = await staged.read_resolved(self.ds, resource_prefix(cls.PLURAL))
        final: dict[str, str] = {}
        for kv in kvs:
            try:
                final[kv.key.rsplit("/", 1)[-1]] = str(kv.json()["spec"]["cidr"])
            except (ValueError, KeyError, TypeError):
                log.warning("resource_store.bad_stored_pool", key=kv.key)
        order: dict[str, int] = {}
        for ref, doc in pools:
            final[ref.name] = str(doc["spec"]["cidr"])
            order.setdefault(ref.name, len(order))
        return problems + [
            f"IPPool {name}: spec.cidr: {final[name]} overlaps IPPool {other} ({final[other]})"
            for name, other in _overlapping_pairs(final, order)
        ]

    async def _tier_problems(self, new_docs: Sequence[tuple[Ref, dict[str, Any], dict[str, Any] | None]]) -> list[str]:
        """A Calico policy must name a tier that exists (Calico's fixed tiers always do), in the
        datastore or in the same input, as Calico refuses it otherwise."""
        from datamodel.resources.calicopolicy import FIXED_TIERS, Tier

        policies = [(ref, str((doc.get("spec") or {}).get("tier") or "default")) for ref, doc, _ in new_docs
                    if ref.cls.KIND in _TIERED_KINDS and ref.cls.GROUP_VERSION == Tier.GROUP_VERSION]
        unknown = {tier for _, tier in policies if tier not in FIXED_TIERS}
        if not unknown:
            return []
        known = {ref.name for ref, _, _ in new_docs if ref.cls.KIND == "Tier"}
        kvs, _ = await staged.read_resolved(self.ds, resource_prefix(Tier.PLURAL))
        known |= {kv.key.rsplit("/", 1)[-1] for kv in kvs}
        return [f"{ref.cls.KIND} {ref.name}: spec.tier: tier {tier!r} does not exist (create the Tier first)"
                for ref, tier in policies if tier not in FIXED_TIERS and tier not in known]

    async def _pools_delete_problems(self, pools: Sequence[tuple[Ref, dict[str, Any]]]) -> list[str]:
        """Pools that still hold addresses cannot go; the blocks are read once for all of them."""
        cidrs = [str((doc.get("spec") or {}).get("cidr", "")) for _, doc in pools]
        wanted = [c for c in cidrs if c]
        if not wanted:
            return []
        if self._allocation_count is not None:
            counts = {c: await self._allocation_count(c) for c in wanted}
        else:
            from ipam import IPAMClient

            counts = await IPAMClient(self.ds).pool_allocation_counts(wanted)
        problems: list[str] = []
        for (ref, doc), cidr in zip(pools, cidrs, strict=True):
            if cidr:
                problems.extend(self._pool_delete_problem(ref, doc, counts[cidr]))
        return problems

    def _pool_delete_problem(self, ref: Ref, doc: dict[str, Any], count: int) -> list[str]:
        if count <= 0:
            return []
        noun = "address" if count == 1 else "addresses"
        disabled = bool((doc.get("spec") or {}).get("disabled"))
        first = "release them first" if disabled else "disable it (spec.disabled: true) and release them first"
        return [f"IPPool {ref.name} still has {count} allocated {noun}: {first}"]

    # -- commit -------------------------------------------------------------------------
    async def _commit(self, plan: _Plan, n: int) -> int:
        """Send the first ``n`` operations of ``plan`` as one transaction; Conflict if a compare fails."""
        refs = plan.refs[:n]
        compares = [mod_is(k, rev) for k, rev in plan.compares[:n]]
        ops: list[Put | Delete] = [
            Delete(ref.key) if doc is None else Put(ref.key, doc) for ref, doc in zip(refs, plan.docs[:n], strict=True)
        ]
        for key, rev in plan.guards.items():
            compares.append(mod_is(key, rev))
            ops.append(Put(key, {"updated": now_rfc3339()}))
        result = await self.ds.txn(compares, ops)
        if not result.succeeded:
            log.debug("resource_store.conflict", keys=[r.key for r in refs])
            raise Conflict(", ".join(r.key for r in refs))
        log.info("resource_store.committed", count=len(refs), revision=result.revision)
        return result.revision


#: Kinds whose spec.tier names a Tier.
_TIERED_KINDS = ("NetworkPolicy", "GlobalNetworkPolicy", "StagedNetworkPolicy", "StagedGlobalNetworkPolicy")


def _names_own_tier(ref: Ref, doc: dict[str, Any]) -> bool:
    """A Calico policy in a tier other than Calico's fixed ones (which can never be deleted)."""
    from datamodel.resources.calicopolicy import FIXED_TIERS, Tier

    if ref.cls.KIND not in _TIERED_KINDS or ref.cls.GROUP_VERSION != Tier.GROUP_VERSION:
        return False
    return str((doc.get("spec") or {}).get("tier") or "default") not in FIXED_TIERS

def _new_uid() -> str:
    """A random (version 4) UUID string, as uuid.uuid4() gives, without building a UUID object (a
    measurable share of a 10,000-document apply)."""
    h = bytearray(os.urandom(16))
    h[6] = (h[6] & 0x0F) | 0x40
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _staged_intent(kv: KV) -> str | None:
    if staged.ENVELOPE.encode() not in kv.value:
        return None
    try:
        return staged.staged_intent(kv.json())
    except ValueError:
        return None


def _overlapping_pairs(final: dict[str, str], order: dict[str, int]) -> list[tuple[str, str]]:
    """(written pool, other pool) for every overlap involving a pool being written, in input order.

    Two CIDRs overlap exactly when one contains the other, so after sorting by (family, first
    address, prefix length) each pool only meets the still-open supernets before it.
    """
    from datamodel.resources.common import cidr_span

    nets = [(*cidr_span(cidr), name) for name, cidr in final.items()]
    nets.sort()
    stack: list[tuple[int, int, str]] = []
    pairs: list[tuple[str, str]] = []
    for version, start, _, end, name in nets:
        while stack and (stack[-1][0] != version or stack[-1][1] < start):
            stack.pop()
        for _, _, other in stack:
            if name not in order and other not in order:
                continue
            a, b = sorted((name, other), key=lambda n: (order.get(n, len(order)), n))
            pairs.append((a, b))
        stack.append((version, end, name))
    pairs.sort(key=lambda p: (order.get(p[0], len(order)), order.get(p[1], len(order)), p[1]))
    return pairs


_SOURCE = "\x00resource"


def _parse_named(doc: dict[str, Any], ref: Ref) -> Resource:
    """Validate a dict that came from no file (a patch result, a stored value).

    The parser names a document's file and index; here there is none, so its problem lines
    are rewritten to start with the resource itself: ``IPPool pool-b: spec.bogus: ...``.
    """
    from datamodel.resources import ResourceError, parse_resource

    try:
        return parse_resource(doc, _SOURCE, 0)
    except ResourceError as exc:
        lines = []
        for line in exc.problems:
            if line.startswith(_SOURCE):
                rest = line[len(_SOURCE) :].removeprefix(" document 0")
                if rest.startswith(" (") and "): " in rest:
                    rest = rest[rest.index("): ") + 3 :]
                line = f"{ref.label}: {rest.lstrip(': ')}"
            lines.append(line)
        raise StoreError(lines) from None
