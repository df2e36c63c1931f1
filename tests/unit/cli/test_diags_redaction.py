"""node diags never writes a secret: environment lines, JSON keys, ExaBGP md5-password, URL credentials."""

from __future__ import annotations

from controller.cli.diags import REDACTED, redact_json, redact_text


def test_environment_and_urls() -> None:
    text = ("ETCD_PASSWORD=hunter2\nETCD_USERNAME=root\nETCD_KEY_FILE=/etc/tabby/key.pem\nAPI_TOKEN=abc\n"
            "ETCD_ENDPOINTS=https://root:hunter2@10.0.0.1:2379\n")
    out = redact_text(text)
    assert "hunter2" not in out and "abc" not in out
    assert "ETCD_USERNAME=root" in out and "ETCD_KEY_FILE=/etc/tabby/key.pem" in out
    assert f"https://root:{REDACTED}@10.0.0.1:2379" in out


def test_exabgp_md5_and_json() -> None:
    conf = 'neighbor 10.0.0.2 {\n    md5-password "s3cr3t";\n    peer-as 64512;\n}\n'
    assert "s3cr3t" not in redact_text(conf) and "peer-as 64512" in redact_text(conf)
    doc = {"password": "p", "sessions": [{"peer": "x", "authKey": "k"}], "ca_file": "/ca.pem",
           "log": 'passed "etcd_password": "zz"'}
    out = redact_json(doc)
    assert out["password"] == REDACTED and out["sessions"][0]["authKey"] == REDACTED
    assert out["ca_file"] == "/ca.pem" and out["sessions"][0]["peer"] == "x" and "zz" not in out["log"]
