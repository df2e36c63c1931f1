"""tabbyctl against an etcd that requires TLS and client certificates (certificates from trustme).

Settings reach tabbyctl the two ways calicoctl users give them: ETCD_* variables, and a
CalicoAPIConfig file passed with ``-c``.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.helpers.etcd import free_port

POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: tls-pool
spec:
  cidr: 10.77.0.0/16
"""


@dataclass
class TLSEtcd:
    endpoint: str
    ca: str
    cert: str
    key: str
    other_ca: str


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSEtcd]:
    """One etcd serving only HTTPS and demanding a client certificate signed by our CA."""
    work = tmp_path_factory.mktemp("tls-etcd")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("tabbyctl@example.test")
    files = {
        "ca": work / "ca.pem",
        "server_cert": work / "server.pem",
        "server_key": work / "server-key.pem",
        "cert": work / "client.pem",
        "key": work / "client-key.pem",
        "other_ca": work / "other-ca.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    trustme.CA().cert_pem.write_to_path(str(files["other_ca"]))

    port, peer = free_port(), free_port()
    endpoint = f"https://127.0.0.1:{port}"
    log = open(work / "etcd.log", "wb")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [
            "etcd",
            "--name", "tls",
            "--data-dir", str(work / "data"),
            "--listen-client-urls", endpoint,
            "--advertise-client-urls", endpoint,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
            "--cert-file", str(files["server_cert"]),
            "--key-file", str(files["server_key"]),
            "--trusted-ca-file", str(files["ca"]),
            "--client-cert-auth",
            "--log-level", "warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    log.close()
    try:
        context = ssl.create_default_context(cafile=str(files["ca"]))
        context.load_cert_chain(str(files["cert"]), str(files["key"]))
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (work / "etcd.log").read_text()
            try:
                with urllib.request.urlopen(f"{endpoint}/health", timeout=1, context=context) as resp:
                    if b"true" in resp.read():
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TLS etcd did not become healthy"
            time.sleep(0.1)
        yield TLSEtcd(endpoint, str(files["ca"]), str(files["cert"]), str(files["key"]), str(files["other_ca"]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def tls_env(tls_etcd: TLSEtcd, etcd_env: dict[str, str]) -> dict[str, str]:
    env = dict(etcd_env)
    env.update(
        ETCD_ENDPOINTS=tls_etcd.endpoint,
        ETCD_CA_CERT_FILE=tls_etcd.ca,
        ETCD_CERT_FILE=tls_etcd.cert,
        ETCD_KEY_FILE=tls_etcd.key,
        TABBY_ETCD_PREFIX=f"/tls-{uuid.uuid4().hex[:8]}/",
    )
    return env


def test_tls_with_client_certificate_from_environment(ctl: Any, tls_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(POOL)
    res = ctl("create", "-f", str(path), env=tls_env)
    assert res.rc == 0, res.err
    doc = json.loads(ctl("get", "ippool", "tls-pool", "-o", "json", env=tls_env).out)
    assert doc["spec"]["cidr"] == "10.77.0.0/16"
    res = ctl("ipam", "show", env=tls_env)
    assert res.rc == 0 and "10.77.0.0/16" in res.out


def test_tls_with_calico_api_config_file(ctl: Any, tls_etcd: TLSEtcd, etcd_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in etcd_env.items() if not k.startswith("ETCD_") and k != "TABBY_ETCD_PREFIX"}
    config = tmp_path / "calicoctl.cfg"
    config.write_text(
        "apiVersion: projectcalico.org/v3\n"
        "kind: CalicoAPIConfig\n"
        "metadata: {}\n"
        "spec:\n"
        "  datastoreType: etcdv3\n"
        f"  etcdEndpoints: {tls_etcd.endpoint}\n"
        f"  etcdCACertFile: {tls_etcd.ca}\n"
        f"  etcdCertFile: {tls_etcd.cert}\n"
        f"  etcdKeyFile: {tls_etcd.key}\n"
        f"  etcdPrefix: /tls-cfg-{uuid.uuid4().hex[:8]}/\n"
    )
    pool = tmp_path / "pool.yaml"
    pool.write_text(POOL)
    res = ctl("-c", str(config), "create", "-f", str(pool), env=env)
    assert res.rc == 0, res.err
    # calicoctl puts -c after the subcommand; both places work.
    res = ctl("get", "ippools", "-c", str(config), env=env)
    assert res.rc == 0, res.err
    assert res.out.splitlines()[1].split() == ["tls-pool", "10.77.0.0/16", "all()"]
    res = ctl("version", "--config", str(config), env=env)
    assert res.rc == 0 and "Cluster Version:" in res.out


def test_tls_without_client_certificate_is_one_line(ctl: Any, tls_env: dict[str, str]) -> None:
    env = {k: v for k, v in tls_env.items() if k not in ("ETCD_CERT_FILE", "ETCD_KEY_FILE")}
    env["TABBY_ETCD_TIMEOUT"] = "2"
    started = time.monotonic()
    res = ctl("get", "ippool", env=env)
    assert res.rc == 1
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith("Error: ") and tls_env["ETCD_ENDPOINTS"] in res.err_lines[0]
    assert time.monotonic() - started < 2 + 3


def test_tls_with_wrong_ca_is_one_line(ctl: Any, tls_env: dict[str, str], tls_etcd: TLSEtcd) -> None:
    env = dict(tls_env, ETCD_CA_CERT_FILE=tls_etcd.other_ca, TABBY_ETCD_TIMEOUT="2")
    res = ctl("get", "ippool", env=env)
    assert res.rc == 1
    assert len(res.err_lines) == 1, res.err
    assert tls_env["ETCD_ENDPOINTS"] in res.err_lines[0]


def test_plain_http_client_against_tls_etcd_is_one_line(ctl: Any, tls_env: dict[str, str]) -> None:
    env = {k: v for k, v in tls_env.items() if not k.startswith("ETCD_") or k == "ETCD_ENDPOINTS"}
    env["ETCD_ENDPOINTS"] = env["ETCD_ENDPOINTS"].replace("https://", "http://")
    env["TABBY_ETCD_TIMEOUT"] = "2"
    res = ctl("get", "ippool", env=env)
    assert res.rc == 1
    assert len(res.err_lines) == 1, res.err
