"""tabbyctl flows' pure parts: where the nodes are, filters, --since, summary, the graph; agent flow settings;
and bad input: one line, non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controller.cli.context import UserError
from controller.cli.flows import Filters, Target, graph_dot, node_targets, parse_endpoint, parse_since, summarise
from controller.node.flows import FlowConfigError, FlowSettings

TABBYCTL = str(Path(sys.executable).parent / "tabbyctl")


IPS = {"prod/cli": "10.0.0.1", "prod/srv": "10.0.0.2", "dev/far": "10.0.1.1"}


def rec(src: str, dst: str, verdict: str = "allowed", port: int | None = 80, proto: str = "tcp", **kw: Any) -> dict:
    sns, spod = src.split("/")
    dns, dpod = dst.split("/")
    base = {"seq": 1, "time": kw.pop("time", 100.0), "node": kw.pop("node", "n1"), "direction": "ingress",
            "verdict": verdict, "protocol": proto,
            "source": {"ip": IPS[src], "port": 40000, "pod": spod, "namespace": sns, "labels": {"role": "c"}},
            "destination": {"ip": IPS[dst], "port": port, "pod": dpod, "namespace": dns, "labels": {"app": "w"}},
            "rule": {"name": "p1", "namespace": dns, "tier": "default", "index": 0, "action": "allow",
                     "kind": "KubernetesNetworkPolicy"},
            "policy": {"name": "p1"}, "trace": [], "reason": "", "counters": None}
    base.update(kw)
    return base


def test_node_targets_from_annotation_or_address() -> None:
    nodes = [{"metadata": {"name": "b", "annotations": {"tabby.io/flow-api": "10.0.0.2:14244"}}},
             {"metadata": {"name": "a"}, "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}}},
             {"metadata": {"name": "c"}, "spec": {}}]
    assert node_targets(nodes, 4244) == [Target("a", "10.0.0.1", 4244), Target("b", "10.0.0.2", 14244)]
    assert parse_endpoint("n1=[fd00::1]:4244") == Target("n1", "fd00::1", 4244)
    for bad in ("n1", "n1=host", "=h:1", "n1=h:99999"):
        with pytest.raises(UserError):
            parse_endpoint(bad)


def test_filters() -> None:
    r = rec("prod/cli", "prod/srv")
    assert Filters(from_pod="prod/cli").match(r) and Filters(from_pod="cli").match(r)
    assert not Filters(from_pod="dev/cli").match(r) and not Filters(to_pod="cli").match(r)
    assert Filters(namespace="prod", labels=("role=c", "app")).match(r)
    assert not Filters(labels=("role=x",)).match(r)
    assert Filters(verdict="allowed", policy="p1", port=80, protocol="tcp").match(r)
    assert Filters(policy="prod/p1").match(r) and Filters(policy="default.p1").match(r)
    assert not Filters(policy="p2").match(r) and not Filters(port=81).match(r)
    assert not Filters(node="n2").match(r)


def test_since() -> None:
    assert parse_since(None) is None
    assert abs(parse_since("5m") - (time.time() - 300)) < 2  # type: ignore[operator]
    assert parse_since("1700000000") == 1700000000
    for bad in ("x", "5q", "-3"):
        with pytest.raises(UserError):
            parse_since(bad)


def test_summary_counts_a_connection_once() -> None:
    recs = [rec("prod/cli", "prod/srv"),
            rec("prod/cli", "prod/srv", direction="egress", counters={"bytes_to_destination": 10,
                                                                      "bytes_to_source": 90}),
            rec("dev/far", "prod/srv", verdict="denied", reason="end of tier default: default deny", policy=None)]
    s = summarise(recs, 5)
    assert s["top_talkers"] == [{"source": "prod/cli", "destination": "prod/srv", "flows": 1, "bytes": 100}]
    assert s["top_denies"][0]["decided_by"] == "end of tier default: default deny"
    assert (s["flows"], s["allowed"], s["denied"]) == (3, 2, 1)


def test_graph_dot() -> None:
    dot = graph_dot([rec("prod/cli", "prod/srv"), rec("dev/far", "prod/srv", verdict="denied")])
    assert 'label="namespace prod"' in dot and 'label="namespace dev"' in dot
    assert '"prod/cli" -> "prod/srv" [color="#2e7d32"' in dot and 'label="allowed: tcp/80 x1"' in dot
    assert '"dev/far" -> "prod/srv" [color="#c62828"' in dot and "style=dashed" in dot


def test_flow_settings() -> None:
    assert FlowSettings.from_env({}) == FlowSettings(True, 4096, 4244)
    assert FlowSettings.from_env({"TABBY_FLOW_LOGS": "false", "TABBY_FLOW_BUFFER": "10",
                                  "TABBY_FLOW_API_PORT": "0"}) == FlowSettings(False, 10, 0)
    for env in ({"TABBY_FLOW_LOGS": "maybe"}, {"TABBY_FLOW_BUFFER": "0"}, {"TABBY_FLOW_API_PORT": "70000"}):
        with pytest.raises(FlowConfigError, match=next(iter(env))):
            FlowSettings.from_env(env)


@pytest.mark.parametrize(("args", "message"), [
    (["flows", "observe", "--endpoint", "nonsense"], "--endpoint: expected NODE=HOST:PORT"),
    (["flows", "observe", "--endpoint", "n=127.0.0.1:1", "--since", "soon"], "--since"),
    (["flows", "graph", "--endpoint", "n=127.0.0.1:1", "-o", "x.gif"], "-o: the file must end in .svg, .png or .dot"),
    (["policy", "what-if", "-f", "/nonexistent.yaml"], "nonexistent"),
    (["policy", "explain", "--from", "a/b", "--to", "c/d"], "--port: required for tcp"),
    (["policy", "explain", "--from", "10.0.0.1", "--to", "fd00::1", "--port", "80"], "a packet has one family"),
    (["policy", "explain", "-6", "--from", "10.0.0.1", "--to", "a/b", "--port", "80"], "-6: the address given is IPv4"),
    (["policy", "explain", "--from", "a/b", "--to", "c/d", "--protocol", "icmpv6"], "icmpv6: IPv6 only"),
])
def test_bad_input_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([TABBYCTL, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
