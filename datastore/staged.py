"""All-or-nothing writes of any size: intents, staged values, one commit marker, recovery.

Why: etcd refuses a transaction over ``--max-txn-ops`` (128) operations or about 1.5 MiB, but a
``tabbyctl apply`` of 10,000 documents must still land entirely or not at all, even if the
writer is SIGKILLed half-way. The protocol (documented in docs/datastore.md):

1. **Intent.** The writer grants a lease (TTL :data:`OWNER_TTL`), writes ``intents/owner/<id>``
   on it (alive while the writer is), the key list in chunks ``intents/keys/<id>/<n>`` and then
   the record ``intents/record/<id>`` = ``{"state": "pending", ...}``.
2. **Stage.** Every target key is written, batch by batch (<= 127 operations, <= 1 MiB each, each
   batch comparing the key's planned mod_revision), with an *envelope*
   ``{"__staged__": {"intent": id, "prev": <old value or null>, "delete": bool}, "value": new}``.
3. **Commit.** ONE transaction compares the record (still pending, unchanged) and the caller's
   guard keys, and sets ``state: committed``. That single write is the moment the whole bundle
   becomes visible.
4. **Clean up.** Staged keys are rewritten as plain values (or deleted), then the record, the
   key chunks and the owner key go.

Readers call :func:`resolve` (or :class:`StagedFilter` on a watch): a staged value reads as its
new value once its intent is committed, and as its previous value (``None`` = absent) while the
intent is pending, rolled back, or unknown. So no reader ever sees half a bundle.

Recovery (:func:`recover`, run by the next writer): an intent whose owner key is gone (the lease
expired: the writer died) is rolled *forward* (cleanup) when committed and rolled *back* (every
key staged by it gets its previous value again) when pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from datastore.client import KV, Datastore, Delete, Put, encode, mod_is
from datastore.errors import Conflict

log = structlog.get_logger("tabby.datastore.staged")

INTENTS = "intents/"
RECORDS = INTENTS + "record/"
OWNERS = INTENTS + "owner/"
KEY_CHUNKS = INTENTS + "keys/"
ENVELOPE = "__staged__"
#: Seconds a dead writer's intent stays untouchable before the next writer recovers it.
OWNER_TTL = 10
MAX_OPS = 127
MAX_BYTES = 1_000_000
KEYS_PER_CHUNK = 2000

PENDING = "pending"
COMMITTED = "committed"


def is_staged(value: Any) -> bool:
    """Whether a decoded value is a staging envelope."""
    return isinstance(value, dict) and ENVELOPE in value


def kv_is_staged(kv: KV) -> bool:
    """Whether a raw KV holds a staging envelope (an intent in flight, or committed and not yet cleaned
    up). A compare-and-swap on its mod_revision would succeed, so a writer other than the intent's own
    must leave such a key alone (and act on the plain value that the intent's clean-up or roll-back
    writes, which its watch then sees)."""
    if ENVELOPE.encode() not in kv.value:
        return False
    try:
        return is_staged(kv.json())
    except ValueError:
        return False


def staged_intent(value: Any) -> str | None:
    """The intent id of a staged value, None for a plain one."""
    return str(value[ENVELOPE]["intent"]) if is_staged(value) else None


def resolve(value: Any, states: Mapping[str, str]) -> Any | None:
    """The value a reader must see: plain values as they are; a staged value as its new value
    when its intent is committed, else as its previous value (None means: the key is absent)."""
    if not is_staged(value):
        return value
    meta = value[ENVELOPE]
    if states.get(str(meta["intent"])) == COMMITTED:
        return None if meta.get("delete") else value.get("value")
    return meta.get("prev")


def resolve_kv(kv: KV, states: Mapping[str, str]) -> KV | None:
    """:func:`resolve` for a KV (mod_revision kept); None when the key reads as absent."""
    value = kv.json()
    if not is_staged(value):
        return kv
    visible = resolve(value, states)
    if visible is None:
        return None
    return KV(kv.key, encode(visible), kv.mod_revision, kv.create_revision, kv.version, kv.lease)


async def intent_states(ds: Datastore) -> dict[str, str]:
    """{intent id: state} of every intent record in the datastore."""
    kvs, _ = await ds.list(RECORDS)
    return {kv.key[len(RECORDS) :]: str(kv.json().get("state")) for kv in kvs}


async def read_resolved(ds: Datastore, prefix: str) -> tuple[list[KV], int]:
    """``ds.list(prefix)`` as readers must see it (staged values resolved, absent ones dropped)."""
    kvs, revision = await ds.list(prefix)
    if not any(ENVELOPE.encode() in kv.value for kv in kvs):
        return kvs, revision
    states = await intent_states(ds)
    out = [r for r in (resolve_kv(kv, states) for kv in kvs) if r is not None]
    return out, revision


async def get_resolved(ds: Datastore, key: str) -> KV | None:
    """``ds.get(key)`` as readers must see it."""
    kv = await ds.get(key)
    if kv is None or ENVELOPE.encode() not in kv.value:
        return kv
    intent = staged_intent(kv.json())
    record = await ds.get(RECORDS + str(intent))
    states = {str(intent): str(record.json().get("state"))} if record is not None else {}
    return resolve_kv(kv, states)


async def get_for_update(ds: Datastore, key: str) -> KV | None:
    """``ds.get(key)`` for a read-modify-write that compares the key's mod_revision.

    A key a large apply holds staged raises :class:`Conflict`: the compare would succeed and the write
    would land inside the envelope. The caller retries, and then reads the plain value the intent's
    clean-up (or roll-back) wrote. An intent whose writer is gone is recovered first, as the next
    writer recovers it, so a retry loop is not held up by a dead tabbyctl."""
    kv = await ds.get(key)
    if kv is None or not kv_is_staged(kv):
        return kv
    intent = staged_intent(kv.json())
    if intent is not None and await ds.get(OWNERS + intent) is None:
        await recover(ds)
        kv = await ds.get(key)
        if kv is None or not kv_is_staged(kv):
            return kv
    raise Conflict(f"{key} is held by intent {intent} (a large apply in flight)")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedOp:
    """One key of a bundle: ``value`` None deletes; ``expected`` is the planned mod_revision (0: absent);
    ``prev`` the value readers see until the commit (None: absent)."""

    key: str
    value: Any
    expected: int
    prev: Any = None


def _batches(ops: Sequence[Any], size_of: Any) -> Iterable[list[Any]]:
    batch: list[Any] = []
    used = 0
    for op in ops:
        size = size_of(op)
        if batch and (len(batch) >= MAX_OPS or used + size > MAX_BYTES):
            yield batch
            batch, used = [], 0
        batch.append(op)
        used += size
    if batch:
        yield batch


def _staged_size(op: StagedOp) -> int:
    return len(op.key) + len(encode(op.value or {})) + len(encode(op.prev or {})) + 100


@dataclass(frozen=True)
class _Encoded:
    """A StagedOp with its value and envelope encoded once (a 10,000-document apply used to encode
    each value five times: sizes, envelope, clean-up)."""

    op: StagedOp
    value: bytes | None
    envelope: bytes

    @property
    def key(self) -> str:
        return self.op.key


def _encode_op(op: StagedOp, intent: str) -> _Encoded:
    value = None if op.value is None else encode(op.value)
    prev = b"null" if op.prev is None else encode(op.prev)
    # Byte for byte what encode() gives for the envelope dict (sorted keys, compact separators), built
    # around the already encoded values instead of encoding them again.
    meta = b'{"delete":' + (b"true" if value is None else b"false") + b',"intent":' + json.dumps(intent).encode()
    envelope = (
        b'{"' + ENVELOPE.encode() + b'":' + meta + b',"prev":' + prev + b'},"value":'
        + (value if value is not None else b"null") + b"}"
    )
    return _Encoded(op, value, envelope)


@dataclass
class IntentWriter:
    """Writes one bundle with the protocol of the module docstring; ``progress(done, total)`` is
    called after every staged batch (tabbyctl shows it on a terminal)."""

    ds: Datastore
    progress: Any = None
    intent: str = field(default_factory=lambda: uuid.uuid4().hex)
    _lease: int = 0
    _keepalive: asyncio.Task[None] | None = None

    async def write(self, ops: Sequence[StagedOp], guards: Mapping[str, int]) -> int:
        """Stage, commit, clean up; returns the commit revision. Conflict if a compare fails
        (everything staged so far is rolled back first, so nothing is visible)."""
        await self._begin(ops)
        staged: list[StagedOp] = []
        revisions: dict[str, int] = {}  # key -> mod_revision of its staged value

        encoded = [_encode_op(o, self.intent) for o in ops]

        async def stage(batch: list[_Encoded]) -> None:
            compares = [mod_is(e.key, e.op.expected) for e in batch]
            puts = [Put(e.key, e.envelope) for e in batch]
            result = await self.ds.txn(compares, puts)
            if not result.succeeded:
                raise Conflict(f"a key of intent {self.intent} changed during staging")
            staged.extend(e.op for e in batch)
            revisions.update((e.key, result.revision) for e in batch)
            if self.progress is not None:
                self.progress(len(staged), len(ops))

        try:
            # Batches touch disjoint keys and each compares its own, so they may be in flight together:
            # PIPELINE transactions at once instead of one round trip after another.
            await _pipelined(stage, list(_batches(encoded, lambda e: len(e.key) + len(e.envelope) + 50)))
            record = await self.ds.get(RECORDS + self.intent)
            assert record is not None
            commit = [mod_is(RECORDS + self.intent, record.mod_revision)]
            commit += [mod_is(k, rev) for k, rev in guards.items()]
            done = record.json() | {"state": COMMITTED}
            ops_commit: list[Put | Delete] = [Put(RECORDS + self.intent, done)]
            ops_commit += [Put(k, {"updated": time.time(), "intent": self.intent}) for k in guards]
            result = await self.ds.txn(commit, ops_commit)
            if not result.succeeded:
                raise Conflict(f"intent {self.intent}: a guard changed before the commit")
        except BaseException:
            with contextlib.suppress(Exception):
                # Every key of the bundle: a batch whose reply was lost may have landed; _rewrite only
                # touches keys that still carry this intent's envelope.
                await _roll_back(self.ds, self.intent, [o.key for o in ops])
            await self._end()
            raise
        log.info("staged.committed", intent=self.intent, keys=len(ops), revision=result.revision)
        await self._finish(encoded, revisions)
        await self._end()
        return result.revision

    async def _finish(self, ops: Sequence[_Encoded], revisions: Mapping[str, int]) -> None:
        """Clean up without reading back: each key still holds our staged value at the revision
        the staging transaction gave it (no one else writes a key a live intent holds)."""

        async def clean(batch: list[_Encoded]) -> None:
            compares = [mod_is(e.key, revisions[e.key]) for e in batch]
            writes: list[Put | Delete] = [Delete(e.key) if e.value is None else Put(e.key, e.value) for e in batch]
            result = await self.ds.txn(compares, writes)
            if not result.succeeded:  # someone touched a key: fall back to the careful path
                await _rewrite(self.ds, self.intent, [e.key for e in batch], forward=True)

        await _pipelined(clean, list(_batches(list(ops), lambda e: len(e.key) + len(e.value or b"") + 50)))
        await _forget(self.ds, self.intent)

    def _envelope(self, op: StagedOp) -> dict[str, Any]:
        return {ENVELOPE: {"intent": self.intent, "prev": op.prev, "delete": op.value is None}, "value": op.value}

    async def _begin(self, ops: Sequence[StagedOp]) -> None:
        self._lease = await self.ds.lease_grant(OWNER_TTL)
        await self.ds.put(OWNERS + self.intent, {"intent": self.intent, "pid": _pid()}, lease=self._lease)
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"intent-{self.intent}-keepalive")
        keys = [o.key for o in ops]
        chunks = [keys[i : i + KEYS_PER_CHUNK] for i in range(0, len(keys), KEYS_PER_CHUNK)]
        for n, chunk in enumerate(chunks):
            await self.ds.put(f"{KEY_CHUNKS}{self.intent}/{n:06d}", chunk)
        record = {"intent": self.intent, "state": PENDING, "created": time.time(), "keys": len(keys)}
        await self.ds.put(RECORDS + self.intent, record)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(OWNER_TTL / 3)
            with contextlib.suppress(Exception):
                await self.ds.lease_keepalive(self._lease)

    async def _end(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(BaseException):
                await self._keepalive
        with contextlib.suppress(Exception):
            await self.ds.lease_revoke(self._lease)


#: Staging / clean-up transactions in flight at once (each <= MAX_OPS keys, <= MAX_BYTES).
PIPELINE = 8


async def _pipelined(step: Any, batches: Sequence[Any], width: int | None = None) -> None:
    """Run ``step(batch)`` for every batch with at most ``width`` (default :data:`PIPELINE`) in flight;
    the first failure cancels the rest and is raised (after every started step finished or was cancelled)."""
    width = PIPELINE if width is None else width
    queue = list(reversed(batches))

    async def worker() -> None:
        while queue:
            await step(queue.pop())

    tasks = [asyncio.create_task(worker()) for _ in range(min(width, len(batches)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _pid() -> int:
    import os

    return os.getpid()


async def _intent_keys(ds: Datastore, intent: str) -> list[str]:
    kvs, _ = await ds.list(f"{KEY_CHUNKS}{intent}/")
    return [k for kv in sorted(kvs, key=lambda kv: kv.key) for k in kv.json()]


async def _forget(ds: Datastore, intent: str) -> None:
    await ds.delete_prefix(f"{KEY_CHUNKS}{intent}/")
    await ds.delete(RECORDS + intent)
    await ds.delete(OWNERS + intent)


async def _rewrite(ds: Datastore, intent: str, keys: Sequence[str], forward: bool) -> None:
    """Turn every key still staged by ``intent`` into its new (forward) or previous value."""
    current: dict[str, KV] | None = None
    if len(keys) > 64:
        current = {}
        for prefix in sorted({k.rsplit("/", 1)[0] + "/" for k in keys}):
            listed, _ = await ds.list(prefix)
            current.update((kv.key, kv) for kv in listed)
    for batch in _batches(list(keys), len):
        if current is not None:
            kvs = [current.get(k) for k in batch]
        else:
            kvs = list(await asyncio.gather(*(ds.get(k) for k in batch)))
        compares = []
        ops: list[Put | Delete] = []
        for key, kv in zip(batch, kvs, strict=True):
            if kv is None:
                continue
            value = kv.json()
            if staged_intent(value) != intent:
                continue
            meta = value[ENVELOPE]
            target = (None if meta.get("delete") else value.get("value")) if forward else meta.get("prev")
            compares.append(mod_is(key, kv.mod_revision))
            ops.append(Delete(key) if target is None else Put(key, target))
        if ops:
            await ds.txn(compares, ops)


async def _clean_up(ds: Datastore, intent: str, keys: Sequence[str]) -> None:
    await _rewrite(ds, intent, keys, forward=True)
    await _forget(ds, intent)


async def _roll_back(ds: Datastore, intent: str, keys: Sequence[str]) -> None:
    await _rewrite(ds, intent, keys, forward=False)
    await _forget(ds, intent)
    log.info("staged.rolled_back", intent=intent, keys=len(keys))


async def recover(ds: Datastore) -> list[tuple[str, str]]:
    """Complete or roll back every intent whose writer is gone; returns [(intent, action)].

    Live intents (owner key present) are left alone; their keys are busy until they finish.
    """
    done: list[tuple[str, str]] = []
    for intent, state in (await intent_states(ds)).items():
        if await ds.get(OWNERS + intent) is not None:
            continue
        keys = await _intent_keys(ds, intent)
        if state == COMMITTED:
            await _clean_up(ds, intent, keys)
            done.append((intent, "completed"))
        else:
            await _roll_back(ds, intent, keys)
            done.append((intent, "rolled back"))
        log.warning("staged.recovered", intent=intent, action=done[-1][1], keys=len(keys))
    return done


async def live_intents(ds: Datastore) -> list[str]:
    """Intents whose writer is still alive."""
    kvs, _ = await ds.list(OWNERS)
    return [kv.key[len(OWNERS) :] for kv in kvs]


# --------------------------------------------------------------------------------------------
# Watch consumers
# --------------------------------------------------------------------------------------------


@dataclass
class StagedFilter:
    """Turns raw watch events into what a consumer may act on: all of a bundle or none.

    Feed it every event of the watched resource prefix *and* of ``intents/record/``
    (``feed(key, value_or_None)``); it returns the (key, visible value or None) pairs to act on:
    plain values at once, staged values held until their intent commits (then all of them in one
    list), dropped when it is rolled back. Cleanup rewrites of an already released key come
    through as ordinary puts carrying the same value.
    """

    held: dict[str, dict[str, Any]] = field(default_factory=dict)  # intent -> {key: visible value}
    states: dict[str, str] = field(default_factory=dict)

    def feed(self, key: str, value: Any) -> list[tuple[str, Any]]:
        if key.startswith(RECORDS):
            intent = key[len(RECORDS) :]
            if value is None:  # record gone: cleaned up or rolled back
                self.states.pop(intent, None)
                self.held.pop(intent, None)
                return []
            state = str(value.get("state"))
            self.states[intent] = state
            if state == COMMITTED:
                return list(self.held.pop(intent, {}).items())
            return []
        if isinstance(value, bytes | str):
            value = json.loads(value)
        intent = staged_intent(value)
        if intent is None:
            return [(key, value)]
        if self.states.get(intent) == COMMITTED:
            return [(key, resolve(value, self.states))]
        meta = value[ENVELOPE]
        self.held.setdefault(intent, {})[key] = None if meta.get("delete") else value.get("value")
        return []
