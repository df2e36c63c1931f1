"""The cluster controller's settings from KubeControllersConfiguration ``default``, as
calico-kube-controllers takes its own: read at every cycle, the environment overriding it, the
result written back as ``status.runningConfig`` with the overriding variables in
``status.environmentVars``.

Honoured (everything else of the kind is stored and shown, and ``apply`` warns that it is not
read, controller/support_policy.py):

- ``controllers.node.reconcilerPeriod``: the controller's cycle interval (``TABBY_CONTROLLER_INTERVAL``
  overrides); ``0`` keeps the interval the controller started with, as a reconciler period of 0
  cannot mean "never" for the node lifecycle it also drives.
- ``controllers.node.leakGracePeriod``: the IPAM GC grace period (``TABBY_IPAM_GC_GRACE`` overrides);
  ``0`` turns IPAM garbage collection off, as in Calico.
- ``logSeverityScreen``: the controller's log level (``TABBY_LOG_LEVEL`` overrides).

Why the environment wins: a DaemonSet or unit file that sets a variable was written for that
process and must not be undone by a cluster-wide object (Calico's env vars win the same way).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from datamodel.resources.common import parse_duration
from datamodel.resources.kubecontrollers import KubeControllersConfiguration
from datastore import Datastore, Put, mod_is, staged
from datastore.keys import resource_key

log = structlog.get_logger("tabby.controller.kcc")

KEY = resource_key(KubeControllersConfiguration.PLURAL, "default")
#: Variables that override a field: (env var, the field it overrides).
OVERRIDES = (("TABBY_CONTROLLER_INTERVAL", "controllers.node.reconcilerPeriod"),
             ("TABBY_IPAM_GC_GRACE", "controllers.node.leakGracePeriod"),
             ("TABBY_LOG_LEVEL", "logSeverityScreen"))
_LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warning": "warning", "error": "error",
           "fatal": "critical"}
_LEVEL_NAMES = {"debug": "Debug", "info": "Info", "warning": "Warning", "warn": "Warning", "error": "Error",
                "critical": "Fatal"}


@dataclass(frozen=True)
class Effective:
    """What the controller runs with."""

    interval: float
    gc_grace: float | None  # None: IPAM garbage collection off (leakGracePeriod 0)
    log_level: str
    env: dict[str, str] = field(default_factory=dict)  # the overriding variables, as set
    sources: dict[str, str] = field(default_factory=dict)  # field -> "env" | "kcc" | "default"


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


def effective(kcc: KubeControllersConfiguration | None, *, interval: float, gc_grace: float, log_level: str,
              environ: Mapping[str, str]) -> Effective:
    """The settings: the environment (set variables only), else the KCC field, else the start-up default
    (``interval``/``gc_grace``/``log_level`` are the controller's configuration from the environment)."""
    env = {var: environ[var] for var, _f in OVERRIDES if (environ.get(var) or "").strip()}
    spec = kcc.spec if kcc is not None else None
    node = spec.controllers.node if spec is not None and spec.controllers.node is not None else None
    sources: dict[str, str] = {}

    eff_interval = interval
    if "TABBY_CONTROLLER_INTERVAL" in env:
        sources["controllers.node.reconcilerPeriod"] = "env"
    elif node is not None and node.reconcilerPeriod is not None and parse_duration(node.reconcilerPeriod) > 0:
        eff_interval = parse_duration(node.reconcilerPeriod)
        sources["controllers.node.reconcilerPeriod"] = "kcc"
    else:
        sources["controllers.node.reconcilerPeriod"] = "default"

    eff_grace: float | None = gc_grace
    if "TABBY_IPAM_GC_GRACE" in env:
        sources["controllers.node.leakGracePeriod"] = "env"
    elif node is not None and node.leakGracePeriod is not None:
        grace = parse_duration(node.leakGracePeriod)
        eff_grace = grace if grace > 0 else None
        sources["controllers.node.leakGracePeriod"] = "kcc"
    else:
        sources["controllers.node.leakGracePeriod"] = "default"

    eff_level = log_level
    if "TABBY_LOG_LEVEL" in env:
        sources["logSeverityScreen"] = "env"
    elif spec is not None and spec.logSeverityScreen is not None:
        eff_level = _LEVELS[spec.logSeverityScreen.lower()]
        sources["logSeverityScreen"] = "kcc"
    else:
        sources["logSeverityScreen"] = "default"
    return Effective(eff_interval, eff_grace, eff_level, env, sources)


def running_config(kcc: KubeControllersConfiguration | None, eff: Effective) -> dict[str, Any]:
    """``status.runningConfig``: the spec as written, with the honoured fields as run."""
    spec: dict[str, Any] = kcc.spec.model_dump(mode="json", exclude_none=True) if kcc is not None else {}
    node = spec.setdefault("controllers", {}).setdefault("node", {})
    node["reconcilerPeriod"] = _seconds_text(eff.interval)
    node["leakGracePeriod"] = _seconds_text(eff.gc_grace) if eff.gc_grace is not None else "0s"
    spec["logSeverityScreen"] = _LEVEL_NAMES.get(eff.log_level, "Info")
    return spec


class Unreadable(Exception):
    """The stored ``default`` is there but cannot be read (invalid): keep the settings in force."""


async def read(ds: Datastore) -> tuple[KubeControllersConfiguration | None, Any]:
    """The stored ``default`` as an apply left it (a large apply's staged write resolved), and its KV;
    (None, None) when there is none. Raises :class:`Unreadable` for an invalid document (logged): the
    caller keeps what runs rather than falling back to defaults (a GC turned off must stay off)."""
    kv = await staged.get_resolved(ds, KEY)
    if kv is None:
        return None, None
    try:
        return KubeControllersConfiguration.model_validate(json.loads(kv.value)), kv
    except ValueError as exc:
        log.warning("controller.kcc_invalid", error=str(exc).splitlines()[0][:200])
        raise Unreadable(str(exc)) from None


async def write_status(ds: Datastore, kv: Any, kcc: KubeControllersConfiguration, eff: Effective) -> bool:
    """Write ``status`` when it changed (compare on mod_revision: a user's edit in between wins, and
    the next cycle writes again). True when written."""
    doc = json.loads(kv.value)
    status = {"runningConfig": running_config(kcc, eff), **({"environmentVars": dict(eff.env)} if eff.env else {})}
    if doc.get("status") == status:
        return False
    doc["status"] = status
    result = await ds.txn([mod_is(KEY, kv.mod_revision)], [Put(KEY, doc)])
    return bool(result.succeeded)
