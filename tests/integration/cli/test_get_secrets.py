"""``tabbyctl get -o yaml|json`` never prints a secret: a BGPPeer's secretKeyRef prints as the
reference it is; an annotation holding a password, or a URL with credentials, prints <redacted>."""

from __future__ import annotations

import json

from .conftest import Ctl

PEER = """\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rr1
  annotations:
    example.com/md5-password: hunter2
    example.com/source: https://admin:hunter3@git.example/peers
spec:
  peerIP: 10.0.0.1
  asNumber: 65001
  password:
    secretKeyRef: {name: bgp-secrets, key: rr1-password}
"""


def test_get_redacts_inline_secrets_and_keeps_references(ctl: Ctl, write) -> None:  # type: ignore[no-untyped-def]
    assert ctl("apply", "-f", write("peer.yaml", PEER)).rc == 0
    for fmt in ("yaml", "json"):
        for args in (("get", "bgppeer", "rr1", "-o", fmt), ("get", "bgppeers", "-o", fmt)):
            res = ctl(*args)
            assert res.rc == 0, res.err
            assert "hunter2" not in res.out and "hunter3" not in res.out
            assert "<redacted>" in res.out and "rr1-password" in res.out and "bgp-secrets" in res.out
    doc = json.loads(ctl("get", "bgppeer", "rr1", "-o", "json").out)
    assert doc["spec"]["password"] == {"secretKeyRef": {"name": "bgp-secrets", "key": "rr1-password"}}
    assert doc["metadata"]["annotations"]["example.com/source"] == "https://admin:<redacted>@git.example/peers"


def test_an_inline_password_is_refused_without_echo(ctl: Ctl, write) -> None:  # type: ignore[no-untyped-def]
    res = ctl("apply", "-f", write("bad.yaml", PEER.replace("  password:\n    secretKeyRef: {name: bgp-secrets, "
                                                             "key: rr1-password}\n", "  password: hunter4\n")))
    assert res.rc != 0 and "spec.password" in res.err and "hunter4" not in res.err + res.out
