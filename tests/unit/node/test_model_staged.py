"""The agent's validation filter never acts on half of a large apply (datastore/staged.py)."""

from __future__ import annotations

import json
from typing import Any

from controller.node.model import Model
from datastore import KV, WatchEvent, WatchResync, staged


def _pool(name: str, cidr: str) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": 26, "nodeSelector": "all()"}}


def _envelope(intent: str, new: Any, prev: Any = None) -> dict[str, Any]:
    return {staged.ENVELOPE: {"intent": intent, "prev": prev, "delete": False}, "value": new}


def _kv(key: str, value: Any, rev: int) -> KV:
    return KV(key, json.dumps(value).encode(), rev)


def _key(name: str) -> str:
    return f"resources/v3/ippools/{name}"


def test_staged_values_are_held_until_the_commit_then_applied_together() -> None:
    model = Model("n1")
    model.apply(WatchResync([], 1))
    assert model.apply(WatchEvent("put", _kv(_key("a"), _envelope("i1", _pool("a", "10.1.0.0/16")), 2))) == []
    assert model.apply(WatchEvent("put", _kv(_key("b"), _envelope("i1", _pool("b", "10.2.0.0/16")), 3))) == []
    assert model.pools() == []
    updates = model.apply(WatchEvent("put", _kv(staged.RECORDS + "i1", {"state": staged.COMMITTED}, 4)))
    assert sorted(u.key for u in updates) == [_key("a"), _key("b")]
    assert sorted(p.name for p in model.pools()) == ["a", "b"]
    # cleanup rewrites the same values as plain puts: nothing changes
    assert model.apply(WatchEvent("put", _kv(_key("a"), _pool("a", "10.1.0.0/16"), 5))) == []


def test_a_rolled_back_bundle_is_never_seen() -> None:
    model = Model("n1")
    model.apply(WatchResync([_kv(_key("a"), _pool("a", "10.1.0.0/16"), 1)], 1))
    model.apply(WatchEvent("put", _kv(_key("a"), _envelope("i2", _pool("a", "10.9.0.0/16"),
                                                             prev=_pool("a", "10.1.0.0/16")), 2)))
    model.apply(WatchEvent("put", _kv(staged.RECORDS + "i2", {"state": staged.PENDING}, 3)))
    assert model.apply(WatchEvent("delete", KV(staged.RECORDS + "i2", b"", 4))) == []
    assert [p.spec.cidr for p in model.pools()] == ["10.1.0.0/16"]


def test_a_resync_reads_pending_values_as_before_and_releases_them_at_the_commit() -> None:
    model = Model("n1")
    kvs = [
        _kv(_key("old"), _envelope("i3", _pool("old", "10.3.0.0/16"), prev=_pool("old", "10.4.0.0/16")), 5),
        _kv(_key("new"), _envelope("i3", _pool("new", "10.5.0.0/16")), 6),
        _kv(staged.RECORDS + "i3", {"state": staged.PENDING}, 7),
    ]
    model.apply(WatchResync(kvs, 7))
    assert [(p.name, p.spec.cidr) for p in model.pools()] == [("old", "10.4.0.0/16")]
    model.apply(WatchEvent("put", _kv(staged.RECORDS + "i3", {"state": staged.COMMITTED}, 8)))
    assert sorted((p.name, p.spec.cidr) for p in model.pools()) == [("new", "10.5.0.0/16"), ("old", "10.3.0.0/16")]


def test_a_resync_reads_committed_values_as_new() -> None:
    model = Model("n1")
    kvs = [_kv(_key("a"), _envelope("i4", _pool("a", "10.6.0.0/16")), 5),
           _kv(staged.RECORDS + "i4", {"state": staged.COMMITTED}, 6)]
    model.apply(WatchResync(kvs, 6))
    assert [p.spec.cidr for p in model.pools()] == ["10.6.0.0/16"]


def test_document_gives_writers_nothing_to_compare_against_while_a_key_holds_an_envelope() -> None:
    """A writer comparing on the envelope's mod_revision would land inside the envelope: while the key
    holds one (pending, committed, until the clean-up's plain put), ``document`` reads (None, 0)."""
    model = Model("n1")
    model.apply(WatchResync([_kv(_key("a"), _pool("a", "10.1.0.0/16"), 1)], 1))
    assert model.document(_key("a")) == (_pool("a", "10.1.0.0/16"), 1)
    model.apply(WatchEvent("put", _kv(_key("a"), _envelope("i5", _pool("a", "10.9.0.0/16"),
                                                             prev=_pool("a", "10.1.0.0/16")), 2)))
    assert model.held == {_key("a")}
    assert model.document(_key("a")) == (None, 0)
    model.apply(WatchEvent("put", _kv(staged.RECORDS + "i5", {"state": staged.COMMITTED}, 3)))
    assert [p.spec.cidr for p in model.pools()] == ["10.9.0.0/16"]
    assert model.document(_key("a")) == (None, 0)  # committed, but the key still holds the envelope
    model.apply(WatchEvent("put", _kv(_key("a"), _pool("a", "10.9.0.0/16"), 4)))  # the clean-up
    assert model.held == set()
    assert model.document(_key("a")) == (_pool("a", "10.9.0.0/16"), 4)
    # a resync finds an envelope (a staged delete) and a plain key
    envelope = {staged.ENVELOPE: {"intent": "i6", "prev": _pool("a", "10.9.0.0/16"), "delete": True}, "value": None}
    model.apply(WatchResync([_kv(_key("a"), envelope, 6), _kv(_key("b"), _pool("b", "10.2.0.0/16"), 5),
                             _kv(staged.RECORDS + "i6", {"state": staged.PENDING}, 7)], 7))
    assert model.held == {_key("a")}
    assert model.document(_key("a")) == (None, 0)
    assert model.document(_key("b")) == (_pool("b", "10.2.0.0/16"), 5)
    model.apply(WatchEvent("delete", KV(_key("a"), b"", 8)))  # the staged delete's clean-up
    assert model.held == set()
