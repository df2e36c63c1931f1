"""Fault suite fixtures: a PRIVATE etcd per test (stopping it must not disturb the session's), and
the node-agent lab of tests/integration/node (namespaces, real agents, the real CNI plugin)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.etcd import EtcdServer

pytestmark = pytest.mark.root


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    server = EtcdServer(tmp_path / "etcd")
    server.workdir.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_env(private_etcd: EtcdServer) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_USERNAME", "ETCD_PASSWORD"):
        env.pop(var, None)
    env["ETCD_ENDPOINTS"] = private_etcd.endpoint
    env["TABBY_ETCD_PREFIX"] = "/tabby/"
    return env
