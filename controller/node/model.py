"""The agent's one validated model of the datastore: the validation filter in front of everything.

Why one model (Felix's ``calc/validation_filter.go`` shape): IPAM, routes, tunnels, NAT and BGP
used to read the same keys through four readers with four sets of defaults, so an IPPool that
failed validation was dropped by BGP and still used for allocation and routing. Now every watch
item goes through :meth:`Model.apply`, which parses it with the same ``datamodel`` rules
``tabbyctl apply`` uses (schema validity only: *support policy*, fields Tabby refuses at apply
time, is never applied on read) and hands consumers parsed, defaulted objects.

A value that fails validation:

* when an earlier version of that key was accepted, the last good version stays in use (rules get
  stricter over releases: an IPPool with live pods vanishing from IPAM, routing and BGP would be a
  blackhole) and an alarm is raised: logged once (field and reason) and listed in
  ``tabbyctl node status`` (:meth:`Model.invalid_report`);
* when it was never valid, it is ignored by every consumer alike (and listed too).

Documents written without ``apiVersion``/``kind``/``metadata.name`` (older writers, hand-made
keys) get them from the key, the way Calico's etcd backend derives them.

:meth:`Model.apply` returns only real changes as :class:`Update` values (a resync is diffed against
the previous state), which is what the calculation graph (controller/node/graph.py) consumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog

from datamodel.resources import (
    API_VERSION,
    BGPConfiguration,
    BGPPeer,
    IPAMConfiguration,
    IPPool,
    Node,
    Resource,
    ResourceError,
    all_kinds,
)
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from datastore import KV, WatchEvent, WatchResync, staged
from datastore.client import encode
from datastore.keys import AFFINITIES, BLOCKS, GUARDS, HANDLES, RESOURCES, key_to_cidr
from ipam.block import Block, BlockFormatError

log = structlog.get_logger("tabby.node.model")

#: The kind name of IPAM blocks in the model (not a Calico resource, but validated the same way).
BLOCK = "Block"

_PLURALS: dict[str, type[Resource]] = {cls.PLURAL: cls for cls in all_kinds()}
#: Keys the agent never needs: handles are many (one per pod), guards and affinities are IPAM's.
_SKIPPED = (HANDLES, GUARDS, AFFINITIES)


@dataclass(frozen=True)
class Update:
    """One accepted change of the model: ``old`` None = created, ``new`` None = deleted."""

    key: str
    kind: str
    old: Any
    new: Any


@dataclass
class Invalid:
    """A key whose current value failed validation; ``kept`` = its last good version is still in use."""

    key: str
    kind: str
    revision: int
    problems: list[str]
    kept: bool

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "revision": self.revision, "problems": self.problems,
                "kept_last_good": self.kept}


@dataclass
class _Entry:
    raw: bytes
    obj: Any


def kind_of(key: str) -> tuple[str, type[Resource] | None] | None:
    """(kind name, class) for a key the model holds, None for keys it skips."""
    if key.startswith(BLOCKS):
        return BLOCK, None
    if key.startswith(_SKIPPED) or not key.startswith(RESOURCES):
        return None
    plural = key[len(RESOURCES):].split("/", 1)[0]
    cls = _PLURALS.get(plural)
    if cls is None:
        return None
    return cls.KIND, cls


def _with_identity(doc: dict[str, Any], key: str, cls: type[Resource]) -> dict[str, Any]:
    """Fill apiVersion/kind/metadata.name(/namespace) from the key when a writer left them out."""
    rest = key[len(RESOURCES) + len(cls.PLURAL) + 1:]
    namespace, _, name = rest.rpartition("/") if cls.NAMESPACED else ("", "", rest)
    if "apiVersion" in doc and "kind" in doc and "name" in (doc.get("metadata") or {}):
        return doc
    doc = dict(doc)
    doc.setdefault("apiVersion", API_VERSION)
    doc.setdefault("kind", cls.KIND)
    meta = dict(doc.get("metadata") or {})
    meta.setdefault("name", name)
    if cls.NAMESPACED and namespace:
        meta.setdefault("namespace", namespace)
    doc["metadata"] = meta
    return doc


_ENVELOPE = staged.ENVELOPE.encode()


def _is_staged(kv: KV) -> bool:
    return _ENVELOPE in kv.value


def _plain(key: str, value: Any, mod_revision: int) -> KV | None:
    """A KV carrying what a staged key reads as (None: absent)."""
    return None if value is None else KV(key, encode(value), mod_revision)


def validate(key: str, raw: bytes) -> Any:
    """Parse and default one stored value; raises ValueError (one line per problem) when invalid."""
    found = kind_of(key)
    if found is None:
        raise ValueError(f"{key}: not a key the agent reads")
    kind, cls = found
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{key}: not JSON: {exc}") from None
    if kind == BLOCK:
        try:
            block = Block.from_json(doc)
        except BlockFormatError as exc:
            raise ValueError(f"{key}: {exc}") from None
        if block.cidr != key_to_cidr(key[len(BLOCKS):]):
            raise ValueError(f"{key}: cidr: {block.cidr} does not match the key")
        return block
    assert cls is not None
    if not isinstance(doc, dict):
        raise ValueError(f"{key}: a resource must be a JSON object")
    try:
        return cls.model_validate(_with_identity(doc, key, cls))
    except ResourceError as exc:
        raise ValueError(str(exc)) from None
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        from datamodel.resources import format_validation_error

        lines = format_validation_error(exc, key, cls) if hasattr(exc, "errors") else [f"{key}: {exc}"]
        raise ValueError("\n".join(lines)) from None


class Model:
    """Key -> parsed, defaulted object for everything the agent reads; the one source of truth."""

    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self._entries: dict[str, _Entry] = {}
        self.by_kind: dict[str, dict[str, Any]] = {}
        self.invalid: dict[str, Invalid] = {}
        #: This node's WorkloadEndpoints by key: CNI DEL/CHECK/GC look there, never at the whole cluster.
        self._local_weps: dict[str, WorkloadEndpoint] = {}
        #: every key's latest mod_revision (valid or not): writers compare against it instead of reading
        self.revisions: dict[str, int] = {}
        #: values staged by a large apply, held until its commit (datastore/staged.py)
        self._staged = staged.StagedFilter()
        #: keys whose stored value is a large apply's staging envelope (pending or committed, until its
        #: clean-up rewrites them): :meth:`document` gives writers nothing to compare against there
        self.held: set[str] = set()
        self.revision = 0
        self.synced = False
        self._log = log.bind(node=nodename)

    # -- feeding ---------------------------------------------------------------------------------
    def prevalidate(self, kvs: list[KV]) -> dict[str, Any]:
        """Validate the values of a resync that differ from what the model holds: key -> parsed object
        or the ValueError. Pure with respect to the model (it only reads it), so the agent runs it in a
        worker thread while the event loop keeps answering (150,000 endpoints take seconds to parse)."""
        out: dict[str, Any] = {}
        for kv in kvs:
            if kind_of(kv.key) is None:
                continue
            if _is_staged(kv):
                continue  # resolved (and validated) by apply(), against the resync's intent records
            current = self._entries.get(kv.key)
            if current is not None and current.raw == kv.value:
                continue
            try:
                out[kv.key] = validate(kv.key, kv.value)
            except ValueError as exc:
                out[kv.key] = exc
        return out

    def apply(self, item: WatchEvent | WatchResync, prevalidated: dict[str, Any] | None = None) -> list[Update]:
        """Fold one watch item in; the accepted changes (a resync is diffed, never merged).
        ``prevalidated``: :meth:`prevalidate`'s result for this item (computed off the event loop)."""
        if isinstance(item, WatchResync):
            updates: list[Update] = []
            seen: set[str] = set()
            for kv in self._resync_visible(item.kvs):
                seen.add(kv.key)
                updates.extend(self._put(kv, prevalidated))
            for key in [k for k in self._entries if k not in seen]:
                updates.extend(self._delete(key))
            for key in [k for k in self.invalid if k not in seen]:
                del self.invalid[key]
            self.revision = item.revision
            self.synced = True
            return updates
        self.revision = max(self.revision, item.kv.mod_revision)
        key = item.kv.key
        if key.startswith(staged.RECORDS) or (item.kind == "put" and _is_staged(item.kv)):
            # A large apply (datastore/staged.py): its keys are held until its commit, then applied
            # together, so no consumer ever acts on half a bundle.
            if not key.startswith(staged.RECORDS):
                self.revisions[key] = item.kv.mod_revision
                self.held.add(key)
            try:
                value = item.kv.json() if item.kind == "put" else None
                released = self._staged.feed(key, value)
            except (ValueError, KeyError, TypeError, AttributeError):
                released = []
            updates = []
            for rkey, rvalue in released:
                if kind_of(rkey) is None:
                    continue
                kv = _plain(rkey, rvalue, self.revisions.get(rkey, item.kv.mod_revision))
                if kv is None:
                    self.invalid.pop(rkey, None)
                    updates.extend(self._delete(rkey))
                else:
                    updates.extend(self._put(kv))
            return updates
        self.held.discard(key)  # a plain value (or none): the envelope, if any, is gone
        if kind_of(key) is None:
            return []
        if item.kind == "delete":
            self.invalid.pop(key, None)
            return self._delete(key)
        return self._put(item.kv)

    def _resync_visible(self, kvs: list[KV]) -> list[KV]:
        """A resync's keys the model holds, staged values read against the resync's intent records:
        committed -> the new value; pending -> the previous value, the new one held until the commit."""
        self._staged = staged.StagedFilter()
        self.held = set()
        for kv in kvs:
            if kv.key.startswith(staged.RECORDS):
                try:
                    self._staged.states[kv.key[len(staged.RECORDS):]] = str(kv.json().get("state"))
                except (ValueError, AttributeError):
                    continue
        out = []
        for kv in kvs:
            if kind_of(kv.key) is None:
                continue
            if not _is_staged(kv):
                out.append(kv)
                continue
            self.held.add(kv.key)
            try:
                value = kv.json()
            except ValueError:
                out.append(kv)  # not JSON: validation reports it
                continue
            intent = staged.staged_intent(value)
            if intent is not None and self._staged.states.get(intent) != staged.COMMITTED:
                meta = value[staged.ENVELOPE]
                self._staged.held.setdefault(intent, {})[kv.key] = None if meta.get("delete") else value.get("value")
            visible = _plain(kv.key, staged.resolve(value, self._staged.states), kv.mod_revision)
            if visible is not None:
                out.append(visible)
        return out

    def _put(self, kv: KV, prevalidated: dict[str, Any] | None = None) -> list[Update]:
        found = kind_of(kv.key)
        assert found is not None
        kind = found[0]
        current = self._entries.get(kv.key)
        self.revisions[kv.key] = kv.mod_revision
        if current is not None and current.raw == kv.value:
            return []
        try:
            obj = prevalidated.get(kv.key) if prevalidated is not None else None
            if obj is None:
                obj = validate(kv.key, kv.value)
            elif isinstance(obj, ValueError):
                raise obj
        except ValueError as exc:
            problems = str(exc).splitlines() or [str(exc)]
            before = self.invalid.get(kv.key)
            self.invalid[kv.key] = Invalid(kv.key, kind, kv.mod_revision, problems, kept=current is not None)
            if before is None or before.problems != problems:
                # once per key and reason: a resync or an unchanged rewrite does not repeat it
                self._log.warning("model.invalid", key=kv.key, kind=kind, revision=kv.mod_revision,
                                  problem=problems[0], problems=len(problems),
                                  action="keeping the last good version" if current is not None else "ignored")
            return []
        if self.invalid.pop(kv.key, None) is not None:
            self._log.info("model.valid_again", key=kv.key, kind=kind, revision=kv.mod_revision)
        if current is not None and current.obj == obj:
            current.raw = kv.value  # the same resource written again in another form (a staged apply's cleanup)
            return []
        self._entries[kv.key] = _Entry(kv.value, obj)
        self.by_kind.setdefault(kind, {})[kv.key] = obj
        if isinstance(obj, WorkloadEndpoint):
            if obj.spec.node == self.nodename:
                self._local_weps[kv.key] = obj
            else:
                self._local_weps.pop(kv.key, None)
        old = current.obj if current is not None else None
        return [Update(kv.key, kind, old, obj)]

    def _delete(self, key: str) -> list[Update]:
        self.revisions.pop(key, None)
        entry = self._entries.pop(key, None)
        if entry is None:
            return []
        found = kind_of(key)
        assert found is not None
        self.by_kind.get(found[0], {}).pop(key, None)
        self._local_weps.pop(key, None)
        return [Update(key, found[0], entry.obj, None)]

    # -- views (typed) -----------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        entry = self._entries.get(key)
        return entry.obj if entry is not None else None

    def document(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """The accepted document at ``key`` as stored (JSON) and the key's latest mod_revision (0: absent).

        For writers that update a document in place with a compare (the CNI handlers' endpoint
        writes): they keep fields they do not own (labels set with ``tabbyctl label``).

        A key a large apply holds (:attr:`held`) reads as ``(None, 0)``: its mod_revision is the
        envelope's, so a compare against it would succeed and the write would land inside the
        envelope. A compare on 0 fails (the key exists), and the writer re-reads with
        ``staged.get_for_update``, which waits out a live intent.
        """
        if key in self.held:
            return None, 0
        entry = self._entries.get(key)
        if entry is None:
            return None, 0
        try:
            doc = json.loads(entry.raw)
        except ValueError:
            return None, 0
        return (doc if isinstance(doc, dict) else None), self.revisions.get(key, 0)

    def of_kind(self, kind: str) -> dict[str, Any]:
        return self.by_kind.get(kind, {})

    def pools(self) -> list[IPPool]:
        return [p for _, p in sorted(self.of_kind(IPPool.KIND).items())]

    def nodes(self) -> dict[str, Node]:
        return {n.name: n for n in self.of_kind(Node.KIND).values()}

    def node(self, name: str) -> Node | None:
        from datastore.keys import resource_key

        obj = self.get(resource_key(Node.PLURAL, name))
        return obj if isinstance(obj, Node) else None

    def blocks(self) -> dict[str, Block]:
        return {b.cidr: b for b in self.of_kind(BLOCK).values()}

    def bgp_configurations(self) -> list[BGPConfiguration]:
        return [c for _, c in sorted(self.of_kind(BGPConfiguration.KIND).items())]

    def bgp_peers(self) -> list[BGPPeer]:
        return [p for _, p in sorted(self.of_kind(BGPPeer.KIND).items())]

    def ipam_configuration(self) -> IPAMConfiguration | None:
        for obj in self.of_kind(IPAMConfiguration.KIND).values():
            if obj.name == "default":
                return obj  # type: ignore[no-any-return]
        return None

    def workload_endpoints(self) -> dict[str, WorkloadEndpoint]:
        return self.of_kind(WorkloadEndpoint.KIND)

    def local_weps(self) -> dict[str, WorkloadEndpoint]:
        """This node's WorkloadEndpoints by key (an index: O(local pods), not O(cluster))."""
        return dict(self._local_weps)

    def find_wep(self, container_id: str, endpoint: str | None = None) -> tuple[str, WorkloadEndpoint] | None:
        for key, wep in self.local_weps().items():
            if wep.spec.containerID == container_id and (endpoint is None or wep.spec.endpoint == endpoint):
                return key, wep
        return None

    # -- the same filter for a fresh read (IPAM's "read again before failing") ---------------------
    def filter(self, key: str, raw: bytes) -> Any:
        """Validate a value read outside the watch with the same rules: the parsed object, else the
        last good version the model holds, else None (never valid: ignored like in the model)."""
        try:
            return validate(key, raw)
        except ValueError:
            return self.get(key)

    def invalid_report(self) -> list[dict[str, Any]]:
        """For ``tabbyctl node status``: every key whose current value the agent does not use."""
        return [inv.to_json() for _, inv in sorted(self.invalid.items())]


def counts(model: Model) -> dict[str, int]:
    """Objects per kind, for logs."""
    return {kind: len(objs) for kind, objs in sorted(model.by_kind.items())}
