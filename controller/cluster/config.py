"""ControllerConfig: the cluster controller's settings, from the environment (one line per bad value).

Defaults follow calico-kube-controllers where it has an equivalent: the IPAM leak grace period
is 15 minutes; Node expiry (removing a Node whose agent stopped renewing its liveness lease) is
off unless TABBY_NODE_GRACE is set, because deleting a powered-off node's workloads is not
reversible.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.cluster.kubeapi import KubeAPIConfig, KubeConfigError
from controller.metrics import MetricsConfigError, MetricsSettings, controller_settings
from datastore import ConfigError, EtcdConfig


class ControllerConfigError(ValueError):
    """A setting is malformed; the message starts with the variable's name."""


@dataclass(frozen=True)
class ControllerConfig:
    etcd: EtcdConfig
    interval: float = 10.0
    leader_ttl: int = 15
    gc_grace: float = 900.0
    node_grace: float = 0.0
    cleanup_delay: float = 30.0
    identity: str | None = None
    log_level: str = "info"
    log_format: str = "console"
    #: Prometheus endpoint: TABBY_CONTROLLER_PROMETHEUSMETRICSPORT (default 9094, 0 = off).
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: The Kubernetes sync (controller/cluster/kubesync.py): None = off (no API server configured).
    kube: KubeAPIConfig | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ControllerConfig:
        env = os.environ if environ is None else environ
        try:
            etcd = EtcdConfig.load(env.get("ETCD_CONFIG_FILE") or None, env)
        except ConfigError as exc:
            raise ControllerConfigError(str(exc)) from None
        ttl_raw = env.get("TABBY_LEADER_TTL", "").strip().removesuffix("s") or "15"
        if not ttl_raw.isdigit() or int(ttl_raw) < 2:
            raise ControllerConfigError(f"TABBY_LEADER_TTL: must be a whole number of seconds, at least 2, "
                                        f"got {ttl_raw!r}")
        level = (env.get("TABBY_LOG_LEVEL") or "info").strip().lower()
        if level not in ("debug", "info", "warning", "warn", "error", "critical"):
            raise ControllerConfigError(f"TABBY_LOG_LEVEL: must be debug, info, warning or error, got {level!r}")
        fmt = (env.get("TABBY_LOG_FORMAT") or "console").strip().lower()
        if fmt not in ("console", "json"):
            raise ControllerConfigError(f"TABBY_LOG_FORMAT: must be console or json, got {fmt!r}")
        try:
            metrics = controller_settings(env)
        except MetricsConfigError as exc:
            raise ControllerConfigError(str(exc)) from None
        try:
            kube = KubeAPIConfig.from_env(env)
        except KubeConfigError as exc:
            raise ControllerConfigError(str(exc)) from None
        return cls(
            etcd=etcd,
            kube=kube,
            metrics=metrics,
            interval=_seconds(env, "TABBY_CONTROLLER_INTERVAL", 10.0, positive=True),
            leader_ttl=int(ttl_raw),
            gc_grace=_seconds(env, "TABBY_IPAM_GC_GRACE", 900.0),
            node_grace=_seconds(env, "TABBY_NODE_GRACE", 0.0),
            cleanup_delay=_seconds(env, "TABBY_NODE_CLEANUP_DELAY", 30.0),
            identity=env.get("TABBY_CONTROLLER_ID") or None,
            log_level=level,
            log_format=fmt,
        )


def _seconds(env: Mapping[str, str], var: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise ControllerConfigError(f"{var}: must be a number of seconds, got {raw!r}") from None
    if value < 0 or (positive and value == 0):
        raise ControllerConfigError(f"{var}: must be {'more than' if positive else 'at least'} 0 seconds, "
                                    f"got {raw!r}")
    return value
