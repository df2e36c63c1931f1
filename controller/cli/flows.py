"""``tabbyctl flows``: observe, summarise and draw the flows every node agent recorded.

Why the client asks each node and merges: each agent keeps its own ring buffer (felix_like.flowlog),
served on its flow API (controller/node/flows.py). The nodes are found in the datastore (each Node's
``tabby.io/flow-api`` annotation, else its BGP address and ``--api-port``), or named with
``--endpoint NODE=HOST:PORT`` (what ``tabbyctl lab flows`` passes: the lab's management addresses).
With etcd TLS configured, the same material is the client certificate and the CA the nodes'
certificates are checked against (the chain, not the host name: nodes' certificates are the
cluster's etcd client certificates and rarely name the node's address).

Output fields: docs/flows.md.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import click

from controller.cli.context import UserError, datastore_options, state

DEFAULT_API_PORT = 4244
ANNOTATION = "tabby.io/flow-api"
FETCH_TIMEOUT = 5.0


@dataclass(frozen=True)
class Target:
    node: str
    host: str
    port: int


def parse_endpoint(text: str) -> Target:
    node, sep, addr = text.partition("=")
    host, _, port = addr.rpartition(":")
    if not sep or not node or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--endpoint: expected NODE=HOST:PORT, got {text!r}")
    return Target(node, host.strip("[]"), int(port))


def node_targets(nodes: Iterable[dict[str, Any]], api_port: int) -> list[Target]:
    """Where each Node's flow API is: its annotation, else its BGP IPv4 address and ``api_port``."""
    out = []
    for doc in nodes:
        name = (doc.get("metadata") or {}).get("name") or ""
        ann = ((doc.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
        if ann:
            host, _, port = str(ann).rpartition(":")
            if host and port.isdigit():
                out.append(Target(name, host, int(port) if api_port == DEFAULT_API_PORT else api_port))
                continue
        addr = ((doc.get("spec") or {}).get("bgp") or {}).get("ipv4Address")
        if addr:
            out.append(Target(name, str(addr).split("/")[0], api_port))
    return sorted(out, key=lambda t: t.node)


def client_ssl_context() -> ssl.SSLContext | None:
    """TLS with the etcd material of this tabbyctl (None when etcd is not TLS here)."""
    cfg = state().etcd_config()
    if not (cfg.ca_cert_file or cfg.cert_file):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the chain is checked against the cluster CA; node certs rarely name the address
    if cfg.ca_cert_file:
        ctx.load_verify_locations(cfg.ca_cert_file)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


def resolve_targets(endpoints: tuple[str, ...], node: str | None, api_port: int) -> list[Target]:
    if endpoints:
        targets = [parse_endpoint(e) for e in endpoints]
    else:
        from datastore import staged
        from datastore.keys import resource_prefix

        async def body(ds: Any) -> list[dict[str, Any]]:
            kvs, _rev = await staged.read_resolved(ds, resource_prefix("nodes"))
            return [kv.json() for kv in kvs]

        targets = node_targets(state().run(body), api_port)
    if node is not None:
        targets = [t for t in targets if t.node == node]
        if not targets:
            raise UserError(f"--node: no node named {node!r} with a flow API")
    if not targets:
        raise UserError("no nodes with a flow API found (is an agent running and registered?)")
    return targets


def fetch(target: Target, path: str, ctx: ssl.SSLContext | None, timeout: float = FETCH_TIMEOUT) -> bytes:
    conn: http.client.HTTPConnection
    if ctx is not None:
        conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}: {body.decode(errors='replace').strip()}")
        return body
    finally:
        conn.close()


def fetch_records(target: Target, ctx: ssl.SSLContext | None, **params: Any) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
    wait = float(params.get("wait") or 0)
    body = fetch(target, f"/v1/flows?{query}", ctx, timeout=FETCH_TIMEOUT + wait)
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def gather(targets: list[Target], ctx: ssl.SSLContext | None, **params: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of every target (in parallel), sorted by time, and one warning per node that did not answer."""
    warnings: list[str] = []

    def one(t: Target) -> list[dict[str, Any]]:
        try:
            return fetch_records(t, ctx, **params)
        except (OSError, ssl.SSLError, ValueError) as exc:
            warnings.append(f"node {t.node} ({t.host}:{t.port}): {exc}")
            return []

    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        lists = list(pool.map(one, targets))
    out = [r for recs in lists for r in recs]
    out.sort(key=lambda r: (r.get("time", 0), r.get("node", ""), r.get("seq", 0)))
    return out, warnings


# -- filters -------------------------------------------------------------------------------------------


def _pod_matches(side: dict[str, Any], want: str) -> bool:
    ns, _, pod = want.rpartition("/")
    if side.get("pod") != pod:
        return False
    return not ns or side.get("namespace") == ns


def _label_matches(side: dict[str, Any], label: str) -> bool:
    key, eq, value = label.partition("=")
    labels = side.get("labels") or {}
    return key in labels and (not eq or labels[key] == value)


def _policy_names(rec: dict[str, Any]) -> set[str]:
    out = set()
    for r in [rec.get("rule") or {}, *(rec.get("trace") or [])]:
        if r.get("name"):
            out.add(r["name"])
            out.add(f"{r['namespace']}/{r['name']}" if r.get("namespace") else r["name"])
            if r.get("tier"):
                out.add(f"{r['tier']}.{r['name']}")
    return out


@dataclass(frozen=True)
class Filters:
    from_pod: str | None = None
    to_pod: str | None = None
    namespace: str | None = None
    labels: tuple[str, ...] = ()
    verdict: str | None = None
    policy: str | None = None
    port: int | None = None
    protocol: str | None = None
    node: str | None = None

    def match(self, rec: dict[str, Any]) -> bool:
        src, dst = rec.get("source") or {}, rec.get("destination") or {}
        if self.from_pod and not _pod_matches(src, self.from_pod):
            return False
        if self.to_pod and not _pod_matches(dst, self.to_pod):
            return False
        if self.namespace and self.namespace not in (src.get("namespace"), dst.get("namespace")):
            return False
        for label in self.labels:
            if not (_label_matches(src, label) or _label_matches(dst, label)):
                return False
        if self.verdict and rec.get("verdict") != self.verdict:
            return False
        if self.policy and self.policy not in _policy_names(rec):
            return False
        if self.port is not None and dst.get("port") != self.port:
            return False
        if self.protocol and rec.get("protocol") != self.protocol:
            return False
        return not (self.node and rec.get("node") != self.node)


def filter_options(func: Any) -> Any:
    for opt in reversed([
        click.option("--from-pod", metavar="[NS/]POD", help="Source pod."),
        click.option("--to-pod", metavar="[NS/]POD", help="Destination pod."),
        click.option("--namespace", "-n", metavar="NS", help="Either end in this namespace."),
        click.option("--label", "labels", metavar="KEY[=VALUE]", multiple=True,
                     help="Either end carries this label (repeat: all of them)."),
        click.option("--verdict", type=click.Choice(["allowed", "denied"]), help="Only this verdict."),
        click.option("--policy", metavar="NAME", help="Decided by (or passed through) this policy: NAME, NS/NAME "
                                                       "or TIER.NAME."),
        click.option("--port", type=click.IntRange(1, 65535), help="Destination port."),
        click.option("--protocol", type=click.Choice(["tcp", "udp", "icmp", "sctp", "icmpv6"]), help="Protocol."),
    ]):
        func = opt(func)
    return func


def target_options(func: Any) -> Any:
    for opt in reversed([
        click.option("--node", metavar="NAME", help="Only this node's flows (default: every node)."),
        click.option("--endpoint", "endpoints", metavar="NODE=HOST:PORT", multiple=True,
                     help="Ask these flow APIs instead of the nodes registered in the datastore."),
        click.option("--api-port", type=click.IntRange(1, 65535), default=DEFAULT_API_PORT, show_default=True,
                     help="Flow API port of nodes without a tabby.io/flow-api annotation."),
    ]):
        func = opt(func)
    return datastore_options(func)


# -- rendering --------------------------------------------------------------------------------------------


def endpoint_text(side: dict[str, Any]) -> str:
    name = f"{side['namespace']}/{side['pod']}" if side.get("pod") else side.get("ip", "?")
    return f"{name}:{side['port']}" if side.get("port") is not None else name


def decided_by(rec: dict[str, Any]) -> str:
    rule = rec.get("rule") or {}
    if rec.get("policy") is None and rec.get("reason"):
        text = rec["reason"]
    elif rule.get("name"):
        pol = f"{rule['namespace']}/{rule['name']}" if rule.get("namespace") else rule["name"]
        tier = f"{rule['tier']}|" if rule.get("tier") else ""
        idx = f" rule {rule['index']}" if rule.get("index") is not None else ""
        text = f"{tier}{pol}{idx} {rule.get('action', '')}".strip()
    else:  # pragma: no cover - a record without rule or reason
        text = rec.get("reason") or rule.get("action") or ""
    if rec.get("trace"):
        text = " -> ".join([*(f"{t.get('name')} {t.get('action')}" for t in rec["trace"]), text])
    return text


def table(records: list[dict[str, Any]]) -> str:
    rows = [("TIME", "NODE", "DIRECTION", "VERDICT", "PROTO", "SOURCE", "DESTINATION", "FLAGS", "DECIDED BY")]
    for r in records:
        flags = ",".join(r.get("tcp_flags") or []) or (f"type {r['icmp']['type']}" if r.get("icmp") else "")
        t = float(r.get("time", 0))
        staged = f"  [staged: {r['staged']['verdict']} by {r['staged']['decided_by']}]" if r.get("staged") else ""
        rows.append((time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}",
                     r.get("node", ""), r.get("direction", ""), r.get("verdict", "").upper(), r.get("protocol", ""),
                     endpoint_text(r.get("source") or {}), endpoint_text(r.get("destination") or {}), flags,
                     decided_by(r) + staged))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] + "\n"
                   for row in rows)


def emit(records: Iterable[dict[str, Any]], output: str, header: bool = True) -> None:
    recs = list(records)
    if output == "json":
        for r in recs:
            click.echo(json.dumps(r, sort_keys=True))
    elif recs or header:
        text = table(recs)
        click.echo(text if header else text.split("\n", 1)[1], nl=False)


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        click.echo(f"Warning: {w}", err=True)


# -- commands --------------------------------------------------------------------------------------------


@click.group()
def flows() -> None:
    """Flows the node agents recorded (at connection setup): verdict, deciding policy and rule, reason."""


@flows.command("observe")
@target_options
@filter_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing new flows (Ctrl-C ends).")
@click.option("--duration", type=click.FloatRange(0, min_open=True), metavar="S",
              help="With --follow: stop after S seconds.")
@click.option("--since", metavar="S|EPOCH", help="Only flows of the last S seconds (30, 5m, 1h) or since EPOCH.")
@click.option("--last", type=click.IntRange(0), metavar="N", help="Only the last N flows (after filtering).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table, or json: one object per line (fields in docs/flows.md).")
@click.option("--staged", is_flag=True, help="Add each flow's verdict with the staged policies enforced "
                                             "(would allow / would deny; reads the datastore).")
@click.option("--flows", "flows_file", metavar="FILE",
              help="Read the records from FILE (saved `observe -o json` output) instead of the nodes.")
def observe(node: str | None, endpoints: tuple[str, ...], api_port: int, follow: bool, duration: float | None,
            since: str | None, last: int | None, output: str, staged: bool, flows_file: str | None,
            **filters: Any) -> None:
    """Flows of every node (or --node), oldest first."""
    flt = Filters(**filters, node=node) if flows_file else Filters(**filters)
    since_t = parse_since(since)
    if flows_file is not None:
        if follow:
            raise UserError("--follow: not with --flows (a file does not grow)")
        from controller.cli.policy_cmd import read_flow_file

        records = [r for r in read_flow_file(flows_file) if since_t is None or r.get("time", 0) >= since_t]
        targets: list[Target] = []
        ctx = None
    else:
        targets = resolve_targets(endpoints, node, api_port)
        ctx = client_ssl_context()
        records, warnings = gather(targets, ctx, since=since_t)
        _warn(warnings)
        if len(warnings) == len(targets):
            raise UserError("no node's flow API answered")
    shown = [r for r in records if flt.match(r)]
    if last is not None:
        shown = shown[-last:] if last else []
    judge = None
    if staged:
        from controller.cli.policy_cmd import StagedJudge

        judge = StagedJudge()
        shown = judge.annotate(shown)
    emit(shown, output)
    if not follow:
        return
    after = {t.node: max((r.get("seq", 0) for r in records if r.get("node") == t.node), default=0) for t in targets}
    end = time.monotonic() + duration if duration else None
    for batch in follow_records(targets, ctx, after, end):
        kept = [r for r in batch if flt.match(r)]
        emit(judge.annotate(kept) if judge is not None else kept, output, header=False)
        sys.stdout.flush()


def follow_records(targets: list[Target], ctx: ssl.SSLContext | None, after: dict[str, int],
                   end: float | None) -> Iterator[list[dict[str, Any]]]:
    """Long-poll every node (in parallel) for records newer than ``after``; yields each node's batches."""
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        while end is None or time.monotonic() < end:
            wait = 2.0 if end is None else max(0.1, min(2.0, end - time.monotonic()))

            def one(t: Target, wait: float = wait) -> list[dict[str, Any]]:
                try:
                    return fetch_records(t, ctx, after=after[t.node], wait=wait)
                except (OSError, ssl.SSLError, ValueError):
                    time.sleep(min(wait, 1.0))
                    return []

            batches = list(pool.map(one, targets))
            merged = []
            for t, batch in zip(targets, batches, strict=True):
                if batch:
                    after[t.node] = max(r.get("seq", 0) for r in batch)
                    merged.extend(batch)
            merged.sort(key=lambda r: (r.get("time", 0), r.get("node", ""), r.get("seq", 0)))
            if merged:
                yield merged


def parse_since(text: str | None) -> float | None:
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    raw = text.strip()
    mult = units.get(raw[-1:], 1) if raw[-1:].isalpha() else 1
    num = raw[:-1] if raw[-1:].isalpha() else raw
    try:
        value = float(num)
    except ValueError:
        raise UserError(f"--since: expected seconds (30, 5m, 1h) or an epoch time, got {text!r}") from None
    if value < 0 or (raw[-1:].isalpha() and raw[-1:] not in units):
        raise UserError(f"--since: expected seconds (30, 5m, 1h) or an epoch time, got {text!r}")
    return value if value > 1e9 else time.time() - value * mult


@flows.command("summary")
@target_options
@filter_options
@click.option("--since", metavar="S|EPOCH", help="Only flows of the last S seconds or since EPOCH.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="Rows per table.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def summary(node: str | None, endpoints: tuple[str, ...], api_port: int, since: str | None, top: int, output: str,
            **filters: Any) -> None:
    """Top talkers (pod pairs by flows and bytes) and top denies (pod pairs by denied flows, with the reason)."""
    flt = Filters(**filters)
    targets = resolve_targets(endpoints, node, api_port)
    records, warnings = gather(targets, client_ssl_context(), since=parse_since(since))
    _warn(warnings)
    result = summarise([r for r in records if flt.match(r)], top)
    if output == "json":
        click.echo(json.dumps(result, sort_keys=True))
        return
    click.echo(f"{result['flows']} flows ({result['allowed']} allowed, {result['denied']} denied) "
               f"from {len(targets)} node(s)\n")
    click.echo("TOP TALKERS")
    rows = [("SOURCE", "DESTINATION", "FLOWS", "BYTES")] + [
        (t["source"], t["destination"], str(t["flows"]), str(t["bytes"])) for t in result["top_talkers"]]
    click.echo(_columns(rows))
    click.echo("TOP DENIES")
    rows = [("SOURCE", "DESTINATION", "PORT", "DENIED", "DECIDED BY")] + [
        (t["source"], t["destination"], str(t["port"]), str(t["flows"]), t["decided_by"]) for t in result["top_denies"]]
    click.echo(_columns(rows), nl=False)


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


def _name(side: dict[str, Any]) -> str:
    return f"{side['namespace']}/{side['pod']}" if side.get("pod") else str(side.get("ip", "?"))


def summarise(records: list[dict[str, Any]], top: int) -> dict[str, Any]:
    talkers: Counter[tuple[str, str]] = Counter()
    nbytes: Counter[tuple[str, str]] = Counter()
    denies: Counter[tuple[str, str, Any, str]] = Counter()
    for r in connections(records):
        src, dst = r.get("source") or {}, r.get("destination") or {}
        pair = (_name(src), _name(dst))
        if r.get("verdict") == "allowed":
            talkers[pair] += 1
            c = r.get("counters") or {}
            nbytes[pair] += int(c.get("bytes_to_destination", 0)) + int(c.get("bytes_to_source", 0))
        elif r.get("verdict") == "denied":
            denies[(pair[0], pair[1], dst.get("port"), decided_by(r))] += 1
    return {
        "flows": len(records), "allowed": sum(1 for r in records if r.get("verdict") == "allowed"),
        "denied": sum(1 for r in records if r.get("verdict") == "denied"),
        "top_talkers": [{"source": s, "destination": d, "flows": n, "bytes": nbytes[(s, d)]}
                        for (s, d), n in sorted(talkers.items(), key=lambda kv: (-kv[1], -nbytes[kv[0]], kv[0]))[:top]],
        "top_denies": [{"source": s, "destination": d, "port": p, "flows": n, "decided_by": why}
                       for (s, d, p, why), n in sorted(denies.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]],
    }


# -- graph --------------------------------------------------------------------------------------------------

VERDICT_COLOURS = {"allowed": "#2e7d32", "denied": "#c62828", "unknown": "#9e9e9e"}


def connections(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per connection: a connection between pods is logged once per workload side it
    crosses (the sender's egress, the receiver's ingress); it counts once, denied if either side
    denied it (that record is kept, it names the deciding rule)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        src, dst = r.get("source") or {}, r.get("destination") or {}
        key = (r.get("protocol"), src.get("ip"), src.get("port"), dst.get("ip"), dst.get("port"),
               int(r.get("time", 0)) if src.get("port") is None else 0)
        have = out.get(key)
        if have is None or (have.get("verdict") != "denied" and r.get("verdict") == "denied") or (
                have.get("verdict") == r.get("verdict") and r.get("counters") and not have.get("counters")):
            out[key] = r
    return list(out.values())


def graph_dot(records: list[dict[str, Any]], title: str = "Tabby flows") -> str:
    """Graphviz: a cluster per namespace, a box per pod (ellipse for an address outside the pods),
    one edge per (source, destination, verdict) coloured by verdict, labelled with ports and counts
    of connections."""
    nodes: dict[str, tuple[str | None, str]] = {}
    edges: dict[tuple[str, str, str], Counter[str]] = {}
    for r in connections(records):
        src, dst = r.get("source") or {}, r.get("destination") or {}
        a, b = _name(src), _name(dst)
        nodes.setdefault(a, (src.get("namespace"), src.get("pod") or a))
        nodes.setdefault(b, (dst.get("namespace"), dst.get("pod") or b))
        port = r.get("protocol", "") + (f"/{dst['port']}" if dst.get("port") is not None else "")
        edges.setdefault((a, b, r.get("verdict", "unknown")), Counter())[port] += 1

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    out = ["digraph flows {", f"  label={q(title)}; labelloc=t; fontname=Helvetica; rankdir=LR;",
           "  node [fontname=Helvetica, shape=box, style=\"rounded,filled\", fillcolor=\"#e3f2fd\"];",
           "  edge [fontname=Helvetica, fontsize=10];"]
    by_ns: dict[str | None, list[str]] = {}
    for key, (ns, _label) in sorted(nodes.items(), key=lambda kv: (kv[1][0] or "", kv[0])):
        by_ns.setdefault(ns, []).append(key)
    for i, (ns, keys) in enumerate(sorted(by_ns.items(), key=lambda kv: kv[0] or "")):
        if ns is None:
            for k in keys:
                out.append(f"  {q(k)} [shape=ellipse, fillcolor=\"#eeeeee\"];")
            continue
        out.append(f"  subgraph cluster_{i} {{ label={q('namespace ' + ns)}; style=\"rounded,dashed\";")
        for k in keys:
            out.append(f"    {q(k)} [label={q(nodes[k][1])}];")
        out.append("  }")
    for (a, b, verdict), ports in sorted(edges.items()):
        label = ", ".join(f"{p} x{n}" for p, n in sorted(ports.items()))
        colour = VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["unknown"])
        style = "solid" if verdict == "allowed" else "dashed"
        out.append(f"  {q(a)} -> {q(b)} [color={q(colour)}, fontcolor={q(colour)}, style={style}, "
                   f"label={q(verdict + ': ' + label)}, penwidth={1 + min(4, sum(ports.values()) // 5)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def render_graph(dot: str, path: str) -> None:
    fmt = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if fmt == "dot":
        with open(path, "w") as f:
            f.write(dot)
        return
    if fmt not in ("svg", "png"):
        raise UserError(f"-o: the file must end in .svg, .png or .dot, got {path!r}")
    if shutil.which("dot") is None:
        raise UserError("-o: Graphviz 'dot' is not installed (Debian package graphviz; make setup installs it)")
    proc = subprocess.run(["dot", f"-T{fmt}", "-o", path], input=dot.encode(), capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise UserError(f"-o: dot failed: {proc.stderr.decode(errors='replace').strip()[:200]}")


@flows.command("graph")
@target_options
@filter_options
@click.option("--since", metavar="S|EPOCH", help="Only flows of the last S seconds or since EPOCH.")
@click.option("-o", "--output", "out", metavar="FILE", default="flows.svg", show_default=True,
              help="FILE.svg, FILE.png or FILE.dot.")
def graph(node: str | None, endpoints: tuple[str, ...], api_port: int, since: str | None, out: str,
          **filters: Any) -> None:
    """Who talks to whom: namespaces and pods, edges coloured by verdict with ports and counts."""
    flt = Filters(**filters)
    targets = resolve_targets(endpoints, node, api_port)
    records, warnings = gather(targets, client_ssl_context(), since=parse_since(since))
    _warn(warnings)
    shown = [r for r in records if flt.match(r)]
    render_graph(graph_dot(shown, f"Tabby flows: {len(shown)} flows from {len(targets)} node(s)"), out)
    click.echo(f"wrote {out} ({len(shown)} flows)")
