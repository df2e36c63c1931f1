"""The agent's Prometheus metrics and probes (served by controller/metrics.py).

Why a collector reading the agent on each scrape (plus a few histograms fed as events happen):
gauges such as BGP sessions by state, RIB size, routes programmed or this node's IPAM blocks
already live in the agent's state; reading them at scrape time needs no bookkeeping in the code
paths that change them. Durations and latencies are histograms observed where they happen
(dataplane apply results through ``Dataplane.observers``, CNI requests in ``Agent.handle``).

Readiness (``/readyz``, and ``node status``): the first datastore snapshot is applied to the
dataplane and, with the ``bird`` backend, BGP is configured (ExaBGP has its configuration).
Health (``/healthz``): the agent's main task is running.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.metrics import MetricsServer, MetricsSettings
from datastore.client import STATS
from felix_like.netns import run_in_netns
from felix_like.route_programmer import ApplyResult

log = structlog.get_logger("tabby.node.metrics")

if TYPE_CHECKING:
    from controller.node.agent import Agent

CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
APPLY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


def etcd_families(prefix: str = "tabby") -> Iterator[CounterMetricFamily]:
    """The datastore client's process-wide counts (datastore.client.STATS)."""
    for name, doc in (("retries", "etcd calls retried (endpoint away, fail-over)"),
                      ("unavailable", "etcd calls that gave up: no endpoint answered in the bounded wait"),
                      ("errors", "etcd calls refused by etcd"),
                      ("watch_resyncs", "full re-reads of the watched prefix (start, compaction)"),
                      ("watch_breaks", "watch streams that broke and were re-established")):
        family = CounterMetricFamily(f"{prefix}_etcd_{name}", doc)
        family.add_metric([], STATS.get(name, 0))
        yield family


