"""Datastore client settings, read the way calicoctl reads them.

Sources, later ones winning: defaults, a config file (``-c``; calicoctl's CalicoAPIConfig
YAML, or a flat YAML/JSON mapping with the same names as the environment variables), then
the environment: ETCD_ENDPOINTS, ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE,
ETCD_USERNAME, ETCD_PASSWORD, and TABBY_ETCD_PREFIX for the key prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import yaml

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/tabby/"

_ENV_FIELDS = {
    "ETCD_ENDPOINTS": "endpoints",
    "ETCD_CA_CERT_FILE": "ca_cert_file",
    "ETCD_CERT_FILE": "cert_file",
    "ETCD_KEY_FILE": "key_file",
    "ETCD_USERNAME": "username",
    "ETCD_PASSWORD": "password",
    "TABBY_ETCD_PREFIX": "prefix",
}
# calicoctl's CalicoAPIConfig spec names.
_SPEC_FIELDS = {
    "etcdEndpoints": "endpoints",
    "etcdCACertFile": "ca_cert_file",
    "etcdCertFile": "cert_file",
    "etcdKeyFile": "key_file",
    "etcdUsername": "username",
    "etcdPassword": "password",
    "etcdPrefix": "prefix",
}


class ConfigError(ValueError):
    """A datastore setting is malformed; the message names the setting."""


@dataclass(frozen=True)
class Endpoint:
    """One etcd endpoint: a gRPC target plus whether it wants TLS."""

    url: str
    target: str
    tls: bool


@dataclass(frozen=True)
class EtcdConfig:
    """Everything needed to reach etcd."""

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    ca_cert_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    prefix: str = DEFAULT_PREFIX
    # Seconds for one RPC, and the total bounded wait before "unreachable".
    rpc_timeout: float = 5.0
    connect_timeout: float = 10.0
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("ETCD_ENDPOINTS: no endpoint given")
        for url in self.endpoints:
            parse_endpoint(url)
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("ETCD_CERT_FILE and ETCD_KEY_FILE: give both or neither")
        if bool(self.username) != bool(self.password):
            raise ConfigError("ETCD_USERNAME and ETCD_PASSWORD: give both or neither")
        for name in ("ca_cert_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                env = {v: k for k, v in _ENV_FIELDS.items()}[name]
                raise ConfigError(f"{env}: no such file {path!r}")
        if not self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise ConfigError(f"TABBY_ETCD_PREFIX: must start and end with '/', got {self.prefix!r}")

    @property
    def parsed_endpoints(self) -> list[Endpoint]:
        return [parse_endpoint(u) for u in self.endpoints]

    def with_prefix(self, prefix: str) -> EtcdConfig:
        return replace(self, prefix=prefix)

    @classmethod
    def load(cls, config_file: str | None = None, environ: Mapping[str, str] | None = None) -> EtcdConfig:
        """Defaults, then the config file, then the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if config_file:
            values.update(_read_config_file(config_file))
        for var, name in _ENV_FIELDS.items():
            if env.get(var):
                values[name] = env[var]
        if "endpoints" in values:
            values["endpoints"] = split_endpoints(values["endpoints"])
        return cls(**values)  # type: ignore[arg-type]


def split_endpoints(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        items = [p.strip() for p in raw.split(",")]
    elif isinstance(raw, list | tuple):
        items = [str(p).strip() for p in raw]
    else:
        raise ConfigError(f"ETCD_ENDPOINTS: expected a comma-separated string, got {raw!r}")
    items = [p for p in items if p]
    if not items:
        raise ConfigError("ETCD_ENDPOINTS: no endpoint given")
    return tuple(items)


def parse_endpoint(url: str) -> Endpoint:
    """Turn ``http://h:p``, ``https://h:p``, ``h:p`` or ``unix:///path`` into a gRPC target."""
    if url.startswith("unix:") or url.startswith("unixs:"):
        path = url.split(":", 1)[1].lstrip("/")
        if not path:
            raise ConfigError(f"ETCD_ENDPOINTS: {url!r} has no socket path")
        return Endpoint(url=url, target=f"unix:///{path}", tls=url.startswith("unixs:"))
    url_for_parse = f"http://{url}" if "://" not in url else url
    parts = urlsplit(url_for_parse)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"ETCD_ENDPOINTS: {url!r}: scheme must be http, https or unix")
    try:
        port = parts.port or 2379
    except ValueError as exc:
        raise ConfigError(f"ETCD_ENDPOINTS: {url!r}: bad port") from exc
    host = parts.hostname
    if not host:
        raise ConfigError(f"ETCD_ENDPOINTS: {url!r} has no host")
    host_part = f"[{host}]" if ":" in host else host
    return Endpoint(url=url, target=f"{host_part}:{port}", tls=parts.scheme == "https")


def _read_config_file(path: str) -> dict[str, object]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path}: expected a mapping")
    out: dict[str, object] = {}
    if "spec" in doc:
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"config file {path}: spec must be a mapping")
        dstype = spec.get("datastoreType", "etcdv3")
        if dstype != "etcdv3":
            raise ConfigError(f"config file {path}: spec.datastoreType: only etcdv3 is supported, got {dstype!r}")
        for key, value in spec.items():
            if key == "datastoreType":
                continue
            if key not in _SPEC_FIELDS:
                raise ConfigError(f"config file {path}: spec.{key}: unknown setting")
            out[_SPEC_FIELDS[key]] = value
    else:
        for key, value in doc.items():
            if key not in _ENV_FIELDS:
                raise ConfigError(f"config file {path}: {key}: unknown setting")
            out[_ENV_FIELDS[key]] = value
    return out
