"""Shared fixtures: a real etcd (Debian's etcd-server) per test session.

Every test gets its own key prefix on that etcd, so tests never see each other's data and
nothing needs wiping between them. The etcd process and its data directory go away at the
end of the session, also when tests fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from datastore import EtcdConfig
from tests.helpers.etcd import EtcdServer


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix() -> str:
    return f"/tabby-test-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def etcd_env(etcd_server: EtcdServer, etcd_prefix: str) -> dict[str, str]:
    """Environment for a subprocess (tabbyctl, workers) pointed at this test's etcd prefix."""
    env = dict(os.environ)
    for var in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_USERNAME", "ETCD_PASSWORD"):
        env.pop(var, None)
    env["ETCD_ENDPOINTS"] = etcd_server.endpoint
    env["TABBY_ETCD_PREFIX"] = etcd_prefix
    return env


@pytest.fixture
def etcd_config(etcd_server: EtcdServer, etcd_prefix: str) -> EtcdConfig:
    """Client settings for this test's private prefix on the session etcd."""
    return EtcdConfig(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)


# CI=true: a skipped test fails, --durations=30, suites over their time budget fail (tests/helpers/ci.py).
from tests.helpers.ci import (  # noqa: E402, F401
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
)
