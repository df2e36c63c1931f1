"""The staged envelope is built once, around the already encoded value: byte for byte encode() of the dict."""

from __future__ import annotations

from typing import Any

import pytest

from datastore import staged
from datastore.client import encode


@pytest.mark.parametrize(("value", "prev"), [
    ({"b": [1, "x\u00e9"], "a": None, "n": {"z": True}}, {"old": 1}),
    (None, {"old": 1}),  # a delete
    ({"new": 1}, None),  # a create
    ({"new": 1}, b'{"already":"encoded"}'),  # the previous value as stored bytes
])
def test_envelope_bytes_equal_encoding_the_envelope_dict(value: Any, prev: Any) -> None:
    op = staged.StagedOp("resources/v3/ippools/p", value, 0, prev)
    writer = staged.IntentWriter.__new__(staged.IntentWriter)
    writer.intent = "0123abcd"
    expected = encode({staged.ENVELOPE: {"intent": "0123abcd", "prev": prev if not isinstance(prev, bytes) else
                                         {"already": "encoded"}, "delete": value is None}, "value": value})
    assert staged._encode_op(op, "0123abcd").envelope == expected
