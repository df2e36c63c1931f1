"""``tabbyctl policy explain`` and ``tabbyctl policy what-if``: policy answers without sending traffic.

Why from the compiled program: the agents enforce ``felix_like.policy.compile_program``'s output
(the incremental calculator is held equal to it by tests), so compiling the datastore's policies,
namespaces and endpoints for the source's and the destination's node and walking those rules
(felix_like.policy_eval) answers what the kernel would do, with the same rule ids the flow
records carry.

``explain --from NS/POD --to NS/POD|IP --port P [--protocol tcp]``: each direction's verdict and
the tier/policy/rule that decides it (egress in the source's node program, ingress in the
destination's). ``what-if -f FILE``: the observed flows (every node's flow API, as ``tabbyctl
flows``) whose verdict would change if FILE's policies (Kubernetes and Calico kinds), tiers, profiles,
network sets or namespaces were applied (FILE is
not applied).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from controller.cli.context import UserError, state
from controller.cli.flows import client_ssl_context, gather, resolve_targets, target_options

if TYPE_CHECKING:  # the compiler and the model are imported when a policy command runs (tabbyctl starts fast)
    from datamodel.resources.workloadendpoint import WorkloadEndpoint
    from felix_like.policy import EndpointInfo, Program
    from felix_like.policy_eval import Decision, Packet

STAGED_PLURALS = ("stagednetworkpolicies", "stagedglobalnetworkpolicies", "stagedkubernetesnetworkpolicies")
#: staged kind -> (the kind it stages, its apiVersion, that kind's plural)
STAGED = {"StagedNetworkPolicy": ("NetworkPolicy", "projectcalico.org/v3", "networkpolicies"),
          "StagedGlobalNetworkPolicy": ("GlobalNetworkPolicy", "projectcalico.org/v3", "globalnetworkpolicies"),
          "StagedKubernetesNetworkPolicy": ("NetworkPolicy", "networking.k8s.io/v1", "kubernetesnetworkpolicies")}
KINDS = ("kubernetesnetworkpolicies", "networkpolicies", "globalnetworkpolicies", "tiers", "profiles", "networksets",
         "globalnetworksets", "namespaces", "workloadendpoints", "nodes")
POLICY_KINDS = ("NetworkPolicy", "GlobalNetworkPolicy")  # the Kubernetes kind is also "NetworkPolicy"


@dataclass
class PolicyInputs:
    """What the compiler takes, read from the datastore (validated the way the agent validates)."""

    policies: dict[str, Any] = field(default_factory=dict)  # Kubernetes and Calico policies by key
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    weps: dict[str, WorkloadEndpoint] = field(default_factory=dict)
    tiers: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    netsets: dict[str, Any] = field(default_factory=dict)
    staged: dict[str, Any] = field(default_factory=dict)
    #: node name -> its own addresses (Node resources): traffic from a node's own stack is not forwarded
    node_addresses: dict[str, set[str]] = field(default_factory=dict)
    _programs: dict[str, Program] = field(default_factory=dict)

    def with_staged(self) -> PolicyInputs | None:
        """The inputs as they would be with every staged policy enforced (Calico's stagedAction: Set
        replaces or adds the policy of that name, Delete removes it, Learn/Ignore change nothing);
        None when nothing is staged."""
        from datamodel.resources import parse_resource
        from datastore.keys import resource_key

        if not self.staged:
            return None
        out = PolicyInputs(dict(self.policies), dict(self.namespaces), dict(self.weps), dict(self.tiers),
                           dict(self.profiles), dict(self.netsets), node_addresses=dict(self.node_addresses))
        for doc in self.staged.values():
            kind, api, plural = STAGED[doc.KIND]
            ns = (doc.namespace or "default") if getattr(doc, "NAMESPACED", False) else None
            key = resource_key(plural, doc.name, ns)
            action = doc.spec.stagedAction or "Set"
            if action == "Delete":
                out.policies.pop(key, None)
            elif action == "Set":
                spec = {k: v for k, v in doc.to_dict().get("spec", {}).items() if k != "stagedAction"}
                meta = {"name": doc.name, **({"namespace": ns} if ns else {})}
                out.policies[key] = parse_resource({"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec})
        return out

    @property
    def endpoints(self) -> list[EndpointInfo]:
        from controller.node.policy import endpoint_info, netset_info

        return [*(endpoint_info(k, w) for k, w in sorted(self.weps.items())),
                *(netset_info(k, n) for k, n in sorted(self.netsets.items()))]

    def program(self, node: str) -> Program:
        from felix_like.policy import compile_program

        if node not in self._programs:
            self._programs[node] = compile_program(self.policies.values(), self.endpoints, self.namespaces, node,
                                                   flow_logs=True, tiers=self.tiers, profiles=self.profiles)
        return self._programs[node]

    def add(self, key: str, obj: Any) -> bool:
        """One validated document into the inputs (False: a kind the compiler does not take)."""
        kind = getattr(obj, "KIND", "")
        if kind in POLICY_KINDS:
            self.policies[key] = obj
        elif kind == "Namespace":
            self.namespaces[obj.name] = obj.effective_labels()
        elif kind == "WorkloadEndpoint":
            self.weps[key] = obj
        elif kind == "Tier":
            self.tiers[obj.name] = obj
        elif kind == "Profile":
            self.profiles[obj.name] = obj
        elif kind in ("NetworkSet", "GlobalNetworkSet"):
            self.netsets[key] = obj
        elif kind in STAGED:
            self.staged[key] = obj
        elif kind == "Node":
            self.node_addresses[obj.name] = node_addresses(obj)
        else:
            return False
        return True

    def with_documents(self, docs: Iterable[Any]) -> PolicyInputs:
        from datastore.keys import resource_key

        out = PolicyInputs(dict(self.policies), dict(self.namespaces), dict(self.weps), dict(self.tiers),
                           dict(self.profiles), dict(self.netsets), node_addresses=dict(self.node_addresses))
        for doc in docs:
            namespaced = getattr(doc, "NAMESPACED", False)
            key = resource_key(doc.PLURAL, doc.name, (doc.namespace or "default") if namespaced else None)
            if doc.KIND in ("WorkloadEndpoint", "Node") or not out.add(key, doc):
                raise UserError(f"what-if: {doc.KIND} {doc.name}: only policies, tiers, profiles, network sets and "
                                "namespaces are evaluated")
        return out

    # -- endpoints -----------------------------------------------------------------------------------
    def find_pod(self, text: str, flag: str) -> tuple[str, WorkloadEndpoint]:
        ns, _, pod = text.rpartition("/")
        ns = ns or "default"
        found = [(k, w) for k, w in self.weps.items() if (w.spec.pod or w.spec.workload) == pod
                 and (w.namespace or "default") == ns]
        if not found:
            raise UserError(f"{flag}: no pod {ns}/{pod} (no WorkloadEndpoint names it)")
        return sorted(found)[0]

    def by_ip(self, ip: str) -> tuple[str, WorkloadEndpoint] | None:
        for k, w in sorted(self.weps.items()):
            if any(str(ipaddress.ip_interface(n).ip) == ip for n in w.spec.ipNetworks):
                return k, w
        return None


def node_addresses(node: Any) -> set[str]:
    """Every address a Node resource gives its host (BGP, tunnel, WireGuard, spec.addresses)."""
    spec = node.spec
    bgp, wg = spec.bgp, spec.wireguard
    found = [bgp.ipv4Address, bgp.ipv6Address, bgp.ipv4IPIPTunnelAddr] if bgp else []
    found += [spec.ipv4VXLANTunnelAddr, spec.ipv6VXLANTunnelAddr]
    found += [wg.interfaceIPv4Address, wg.interfaceIPv6Address] if wg else []
    found += [a.address for a in spec.addresses or []]
    return {str(ipaddress.ip_interface(str(a)).ip) for a in found if a}


async def read_inputs(ds: Any) -> PolicyInputs:
    from controller.node.model import validate
    from datastore import staged
    from datastore.keys import resource_prefix

    inputs = PolicyInputs()
    for plural in (*KINDS, *STAGED_PLURALS):
        kvs, _rev = await staged.read_resolved(ds, resource_prefix(plural))  # a large apply: as agents see it
        for kv in kvs:
            try:
                obj = validate(kv.key, kv.value)
            except ValueError:
                continue  # the agents ignore an invalid value too (they keep the last good one)
            inputs.add(kv.key, obj)
    return inputs


def _ip_of(wep: WorkloadEndpoint, version: int = 4) -> str:
    for n in wep.spec.ipNetworks:
        if ipaddress.ip_interface(n).version == version:
            return str(ipaddress.ip_interface(n).ip)
    raise UserError(f"pod {wep.spec.pod}: no IPv{version} address"
                    + (" (-6: its IPv6 address)" if version == 4 else " (a dual-stack pod has one)"))


@dataclass
class Answer:
    src: str
    dst: str
    packet: Packet
    egress: Decision | None
    ingress: Decision | None

    @property
    def verdict(self) -> str:
        sides = [d for d in (self.egress, self.ingress) if d is not None]
        return "denied" if any(d.verdict == "denied" for d in sides) else "allowed"


def decision_json(d: Decision | None, node: str | None) -> dict[str, Any] | None:
    if d is None:
        return None
    ref = d.ref
    return {"direction": d.direction, "node": node, "verdict": d.verdict, "rule_id": d.rule_id,
            "rule": None if ref is None else {"tier": ref.tier, "kind": ref.kind, "namespace": ref.namespace,
                                              "name": ref.name, "index": ref.index if ref.index >= 0 else None,
                                              "action": ref.action},
            "chain": d.chain, "path": d.path, "note": d.note,
            "trace": [{"tier": t.tier, "kind": t.kind, "namespace": t.namespace, "name": t.name,
                       "index": t.index if t.index >= 0 else None, "action": t.action} for t in d.trace if t]}


def explain_packet(inputs: PolicyInputs, pkt: Packet) -> tuple[Decision | None, Decision | None, str | None,
                                                                 str | None]:
    """(egress, ingress, source node, destination node); a side that is not a pod is not policed."""
    from felix_like.policy_eval import Decision, EvalError, decide

    src, dst = inputs.by_ip(pkt.src), inputs.by_ip(pkt.dst)
    eg = ing = None
    sn = dn = None
    if src is not None and dst is not None and src[0] == dst[0]:
        # a pod's packets to its own address go over its own loopback: they never reach its tab*
        # interface, so no policy chain sees them (Kubernetes and Calico alike)
        note = "a pod's traffic to itself stays on its loopback: no policy applies"
        node = src[1].spec.node
        return Decision("egress", "allowed", note=note), Decision("ingress", "allowed", note=note), node, node
    try:
        if src is not None and src[1].spec.node and src[1].spec.interfaceName:
            sn = src[1].spec.node
            eg = decide(inputs.program(sn), src[1].spec.interfaceName, "egress", pkt)
        if dst is not None and dst[1].spec.node and dst[1].spec.interfaceName:
            dn = dst[1].spec.node
            if src is None and pkt.src in inputs.node_addresses.get(dn, ()):
                # the node's own stack to its local pod: output path, never the forward hook
                ing = Decision("ingress", "allowed", note="from the pod's own node: host traffic to a local pod "
                               "is not policed (the policy hooks only forwarded packets)")
            else:
                ing = decide(inputs.program(dn), dst[1].spec.interfaceName, "ingress", pkt)
    except EvalError as exc:
        raise UserError(f"cannot evaluate the compiled program: {exc}") from None
    return eg, ing, sn, dn


def describe(d: Decision | None) -> str:
    if d is None:
        return "not policed (not a local pod of any node)"
    if d.ref is None:
        return d.note
    return describe_ref(d.ref)


def describe_ref(ref: Any) -> str:
    if ref.action == "end-of-tier-deny":
        return f"end of tier {ref.tier}: default deny"
    if ref.action == "no-profile-deny":
        return "no profile matched"
    if ref.action == "fail-closed-deny":
        return "fail-closed: workload interface not programmed yet"
    pol = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    idx = f" rule {ref.index}" if ref.index >= 0 else ""
    return f"{ref.kind} {ref.tier + '|' if ref.tier else ''}{pol}{idx} ({ref.action})"


@click.group("policy")
def policy() -> None:
    """Which policy decides a connection (explain), and what a change would do (what-if)."""


@policy.command("explain")
@click.option("--from", "src", required=True, metavar="NS/POD|IP", help="The connecting pod (or an address).")
@click.option("--to", "dst", required=True, metavar="NS/POD|IP", help="The pod (or address) connected to.")
@click.option("--port", type=click.IntRange(1, 65535), help="Destination port (TCP/UDP/SCTP).")
@click.option("--protocol", type=click.Choice(["tcp", "udp", "sctp", "icmp", "icmpv6"]), default="tcp",
              show_default=True, help="icmp means ICMPv6 for IPv6 packets.")
@click.option("-6", "--ipv6", "v6", is_flag=True,
              help="Pods' IPv6 addresses (the default is IPv4; an IPv6 address given implies it).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def explain(src: str, dst: str, port: int | None, protocol: str, v6: bool, output: str) -> None:
    """The verdict of the first packet of SRC -> DST, per direction, and the rule that decides it."""
    if protocol not in ("icmp", "icmpv6") and port is None:
        raise UserError(f"--port: required for {protocol}")
    from felix_like.policy_eval import Packet

    given = [ipaddress.ip_address(t) for t in (src, dst) if _is_address(t)]
    versions = {a.version for a in given}
    if len(versions) > 1:
        raise UserError("--from, --to: an IPv4 and an IPv6 address (a packet has one family)")
    version = 6 if v6 or versions == {6} else 4
    if v6 and versions == {4}:
        raise UserError("-6: the address given is IPv4")
    if protocol == "icmpv6" and version == 4:
        raise UserError("--protocol icmpv6: IPv6 only (add -6)")
    if protocol == "icmp" and version == 6:
        protocol = "icmpv6"
    inputs = state().run(read_inputs)

    def address(text: str, flag: str) -> str:
        if _is_address(text):
            return str(ipaddress.ip_address(text))
        return _ip_of(inputs.find_pod(text, flag)[1], version)

    pkt = Packet(address(src, "--from"), address(dst, "--to"), protocol,
                 port if protocol not in ("icmp", "icmpv6") else None,
                 icmp_type=128 if protocol == "icmpv6" else 8)  # an echo request
    eg, ing, sn, dn = explain_packet(inputs, pkt)
    ans = Answer(src, dst, pkt, eg, ing)
    if output == "json":
        click.echo(json.dumps({"from": src, "to": dst, "source_ip": pkt.src, "destination_ip": pkt.dst,
                               "protocol": protocol, "port": pkt.dport, "verdict": ans.verdict,
                               "egress": decision_json(eg, sn), "ingress": decision_json(ing, dn)}, sort_keys=True))
        return
    click.echo(f"{src} ({pkt.src}) -> {dst} ({pkt.dst}) {protocol}{'/' + str(port) if pkt.dport else ''}")
    for name, d, node in (("egress", eg, sn), ("ingress", ing, dn)):
        where = f" on {node}" if node else ""
        passed = "".join(f"{describe_ref(t)} -> " for t in (d.trace if d else []) if t)
        click.echo(f"  {name:8} {(d.verdict if d else 'allowed'):8} {passed}{describe(d)}{where}")
    click.echo(f"verdict: {ans.verdict}")


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _flow_packet(rec: dict[str, Any]) -> Packet | None:
    from felix_like.policy_eval import Packet

    proto = rec.get("protocol")
    if proto not in ("tcp", "udp", "sctp", "icmp", "icmpv6"):
        return None
    src, dst = rec.get("source") or {}, rec.get("destination") or {}
    if not _is_address(str(src.get("ip", ""))) or not _is_address(str(dst.get("ip", ""))):
        return None
    icmp = rec.get("icmp") or {}
    echo = 128 if proto == "icmpv6" else 8
    return Packet(src["ip"], dst["ip"], proto, dst.get("port"), src.get("port") or 40000,
                  icmp_type=icmp.get("type", echo) if isinstance(icmp, dict) else echo,
                  icmp_code=icmp.get("code", 0) if isinstance(icmp, dict) else 0)


@policy.command("what-if")
@click.option("-f", "--filename", required=True, metavar="FILE",
              help="Policy/Tier/Profile/NetworkSet/Namespace documents ('-': stdin).")
@click.option("--flows", "flows_file", metavar="FILE",
              help="Judge these flow records (`tabbyctl flows observe -o json` output) instead of asking the nodes.")
@target_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def what_if(filename: str, flows_file: str | None, node: str | None, endpoints: tuple[str, ...], api_port: int,
            output: str) -> None:
    """Observed flows whose verdict would change if FILE were applied (nothing is applied)."""
    from controller.cli.resources import load_resources

    docs = load_resources(filename)
    if flows_file is not None:
        records = read_flow_file(flows_file)
    else:
        records, warnings = gather(resolve_targets(endpoints, node, api_port), client_ssl_context())
        for w in warnings:
            click.echo(f"Warning: {w}", err=True)
    inputs = state().run(read_inputs)
    after = inputs.with_documents(docs)
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in records:
        pkt = _flow_packet(rec)
        if pkt is None or rec.get("direction") not in ("ingress", "egress"):
            continue
        key = (rec["direction"], rec.get("node"), pkt.protocol, pkt.src, pkt.dst, pkt.dport)
        if key in seen:
            seen[key]["flows"] += 1
            continue
        side = 0 if rec["direction"] == "egress" else 1
        now = explain_packet(inputs, pkt)[side]
        then = explain_packet(after, pkt)[side]
        if now is None or then is None or now.verdict == then.verdict:
            continue
        seen[key] = {"direction": rec["direction"], "node": rec.get("node"), "protocol": pkt.protocol,
                     "source": rec["source"], "destination": rec["destination"], "observed": rec.get("verdict"),
                     "now": now.verdict, "would_be": then.verdict, "now_decided_by": describe(now),
                     "would_be_decided_by": describe(then), "flows": 1}
    changed = list(seen.values())
    if output == "json":
        for c in changed:
            click.echo(json.dumps(c, sort_keys=True))
        return
    if not changed:
        click.echo(f"no observed flow would change verdict ({len(records)} flow records checked)")
        return
    from controller.cli.flows import endpoint_text

    for c in changed:
        click.echo(f"{c['direction']:8} {endpoint_text(c['source'])} -> {endpoint_text(c['destination'])} "
                   f"{c['protocol']}: {c['now']} -> WOULD BE {c['would_be'].upper()} by {c['would_be_decided_by']} "
                   f"(now: {c['now_decided_by']}; {c['flows']} flow record(s))")


def read_flow_file(path: str) -> list[dict[str, Any]]:
    """Flow records, one JSON object per line (line numbers in the errors)."""
    import sys

    try:
        text = sys.stdin.read() if path == "-" else open(path).read()  # noqa: SIM115
    except OSError as exc:
        raise UserError(f"--flows: {path}: {exc.strerror}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise UserError(f"--flows: {path}:{n}: not a JSON flow record: {exc}") from None
        if not isinstance(rec, dict) or "source" not in rec or "destination" not in rec:
            raise UserError(f"--flows: {path}:{n}: a flow record needs source and destination")
        out.append(rec)
    return out


def staged_verdicts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with ``staged``: the verdict its direction would get with the staged policies
    enforced (``would allow`` / ``would deny``, the rule that would decide), as Calico's flow logs
    report pending policies; null when nothing is staged or the record is not a pod's flow."""
    return StagedJudge().annotate(records)


