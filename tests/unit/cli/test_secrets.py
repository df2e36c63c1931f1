"""Secrets never print and never sit in a readable file.

* ``get -o yaml/json`` (``output.redact_secrets``): Calico's kinds hold only secretKeyRef
  references, which print as they are; free text that would hold a secret (an annotation named
  ``...password``, a URL with ``user:password@``) prints ``<redacted>``.
* Refusing an inline BGP password (Calico accepts only secretKeyRef) does not echo it.
* ``common.files.write_private``: 0600 from the first byte whatever the umask, atomically; the
  ExaBGP configuration and state (md5-password) go through it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bgp import exabgp_config
from bgp.speaker import Speaker
from bgp.types import MESH, PeerSpec, SpeakerSpec
from common.files import write_private
from controller.cli.output import REDACTED, redact_secrets, to_json, to_yaml
from datamodel.resources import ResourceError, parse_resource


def _peer(password: object) -> dict[str, object]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "p1"},
            "spec": {"peerIP": "10.0.0.1", "asNumber": 65001, "password": password}}


def test_secret_key_ref_prints_as_a_reference() -> None:
    res = parse_resource(_peer({"secretKeyRef": {"name": "bgp-secrets", "key": "rr-password"}}))
    doc = redact_secrets(res.to_dict())
    assert doc["spec"]["password"] == {"secretKeyRef": {"name": "bgp-secrets", "key": "rr-password"}}
    assert "rr-password" in to_yaml(doc)


def test_free_text_secrets_are_redacted() -> None:
    doc = {"metadata": {"name": "x", "annotations": {"example.com/bgp-password": "hunter2",
                                                       "example.com/api-token": "t0k3n",
                                                       "example.com/etcd": "https://root:hunter3@10.0.0.5:2379",
                                                       "example.com/owner": "team-a"}},
           "spec": {"asNumber": 65001, "keepOriginalNextHop": True}}
    out = redact_secrets(doc)
    text = to_yaml(out) + to_json(out)
    for secret in ("hunter2", "t0k3n", "hunter3"):
        assert secret not in text
    ann = out["metadata"]["annotations"]
    assert ann["example.com/bgp-password"] == REDACTED and ann["example.com/api-token"] == REDACTED
    assert ann["example.com/etcd"] == f"https://root:{REDACTED}@10.0.0.5:2379"
    assert ann["example.com/owner"] == "team-a" and out["spec"] == doc["spec"]


@pytest.mark.parametrize("password", ["hunter2", 123456789, ["hunter2"]])
def test_inline_password_is_refused_without_echoing_it(password: object) -> None:
    with pytest.raises(ResourceError) as err:
        parse_resource(_peer(password))
    text = "\n".join(err.value.problems)
    assert "spec.password" in text
    assert "hunter2" not in text and "123456789" not in text


def test_write_private_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "exabgp.conf"
    target.write_text("old")
    target.chmod(0o644)
    old = os.umask(0)
    try:
        write_private(target, 'md5-password "x";\n')
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == 'md5-password "x";\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exabgp.conf"], "a temporary file was left behind"


def test_speaker_writes_its_config_and_state_0600(tmp_path: Path) -> None:
    speaker = SpeakerSpec(node="n1", router_id="192.0.2.1", local_as=64512, address="192.0.2.1", listen_port=1790)
    peer = PeerSpec(address="192.0.2.2", peer_as=64512, local_as=64512, type=MESH, name="n2", password="s3cr3t",
                    local_address="192.0.2.1")
    config = exabgp_config.build(speaker, [peer], run="/bin/true", log_path="/l")
    sp = Speaker(None, tmp_path)
    sp._write(config)
    for path in (sp.conf_path, sp.state_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
