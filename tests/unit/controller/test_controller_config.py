"""Controller and liveness settings: defaults, and one line naming the variable for a bad value."""

from __future__ import annotations

import pytest

from controller.cluster.config import ControllerConfig, ControllerConfigError
from controller.node.liveness import DEFAULT_LIVENESS_TTL, liveness_ttl


def test_defaults_follow_calico() -> None:
    cfg = ControllerConfig.from_env({"ETCD_ENDPOINTS": "http://127.0.0.1:2379"})
    assert (cfg.interval, cfg.leader_ttl, cfg.gc_grace, cfg.node_grace, cfg.cleanup_delay) == (10.0, 15, 900.0, 0.0,
                                                                                                  30.0)
    cfg = ControllerConfig.from_env({"TABBY_IPAM_GC_GRACE": "2s", "TABBY_NODE_GRACE": "60", "TABBY_LEADER_TTL": "3"})
    assert (cfg.gc_grace, cfg.node_grace, cfg.leader_ttl) == (2.0, 60.0, 3)


@pytest.mark.parametrize(("var", "value", "message"), [
    ("TABBY_LEADER_TTL", "1", "TABBY_LEADER_TTL: must be a whole number of seconds, at least 2, got '1'"),
    ("TABBY_CONTROLLER_INTERVAL", "0", "TABBY_CONTROLLER_INTERVAL: must be more than 0 seconds, got '0'"),
    ("TABBY_IPAM_GC_GRACE", "soon", "TABBY_IPAM_GC_GRACE: must be a number of seconds, got 'soon'"),
    ("TABBY_NODE_GRACE", "-1", "TABBY_NODE_GRACE: must be at least 0 seconds, got '-1'"),
    ("TABBY_LOG_FORMAT", "xml", "TABBY_LOG_FORMAT: must be console or json, got 'xml'"),
    ("TABBY_KUBE_SYNC", "maybe", "TABBY_KUBE_SYNC: must be on or off, got 'maybe'"),
    ("TABBY_KUBE_SYNC", "on", "TABBY_KUBE_SYNC: on, but no API server: set TABBY_KUBE_API (or run in a Pod, "
                              "where KUBERNETES_SERVICE_HOST is set)"),
    ("TABBY_KUBE_API", "ftp://x", "TABBY_KUBE_API: must be http(s)://host[:port], got 'ftp://x'"),
])
def test_bad_values_name_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ControllerConfigError) as exc:
        ControllerConfig.from_env({var: value})
    assert str(exc.value) == message


def test_liveness_ttl() -> None:
    assert liveness_ttl({}) == DEFAULT_LIVENESS_TTL
    assert liveness_ttl({"TABBY_LIVENESS_TTL": "5s"}) == 5
    with pytest.raises(ValueError, match="TABBY_LIVENESS_TTL: must be a whole number of seconds, at least 2"):
        liveness_ttl({"TABBY_LIVENESS_TTL": "1"})


def test_kube_sync_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Off without an API server; in a Pod, the kubelet's KUBERNETES_SERVICE_* and the ServiceAccount files."""
    assert ControllerConfig.from_env({}).kube is None
    token = tmp_path / "token"
    token.write_text("t")
    cfg = ControllerConfig.from_env({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                                     "TABBY_KUBE_TOKEN_FILE": str(token)})
    assert cfg.kube is not None and cfg.kube.url == "https://10.96.0.1:443" and cfg.kube.token_file == token
    cfg = ControllerConfig.from_env({"KUBERNETES_SERVICE_HOST": "fd00::1", "TABBY_KUBE_TOKEN_FILE": str(token)})
    assert cfg.kube is not None and cfg.kube.url == "https://[fd00::1]:443"
    assert ControllerConfig.from_env({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "TABBY_KUBE_SYNC": "off"}).kube is None
    with pytest.raises(ControllerConfigError, match="TABBY_KUBE_TOKEN_FILE: no such file: /nonexistent"):
        ControllerConfig.from_env({"TABBY_KUBE_API": "http://127.0.0.1:1", "TABBY_KUBE_TOKEN_FILE": "/nonexistent"})