class StagedJudge:
    """The staged verdicts of flow records, the datastore re-read at most every ``refresh`` seconds
    (``observe --follow --staged``: a policy staged meanwhile shows on the next records)."""

    def __init__(self, refresh: float = 5.0) -> None:
        self.refresh = refresh
        self._read_at = float("-inf")
        self._staged: PolicyInputs | None = None
        self._cache: dict[tuple[Any, ...], dict[str, Any] | None] = {}

    def _inputs(self) -> PolicyInputs | None:
        now = time.monotonic()
        if now - self._read_at >= self.refresh:
            self._staged = state().run(read_inputs).with_staged()
            self._cache.clear()
            self._read_at = now
        return self._staged

    def annotate(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        staged = self._inputs()
        for rec in records:
            rec["staged"] = None
            pkt = _flow_packet(rec)
            if staged is None or pkt is None or rec.get("direction") not in ("ingress", "egress"):
                continue
            key = (rec["direction"], pkt)
            if key not in self._cache:
                d = explain_packet(staged, pkt)[0 if rec["direction"] == "egress" else 1]
                self._cache[key] = None if d is None else {
                    "verdict": "would allow" if d.verdict == "allowed" else "would deny",
                    "decided_by": describe(d), "rule": decision_json(d, None)["rule"],  # type: ignore[index]
                    "rule_id": d.rule_id}
            rec["staged"] = self._cache[key]
        return records
