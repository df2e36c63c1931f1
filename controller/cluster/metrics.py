"""The controller's Prometheus metrics (served by controller/metrics.py on port 9094 by default).

Read at scrape time from the controller's state: whether it leads, cycles run and failed, GC
candidates waiting for their grace period, and every action taken (node expired, endpoints
deleted, addresses and handles released, blocks returned, releases skipped because the candidate
changed), plus the datastore client's etcd counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.node.metrics import etcd_families

if TYPE_CHECKING:
    from controller.cluster.service import Controller


def controller_registry(controller: Controller) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ControllerCollector(controller))
    return registry


class _ControllerCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Any]:
        c = self.controller
        ident = c.election.identity
        leading = GaugeMetricFamily("tabby_controller_leader", "1 while this controller holds the leader lease",
                                    labels=["identity"])
        leading.add_metric([ident], 1 if c.leading else 0)
        yield leading
        cycles = CounterMetricFamily("tabby_controller_cycles", "Reconcile cycles run while leading")
        cycles.add_metric([], c.cycles)
        yield cycles
        errors = CounterMetricFamily("tabby_controller_cycle_errors", "Cycles cut short by an etcd error")
        errors.add_metric([], c.cycle_errors)
        yield errors
        pending = GaugeMetricFamily("tabby_controller_gc_candidates", "IPAM GC candidates inside their grace period")
        pending.add_metric([], c.gc.pending)
        yield pending
        duration = GaugeMetricFamily("tabby_controller_last_cycle_seconds", "Duration of the last cycle")
        duration.add_metric([], c.last_cycle_seconds)
        yield duration
        actions = CounterMetricFamily("tabby_controller_actions", "Actions taken, by kind", labels=["action"])
        for action in sorted({"node_expired", "workload_endpoints_deleted", "tunnel_addresses_released",
                              "blocks_released", "blocks_unaffined", "gc_released_workload", "gc_released_tunnel",
                              "gc_released_handle", "gc_released_addresses", "gc_skipped", *c.actions}):
            actions.add_metric([action], c.actions.get(action, 0))
        yield actions
        if c.kube_sync is not None:
            sync = CounterMetricFamily("tabby_controller_kube_sync", "Kubernetes sync: lists, relists (410 Gone), "
                                       "watches, events, bookmarks, errors and writes, by resource",
                                       labels=["resource", "what"])
            for (res, what), n in sorted(c.kube_sync.stats.items()):
                sync.add_metric([res, what], n)
            yield sync
            in_sync = GaugeMetricFamily("tabby_controller_kube_in_sync", "1 once every Kubernetes list has landed")
            in_sync.add_metric([], 1 if c.kube_sync.in_sync else 0)
            yield in_sync
        yield from etcd_families()