class AgentMetrics:
    """A registry with the agent's metrics; ``registry`` is what the server exports."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.cni_seconds = Histogram(
            "tabby_cni_request_seconds", "CNI requests served by the agent, by command and result",
            ["command", "result"], buckets=CNI_BUCKETS, registry=self.registry)
        self.apply_seconds = Histogram(
            "tabby_dataplane_apply_seconds", "Route programming passes, by kind (delta, resync)",
            ["kind"], buckets=APPLY_BUCKETS, registry=self.registry)
        self.apply_batch = Histogram(
            "tabby_dataplane_apply_batch_size", "Netlink route messages written per pass",
            ["kind"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_AgentCollector(agent))

    def observe_cni(self, command: str, seconds: float, error_code: int | None) -> None:
        result = "ok" if error_code is None else f"error_{error_code}"
        self.cni_seconds.labels(command, result).observe(seconds)

    def observe_apply(self, result: ApplyResult) -> None:
        self.apply_seconds.labels(result.kind).observe(result.seconds)
        self.apply_batch.labels(result.kind).observe(result.writes)


def readiness(agent: Agent) -> tuple[bool, list[str]]:
    """(ready, reasons): the first snapshot applied and, with BGP, the speaker configured."""
    reasons = []
    reason = agent.not_ready_reason()
    if reason:
        reasons.append(reason)
    if agent.bgp is not None and not reason and not getattr(agent.bgp, "started", False):
        reasons.append("BGP not configured yet")
    return not reasons, reasons


class _AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        agent = self.agent
        node = agent.config.nodename
        ready, _ = readiness(agent)
        g = GaugeMetricFamily("tabby_agent_ready", "1 when the agent is ready (see /readyz)", labels=["node"])
        g.add_metric([node], 1 if ready else 0)
        yield g
        yield from self._bgp(node)
        routes = GaugeMetricFamily("tabby_routes_programmed", "Kernel routes the agent owns (protocol 81)",
                                   labels=["node"])
        dp = agent.dataplane
        routes.add_metric([node], len(dp.programmer.actual) if dp is not None and dp.started else 0)
        yield routes
        yield from self._ipam(node)
        yield from self._flows()
        yield from etcd_families()

    def _flows(self) -> Iterator[Any]:
        """Flow records by verdict and direction, policy verdicts by policy/tier/action, drops by reason
        (felix_like.flowlog.FlowCounters; copied first: the reader thread keeps counting)."""
        flows = getattr(self.agent, "flows", None)
        if flows is None:
            return
        c = flows.recorder.counters
        fam = CounterMetricFamily("tabby_flows", "Flows logged at connection setup, by verdict and direction",
                                  labels=["verdict", "direction"])
        for (verdict, direction), n in sorted(dict(c.flows).items()):
            fam.add_metric([verdict, direction], n)
        yield fam
        fam = CounterMetricFamily("tabby_policy_verdicts", "Policy rule verdicts met by new connections",
                                  labels=["policy", "tier", "action"])
        for (policy, tier, action), n in sorted(dict(c.verdicts).items()):
            fam.add_metric([policy, tier, action], n)
        yield fam
        fam = CounterMetricFamily("tabby_drops", "Connections dropped by policy, by reason", labels=["reason"])
        for reason, n in sorted(dict(c.drops).items()):
            fam.add_metric([reason], n)
        yield fam
        ring = flows.ring
        for name, value, doc in (
                ("tabby_flow_records_dropped", ring.dropped, "Flow records evicted from the full ring buffer"),
                ("tabby_flow_events_lost", c.lost, "Netlink batches the kernel dropped (receive buffer full)")):
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], value)
            yield fam
        g = GaugeMetricFamily("tabby_flow_records", "Flow records held in the ring buffer")
        g.add_metric([], len(ring))
        yield g

    def _bgp(self, node: str) -> Iterator[Any]:
        if self.agent.bgp is None:
            return
        status = self.agent.bgp.status()
        counters = status.get("counters") or {}
        sessions = status.get("sessions") or []
        by_state = GaugeMetricFamily("tabby_bgp_sessions", "BGP sessions by state", labels=["node", "state"])
        for state in sorted({"Established", "Connect", "Idle", *counters.get("sessions_by_state", {})}):
            by_state.add_metric([node, state], counters.get("sessions_by_state", {}).get(state, 0))
        yield by_state
        up = GaugeMetricFamily("tabby_bgp_session_up", "1 when the session is Established",
                               labels=["node", "peer", "type"])
        received = GaugeMetricFamily("tabby_bgp_prefixes_received", "Paths held from the peer (Adj-RIB-In)",
                                     labels=["node", "peer"])
        for s in sessions:
            up.add_metric([node, s["peer_address"], s["peer_type"]], 1 if s["bgp_state"] == "Established" else 0)
            received.add_metric([node, s["peer_address"]], s.get("prefixes_received", 0))
        yield up
        yield received
        for name, key, doc in (("prefixes_advertised", "prefixes_advertised", "Prefixes this node originates"),
                               ("rib_prefixes", "rib_prefixes", "Prefixes with a best route (Loc-RIB size)"),
                               ("rib_paths", "rib_paths", "Paths in the Adj-RIBs-In"),
                               ("learned_routes", "learned_routes", "BGP routes handed to the dataplane")):
            fam = GaugeMetricFamily(f"tabby_bgp_{name}", doc, labels=["node"])
            fam.add_metric([node], counters.get(key, 0))
            yield fam

    def _ipam(self, node: str) -> Iterator[Any]:
        blocks = GaugeMetricFamily("tabby_ipam_blocks", "IPAM blocks affine to this node", labels=["node"])
        addrs = GaugeMetricFamily("tabby_ipam_addresses", "Addresses in this node's blocks, by state",
                                  labels=["node", "state"])
        n_blocks = allocated = free = 0
        mine = f"host:{node}"
        for block in list(self.agent.model.blocks().values()):
            if block.affinity != mine:
                continue
            n_blocks += 1
            allocs = block.allocations
            used = sum(1 for a in allocs if a is not None)
            allocated += used
            free += len(allocs) - used
        blocks.add_metric([node], n_blocks)
        addrs.add_metric([node, "allocated"], allocated)
        addrs.add_metric([node, "free"], free)
        yield blocks
        yield addrs


def status_doc(agent: Agent) -> str:
    """Readiness as JSON for logs and diagnostics."""
    ready, reasons = readiness(agent)
    return json.dumps({"node": agent.config.nodename, "ready": ready, "reasons": reasons, "time": time.time()})


async def start_metrics(agent: Agent, settings: MetricsSettings) -> MetricsServer | None:
    """Listen inside the node's network namespace (TABBY_NETNS, or where the agent runs) when enabled."""
    if not settings.enabled:
        return None
    server = MetricsServer(
        agent.metrics.registry,
        healthz=lambda: agent_health(agent),
        readyz=lambda: readiness(agent),
    )
    try:
        sock = await asyncio.to_thread(
            run_in_netns, agent.config.netns, lambda: MetricsServer.listening_socket(settings.host, settings.port))
    except OSError as exc:
        # Networking matters more than its metrics: say so loudly and run without the endpoint.
        log.error("metrics.listen_failed", port=settings.port, error=exc.strerror or str(exc),
                  hint="FELIX_PROMETHEUSMETRICSPORT names a port already in use")
        return None
    await server.start(sock)
    return server


def agent_health(agent: Agent) -> tuple[bool, list[str]]:
    main = next((t for t in agent._tasks if t.get_name() == "agent-main"), None)
    if main is not None and main.done():
        return False, ["the agent's main task has ended"]
    return True, []
