"""Pictures of a topology: Graphviz (dot, svg, png) and Mermaid (md). Pure text generation.

Why from the file alone: a user wants to look at the lab before deploying it, and the picture
must not need root. SVG and PNG come from the ``dot`` binary (Debian graphviz), so no Python
dependency is needed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError
from lab.kinds import handler_for
from lab.topology import Topology


@dataclass
class NodeLive:
    """What a deployed node shows: data-plane addresses, its AS, its BGP sessions, its pods."""

    addresses: list[str] = field(default_factory=list)  # "eth1 10.0.12.1/30"
    asn: str | None = None
    sessions: dict[str, str] = field(default_factory=dict)  # peer address -> state
    pods: list[str] = field(default_factory=list)


Live = dict[str, NodeLive]
MGMT_NODE = "__mgmt__"

FORMATS = ("svg", "png", "dot", "md")
# fill colour per handler: routers warm, datastore green, plain namespaces grey
COLOURS = {
    "frr": "#fde2c8",
    "bird": "#fff3b0",
    "gobgp": "#d7ecff",
    "etcd": "#d9f2d9",
    "tabby-node (placeholder)": "#ead7ff",
    "linux": "#eeeeee",
}


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_label(topo: Topology, name: str, live: Live | None = None) -> list[str]:
    node = topo.nodes[name]
    lines = [name, f"{handler_for(node.image).name}: {node.image}"]
    if node.mgmt_ipv4 is not None:
        lines.append(str(node.mgmt_ipv4.ip))
    info = (live or {}).get(name)
    if info is not None:
        if info.asn:
            lines.append(f"AS {info.asn}")
        lines += info.addresses
        if info.pods:
            lines.append("pods: " + ", ".join(info.pods))
    return lines


def session_edges(topo: Topology, live: Live) -> list[tuple[str, str, str]]:
    """BGP sessions between nodes of the lab as (node, peer node, state), each pair once."""
    owner = {addr.split()[-1].split("/")[0]: name for name, info in live.items() for addr in info.addresses}
    for name, node in topo.nodes.items():
        if node.mgmt_ipv4 is not None:
            owner.setdefault(str(node.mgmt_ipv4.ip), name)
    seen: set[frozenset[str]] = set()
    edges: list[tuple[str, str, str]] = []
    for name, info in live.items():
        for peer, state in sorted(info.sessions.items()):
            other = owner.get(peer)
            if other is None or other == name or frozenset((name, other)) in seen:
                continue
            seen.add(frozenset((name, other)))
            edges.append((name, other, state))
    return edges


def to_dot(topo: Topology, live: Live | None = None) -> str:
    """An undirected graph: one box per node (name, program, image, mgmt address), one edge per
    link with the interface names at each end, the management network as an ellipse every node
    with a management address hangs off (so etcd never floats). With ``live`` (a deployed lab):
    addresses, AS, pods in the boxes and BGP sessions as dashed edges labelled with their state."""
    out = [
        f"graph {_q(topo.name)} {{",
        f"  graph [label={_q(f'lab {topo.name} (mgmt {topo.mgmt.subnet})')}, labelloc=t, fontname=Helvetica, "
        "layout=neato, overlap=false, sep=\"+40\", esep=\"+10\", splines=true, pad=0.3];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=11];',
        "  edge [fontname=Helvetica, fontsize=9, len=3.2, labeldistance=1.6, labelfontcolor=\"#1f4e99\"];",
    ]
    for name, node in topo.nodes.items():
        colour = COLOURS.get(handler_for(node.image).name, COLOURS["linux"])
        label = "\\n".join(x.replace('"', '\\"') for x in node_label(topo, name, live))
        out.append(f'  {_q(name)} [label="{label}", fillcolor={_q(colour)}];')
    for link in topo.links:
        attrs = [f"taillabel={_q(link.a.interface)}", f"headlabel={_q(link.b.interface)}"]
        if link.mtu:
            attrs.append(f"label={_q(f'mtu {link.mtu}')}")
        out.append(f"  {_q(link.a.node)} -- {_q(link.b.node)} [{', '.join(attrs)}];")
    members = [name for name, node in topo.nodes.items() if node.mgmt_ipv4 is not None]
    if members:
        out.append(f'  {_q(MGMT_NODE)} [label={_q(f"mgmt {topo.mgmt.network} {topo.mgmt.subnet}")}, shape=ellipse, '
                   'style="dashed", fontsize=9];')
        for name in members:
            out.append(f'  {_q(name)} -- {_q(MGMT_NODE)} [style=dotted, color="#999999", taillabel="eth0", len=2];')
    for a, b, state in session_edges(topo, live or {}):
        colour = "#2e7d32" if state == "Established" else "#c62828"
        out.append(f"  {_q(a)} -- {_q(b)} [style=dashed, color={_q(colour)}, label={_q(f'BGP {state}')}, "
                   f"fontcolor={_q(colour)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def to_mermaid(topo: Topology, live: Live | None = None) -> str:
    """A Markdown document with a Mermaid flowchart (renders on GitHub/GitLab as is)."""
    ids = {name: f"n{i}" for i, name in enumerate(topo.nodes)}
    lines = [f"# Lab `{topo.name}`", "", "```mermaid", "graph LR"]
    for name in topo.nodes:
        label = "<br/>".join(part.replace('"', "'") for part in node_label(topo, name, live))
        lines.append(f'  {ids[name]}["{label}"]')
    for link in topo.links:
        text = f"{link.a.interface} — {link.b.interface}"
        if link.mtu:
            text += f" (mtu {link.mtu})"
        lines.append(f'  {ids[link.a.node]} ---|"{text}"| {ids[link.b.node]}')
    members = [name for name, node in topo.nodes.items() if node.mgmt_ipv4 is not None]
    if members:
        lines.append(f'  mgmt(["mgmt {topo.mgmt.network} {topo.mgmt.subnet}"])')
        lines += [f"  {ids[name]} -.- mgmt" for name in members]
    for a, b, state in session_edges(topo, live or {}):
        lines.append(f'  {ids[a]} -.-|"BGP {state}"| {ids[b]}')
    lines += ["```", ""]
    return "\n".join(lines)


def render(topo: Topology, output: Path, fmt: str | None = None, live: Live | None = None) -> Path:
    """Write the picture; the format comes from ``fmt`` or the file's extension."""
    fmt = (fmt or output.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise LabError(f"{output}: unknown picture format {fmt or '(none)'!r}; use one of .{', .'.join(FORMATS)}")
    if output.parent and not output.parent.exists():
        raise LabError(f"{output}: directory {output.parent} does not exist")
    if fmt == "md":
        output.write_text(to_mermaid(topo, live))
    elif fmt == "dot":
        output.write_text(to_dot(topo, live))
    else:
        try:
            proc = subprocess.run(["dot", f"-T{fmt}", "-o", str(output)], input=to_dot(topo, live), text=True,
                                  capture_output=True, timeout=60, check=False)
        except FileNotFoundError:
            raise LabError("graphviz `dot` is not installed (run `make setup`, Debian package graphviz)") from None
        except subprocess.TimeoutExpired:
            raise LabError("graphviz `dot` did not finish within 60s") from None
        if proc.returncode != 0:
            raise LabError(f"graphviz `dot` failed: {proc.stderr.strip().splitlines()[-1:]}")
    return output
