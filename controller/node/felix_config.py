"""What the agent takes from FelixConfiguration, live, with Felix's precedence.

Felix reads ``default`` and ``node.<nodename>`` (the node's fields win) over its built-in defaults,
and an environment variable beats both (``FELIX_<FIELD>`` upper-cased). Tabby's own variables
for the same settings (``TABBY_LOG_LEVEL``, ``TABBY_RESYNC_INTERVAL``) count as environment too.
The fields consumed, and what they do here:

* ``logSeverityScreen``: the agent's log level (Trace/Debug -> debug, Info, Warning, Error,
  Fatal -> critical), changed at once.
* ``routeRefreshInterval``: the dataplane's periodic full resync (routes, tunnels, policy),
  ``0`` = off, as in Felix; a change re-arms the timer at once.
* ``prometheusMetricsEnabled`` / ``prometheusMetricsPort`` / ``prometheusMetricsHost``: the
  metrics endpoint is started, stopped or moved.
* ``ipipEnabled`` / ``vxlanEnabled``: ``false`` turns that tunnel kind off on the node even when
  a pool asks for it (no device, routes to the pool's blocks go natively), and ``node status``
  says so; unset or ``true``, the pools decide (controller/node/graph.py EncapSettings).
* ``ipipMTU`` / ``vxlanMTU``: the MTU set on ``tunl0`` / ``vxlan.tabby`` (0 = the NIC's minus the
  overhead), and so the MTU of pods created afterwards (the smallest programmed tunnel's), unless
  TABBY_MTU overrides the pods' MTU.
* ``mtuIfacePattern``: when set, the host MTU is the smallest of the up interfaces it matches
  (instead of the autodetected interface's), and auto tunnel MTUs and the pods' follow it; read
  again at every FelixConfiguration change and datastore snapshot. Unset, Tabby keeps the
  autodetected interface (Felix would apply its default pattern).
* ``wireguardEnabled: true`` and ``bpfEnabled: true`` are refused at apply (controller/support_policy.py);
  one found in etcd anyway (written around tabbyctl) is reported, once, in the log and in
  ``node status``, and nothing is done.

Everything else the kind holds is stored and warned about at apply (the support-policy table).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.metrics import MetricsConfigError, MetricsSettings, agent_settings
from controller.node.graph import EncapSettings
from datamodel.resources.common import parse_duration
from datamodel.resources.felixconfig import FelixConfiguration, effective_felix_config

#: FelixConfiguration's logSeverityScreen -> the agent's level.
LOG_LEVELS = {"Trace": "debug", "Debug": "debug", "Info": "info", "Warning": "warning", "Error": "error",
              "Fatal": "critical"}
#: Fields refused at apply whose value true the agent will not act on.
NOT_HONOURED = {"wireguardEnabled": "WireGuard encryption", "bpfEnabled": "the eBPF dataplane"}


@dataclass(frozen=True)
class FelixSettings:
    log_level: str
    #: seconds; ``math.inf`` = no periodic resync (routeRefreshInterval 0)
    resync_interval: float
    metrics: MetricsSettings
    #: field -> where its value came from: "env", "datastore" or "default"
    sources: dict[str, str] = field(default_factory=dict)
    #: lines saying what was set but is not honoured
    ignored: tuple[str, ...] = ()
    #: ipipEnabled/vxlanEnabled/ipipMTU/vxlanMTU
    encap: EncapSettings = field(default_factory=EncapSettings)
    #: mtuIfacePattern when set (None: the autodetected interface's MTU, not Felix's default pattern)
    mtu_iface_pattern: str | None = None


def _set_in(configs: list[FelixConfiguration], node: str, name: str) -> bool:
    return any(c.name in ("default", f"node.{node}") and getattr(c.spec, name, None) is not None for c in configs)


def felix_settings(node: str, env: Mapping[str, str], configs: list[FelixConfiguration], *,
                   env_log_level: str | None, env_resync: float | None) -> FelixSettings:
    """The consumed settings for ``node``. ``env_log_level``/``env_resync`` are the agent's
    TABBY_LOG_LEVEL / TABBY_RESYNC_INTERVAL when set (None when not)."""
    eff = effective_felix_config(configs, node)
    sources: dict[str, str] = {}

    def source(name: str, from_env: bool) -> None:
        sources[name] = "env" if from_env else "datastore" if _set_in(configs, node, name) else "default"

    felix_env_level = (env.get("FELIX_LOGSEVERITYSCREEN") or "").strip().capitalize()
    if env_log_level:
        level = env_log_level
    elif felix_env_level in LOG_LEVELS:
        level = LOG_LEVELS[felix_env_level]
    else:
        level = LOG_LEVELS.get(str(eff.get("logSeverityScreen")), "info")
    source("logSeverityScreen", bool(env_log_level or felix_env_level in LOG_LEVELS))

    felix_env_refresh = (env.get("FELIX_ROUTEREFRESHINTERVAL") or "").strip()
    resync: float
    if env_resync is not None:
        resync = env_resync
    elif felix_env_refresh:
        resync = _seconds(felix_env_refresh)
    else:
        resync = _seconds(str(eff.get("routeRefreshInterval") or "90s"))
    source("routeRefreshInterval", env_resync is not None or bool(felix_env_refresh))

    try:
        metrics = agent_settings(env, eff)
    except MetricsConfigError:
        metrics = agent_settings({}, eff)
    for name in ("prometheusMetricsEnabled", "prometheusMetricsPort", "prometheusMetricsHost"):
        source(name, env.get(f"FELIX_{name.upper()}") not in (None, ""))

    ignored = tuple(f"FelixConfiguration: {name}: true is not honoured: Tabby has no {what}"
                    for name, what in NOT_HONOURED.items() if eff.get(name) is True)
    values: dict[str, Any] = {}
    for name in ("ipipEnabled", "vxlanEnabled", "ipipMTU", "vxlanMTU"):
        raw = (env.get(f"FELIX_{name.upper()}") or "").strip()
        parsed = _env_value(raw, bool if name.endswith("Enabled") else int) if raw else None
        values[name] = parsed if parsed is not None else eff.get(name)
        source(name, parsed is not None)
    encap = EncapSettings(ipip_enabled=values["ipipEnabled"], vxlan_enabled=values["vxlanEnabled"],
                          ipip_mtu=values["ipipMTU"] or None, vxlan_mtu=values["vxlanMTU"] or None)
    raw_pattern = (env.get("FELIX_MTUIFACEPATTERN") or "").strip()
    pattern = raw_pattern if raw_pattern and _regexp_ok(raw_pattern) else None
    source("mtuIfacePattern", pattern is not None)
    pattern = pattern or eff.get("mtuIfacePattern") or None
    return FelixSettings(level, resync, metrics, sources, ignored, encap, pattern)


def _regexp_ok(text: str) -> bool:
    try:
        re.compile(text)
    except re.error:
        return False
    return True


def _env_value(raw: str, kind: type) -> bool | int | None:
    """Felix's environment forms: true/false (any case, or 1/0) and decimal integers; else None (ignored)."""
    if kind is bool:
        return {"true": True, "1": True, "false": False, "0": False}.get(raw.lower())
    return int(raw) if raw.isdigit() else None


def _seconds(text: str) -> float:
    """A Go duration, or plain seconds (Felix's env form); 0 = off."""
    try:
        value = float(text)
    except ValueError:
        value = parse_duration(text)
    return math.inf if value <= 0 else value


def describe(settings: FelixSettings) -> dict[str, Any]:
    """For ``node status -o json``: the values in force and where each came from."""
    return {
        "logSeverityScreen": settings.log_level,
        "routeRefreshInterval": None if math.isinf(settings.resync_interval) else settings.resync_interval,
        "prometheusMetricsEnabled": settings.metrics.enabled,
        "prometheusMetricsPort": settings.metrics.port,
        "prometheusMetricsHost": settings.metrics.host,
        "ipipEnabled": settings.encap.ipip_enabled,
        "vxlanEnabled": settings.encap.vxlan_enabled,
        "ipipMTU": settings.encap.ipip_mtu or 0,
        "vxlanMTU": settings.encap.vxlan_mtu or 0,
        "mtuIfacePattern": settings.mtu_iface_pattern,
        "sources": dict(settings.sources),
        "not_honoured": list(settings.ignored),
    }
