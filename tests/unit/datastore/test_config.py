"""Datastore settings: calicoctl's variables and config file, and clear errors for mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore import ConfigError, EtcdConfig
from datastore.config import parse_endpoint


def test_defaults() -> None:
    cfg = EtcdConfig.load(environ={})
    assert cfg.endpoints == ("http://127.0.0.1:2379",)
    assert cfg.prefix == "/tabby/"


def test_environment_wins_over_file(tmp_path: Path) -> None:
    conf = tmp_path / "calicoctl.cfg"
    conf.write_text(
        "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\n"
        "spec:\n  datastoreType: etcdv3\n  etcdEndpoints: http://10.1.1.1:2379,http://10.1.1.2:2379\n"
    )
    assert EtcdConfig.load(str(conf), environ={}).endpoints == ("http://10.1.1.1:2379", "http://10.1.1.2:2379")
    env = {"ETCD_ENDPOINTS": "http://127.0.0.1:4001"}
    assert EtcdConfig.load(str(conf), environ=env).endpoints == ("http://127.0.0.1:4001",)


def test_flat_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "tabby.yaml"
    conf.write_text("ETCD_ENDPOINTS: https://127.0.0.1:2379\nTABBY_ETCD_PREFIX: /other/\n")
    cfg = EtcdConfig.load(str(conf), environ={})
    assert cfg.parsed_endpoints[0].tls
    assert cfg.prefix == "/other/"


@pytest.mark.parametrize(
    ("url", "target", "tls"),
    [
        ("http://127.0.0.1:2379", "127.0.0.1:2379", False),
        ("https://etcd.example:2379", "etcd.example:2379", True),
        ("127.0.0.1:4001", "127.0.0.1:4001", False),
        ("http://[::1]:2379", "[::1]:2379", False),
        ("unix:///run/etcd.sock", "unix:///run/etcd.sock", False),
    ],
)
def test_endpoint_forms(url: str, target: str, tls: bool) -> None:
    ep = parse_endpoint(url)
    assert (ep.target, ep.tls) == (target, tls)


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"ETCD_ENDPOINTS": "ftp://x:1"}, "ETCD_ENDPOINTS"),
        ({"ETCD_ENDPOINTS": "http://x:notaport"}, "bad port"),
        ({"ETCD_ENDPOINTS": " , "}, "no endpoint"),
        ({"ETCD_CERT_FILE": "/nonexistent/cert.pem", "ETCD_KEY_FILE": "/nonexistent/key.pem"}, "ETCD_CERT_FILE"),
        ({"ETCD_USERNAME": "root"}, "ETCD_PASSWORD"),
        ({"TABBY_ETCD_PREFIX": "tabby"}, "TABBY_ETCD_PREFIX"),
    ],
)
def test_bad_settings_name_the_setting(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        EtcdConfig.load(environ=environ)


def test_bad_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("spec:\n  datastoreType: kubernetes\n")
    with pytest.raises(ConfigError, match="datastoreType"):
        EtcdConfig.load(str(conf), environ={})
    conf.write_text("spec:\n  etcdEndpoint: http://x\n")
    with pytest.raises(ConfigError, match=r"spec\.etcdEndpoint: unknown"):
        EtcdConfig.load(str(conf), environ={})
    with pytest.raises(ConfigError, match="config file"):
        EtcdConfig.load(str(tmp_path / "missing.yaml"), environ={})
