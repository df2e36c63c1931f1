"""The policy calculator of the calculation graph: NetworkPolicies, endpoints and namespaces in,
:class:`~controller.node.messages.PolicyUpdate` deltas out.

Why incremental (Felix's label index + active-rules calculator): the agent sees every endpoint of
the cluster, but one pod appearing or one label changing must cost O(selectors), not O(cluster):

* a label index keeps, for every selector some policy uses (peers, named ports, the policies' own
  podSelectors), the endpoint keys it matches; an endpoint event re-evaluates that endpoint against
  each selector, a namespace label change re-evaluates the endpoints of that namespace only;
* only LOCAL endpoints get chains: a policy's chains (and the sets they reference) are emitted while
  at least one local endpoint uses them, and withdrawn after;
* :meth:`PolicyCalc.drain` emits only what changed since the last drain (set members, chain rules,
  interface verdicts). :func:`felix_like.policy.compile_program` computes the same program from
  scratch; the unit tests hold the two equal.

Calico's kinds ride on the same index: Calico NetworkPolicies and GlobalNetworkPolicies are policies
(a global one is a candidate for every endpoint), NetworkSets are index members that only Calico rule
selectors match, profiles' rule selectors are referenced like a policy's, and a Tier change re-plans
every local endpoint (tiers are few).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from controller.node.messages import PolicyUpdate
from controller.node.model import Update
from datamodel.resources.calicopolicy import (
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    NetworkSet,
    Profile,
    Tier,
)
from datamodel.resources.common import parse_ip_or_cidr
from datamodel.resources.kubernetes import Namespace, NetworkPolicy, namespace_labels
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from datamodel.selector import And, Compare, parse_selector
from felix_like.policy import (
    CALICO_NS_LABEL,
    AnyPolicy,
    EndpointInfo,
    EndpointPlan,
    PolicyFacts,
    PortKey,
    RefItems,
    Refs,
    SelKey,
    addr_set_value,
    calico_rules,
    chain_of,
    endpoint_plan,
    names_of,
    policy_facts,
    policy_rules,
    port_elements,
    port_set_name,
    port_set_value,
    profile_chain,
    selkey_matches,
    set_family,
    set_name,
    target_key,
)

if TYPE_CHECKING:
    from controller.node.graph import Dispatcher

_DIRECTIONS = ("ingress", "egress")


def endpoint_info(key: str, wep: WorkloadEndpoint) -> EndpointInfo:
    """What policy needs of a WorkloadEndpoint: labels, addresses of both families, named ports, profiles."""
    ips = tuple(sorted({str(parse_ip_or_cidr(n).ip) for n in wep.spec.ipNetworks}))  # cached: validation parsed them
    ports = tuple(sorted((p.name, p.protocol, p.port) for p in wep.spec.ports or []))
    return EndpointInfo(key=key, namespace=wep.namespace or "default",
                        labels=tuple(sorted((wep.metadata.labels or {}).items())), ips=ips, ports=ports,
                        node=wep.spec.node or "", interface=wep.spec.interfaceName or "",
                        container_id=wep.spec.containerID or "", profiles=tuple(wep.spec.profiles or ()))


def netset_info(key: str, doc: NetworkSet | GlobalNetworkSet) -> EndpointInfo:
    """A NetworkSet (or GlobalNetworkSet: no namespace) as the label index sees it: labels and CIDRs."""
    return EndpointInfo(key=key, namespace=doc.namespace or "",
                        labels=tuple(sorted((doc.metadata.labels or {}).items())),
                        ips=tuple(sorted(doc.spec.nets or [])), kind="netset")


def _required_label(skey: SelKey) -> tuple[str, str] | None:
    """A ``key == "value"`` the selector's pod part requires (a top-level conjunct), if any."""
    sel = parse_selector(skey[1])
    for term in sel.operands if isinstance(sel, And) else (sel,):
        if isinstance(term, Compare) and term.op == "==":
            return (term.key, term.value)
    return None


class PolicyCalc:
    """Label index + per-local-endpoint policy selection -> table deltas. Single-threaded."""

    def __init__(self, nodename: str, flow_logs: bool = True) -> None:
        self.nodename = nodename
        self.flow_logs = flow_logs
        self.policies: dict[str, AnyPolicy] = {}
        self._facts: dict[str, PolicyFacts] = {}  # per policy key, what endpoint plans need of it
        self._policies_by_ns: dict[str, set[str]] = {}
        self._global_policies: set[str] = set()
        self.tiers: dict[str, Tier] = {}
        self.profiles: dict[str, Profile] = {}
        self._chain_profile: dict[str, tuple[str, str]] = {}  # profile chain -> (profile name, direction)
        self._profile_refs: dict[str, Refs] = {}
        self.eps: dict[str, EndpointInfo] = {}
        self._eps_by_ns: dict[str, set[str]] = {}
        #: endpoint keys by label (key, value): a new selector requiring ``k == v`` is evaluated
        #: against those only (1,000 policies arriving in a cluster of 5,000 endpoints: 5 million
        #: selector evaluations, 9 s, without it)
        self._eps_by_label: dict[tuple[str, str], set[str]] = {}
        self.ns_docs: dict[str, dict[str, str]] = {}  # namespace name -> effective labels (documents only)
        # the label index
        self._sel_refs: dict[SelKey, int] = {}
        self._sel_members: dict[SelKey, set[str]] = {}
        # which selectors an endpoint event must look at: those whose pod selector requires a label
        # key == value the endpoint has (or had), and the rest (no such required equality)
        self._sel_by_label: dict[tuple[str, str], set[SelKey]] = {}
        self._sel_general: set[SelKey] = set()
        self._port_refs: dict[PortKey, int] = {}
        self._port_members: dict[PortKey, set[str]] = {}
        self._policy_refs: dict[str, tuple[SelKey, Refs]] = {}
        self._chain_policy: dict[str, tuple[str, str]] = {}  # chain name -> (policy key, direction)
        # dirty state
        self._dirty_local: set[str] = set()
        self._dirty_chains: set[str] = set()
        self._dirty_sets: set[str] = set()
        # what was emitted (the dataplane's desired state, as far as this calculator knows)
        self._iface_of: dict[str, str] = {}  # local ep key -> interface emitted
        self.out_ingress: dict[str, EndpointPlan | None] = {}
        self.out_egress: dict[str, EndpointPlan | None] = {}
        self.out_chains: dict[str, tuple[str, ...]] = {}
        self._chain_refs: dict[str, set[str]] = {}
        self.out_sets: dict[str, tuple[str, frozenset[str]]] = {}
        self._set_source: dict[str, SelKey | PortKey] = {}

    def register(self, dispatcher: Dispatcher) -> None:
        # NetworkPolicy: the Kubernetes and the Calico kind share the name (on_policy takes both)
        dispatcher.register(NetworkPolicy.KIND, self.on_policy)
        dispatcher.register(GlobalNetworkPolicy.KIND, self.on_policy)
        dispatcher.register(Namespace.KIND, self.on_namespace)
        dispatcher.register(WorkloadEndpoint.KIND, self.on_wep)
        dispatcher.register(Tier.KIND, self.on_tier)
        dispatcher.register(Profile.KIND, self.on_profile)
        dispatcher.register(NetworkSet.KIND, self.on_netset)
        dispatcher.register(GlobalNetworkSet.KIND, self.on_netset)

    # -- inputs ------------------------------------------------------------------------------------
    def ns_labels(self, name: str) -> Mapping[str, str]:
        return self.ns_docs.get(name) or namespace_labels(name, None)

    def _is_local(self, ep: EndpointInfo | None) -> bool:
        return ep is not None and ep.node == self.nodename and bool(ep.interface)

    def on_wep(self, u: Update) -> None:
        if u.new is None and u.old is not None:
            current = self.eps.get(u.key)
            if current is not None and current.container_id != (u.old.spec.containerID or ""):
                return  # the late delete of an earlier sandbox: the new one (added by CNI) stays
        self.set_endpoint(u.key, endpoint_info(u.key, u.new) if u.new is not None else None)

    # -- the agent's own workloads (CNI ADD/DEL), before etcd echoes them -----------------------------
    def local_add(self, key: str, wep: WorkloadEndpoint) -> None:
        """A pod CNI is adding: its policy is computed now, so ADD can wait for it in the kernel."""
        self.set_endpoint(key, endpoint_info(key, wep))

    def local_remove(self, keys: set[str], interfaces: set[str]) -> None:
        for key, ep in list(self.eps.items()):
            if key in keys or (self._is_local(ep) and ep.interface in interfaces):
                self.set_endpoint(key, None)

    def set_endpoint(self, key: str, ep: EndpointInfo | None) -> None:
        """One endpoint now (None: gone). O(selectors in use)."""
        old = self.eps.get(key)
        if old == ep:
            return
        if old is not None:
            self._eps_by_ns.get(old.namespace, set()).discard(key)
            for kv in old.labels:
                bucket = self._eps_by_label.get(kv)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del self._eps_by_label[kv]
        if ep is None:
            self.eps.pop(key, None)
        else:
            self.eps[key] = ep
            self._eps_by_ns.setdefault(ep.namespace, set()).add(key)
            for kv in ep.labels:
                self._eps_by_label.setdefault(kv, set()).add(key)
        self._reindex(key, old, ep, only_ns_selectors=False)
        if self._is_local(old) or self._is_local(ep):
            self._dirty_local.add(key)

    def _index(self, skey: SelKey, add: bool) -> None:
        req = _required_label(skey)
        bucket = self._sel_general if req is None else self._sel_by_label.setdefault(req, set())
        if add:
            bucket.add(skey)
        else:
            bucket.discard(skey)
            if req is not None and not bucket:
                del self._sel_by_label[req]

    def _endpoints_for(self, skey: SelKey) -> list[str]:
        """The endpoints a new selector can match (a superset; selkey_matches decides): those with the
        label it requires (Calico selectors also see the injected namespace label), else those of its
        namespace, else all."""
        req = _required_label(skey)
        if req is not None:
            pool = set(self._eps_by_label.get(req, ()))
            if req[0] == CALICO_NS_LABEL:
                pool |= self._eps_by_ns.get(req[1], set())
            return list(pool)
        if skey[0] is not None:
            return list(self._eps_by_ns.get(skey[0], ()))
        return list(self.eps)

    def _candidates(self, old: EndpointInfo | None, ep: EndpointInfo | None) -> set[SelKey]:
        """The selectors whose membership of this endpoint can be true before or after: a selector
        requiring ``k == v`` cannot match an endpoint without that label, so it was and stays out."""
        out = set(self._sel_general)
        for e in (old, ep):
            if e is not None:
                for kv in (*e.labels, (CALICO_NS_LABEL, e.namespace)):  # Calico selectors see it injected
                    out |= self._sel_by_label.get(kv, set())
        return out

    def _reindex(self, key: str, old: EndpointInfo | None, ep: EndpointInfo | None, *, only_ns_selectors: bool) -> None:
        nsl = self.ns_labels(ep.namespace) if ep is not None else {}
        for skey in self._candidates(old, ep):
            members = self._sel_members[skey]
            if only_ns_selectors and skey[2] is None:
                continue
            now = ep is not None and selkey_matches(skey, ep, nsl)
            was = key in members
            if now:
                members.add(key)
            else:
                members.discard(key)
            if now != was or (now and old is not None and ep is not None and old.ips != ep.ips):
                self._dirty_sets.update((set_name(skey, 4), set_name(skey, 6)))
            if now != was:
                self._targets_changed(skey, key)
        for pkey, members in self._port_members.items():
            owner, pname = pkey
            if only_ns_selectors and (owner is None or owner[2] is None):
                continue
            now = ep is not None and bool(port_elements(ep, pname)) and (
                owner is None or selkey_matches(owner, ep, nsl))
            was = key in members
            if now:
                members.add(key)
            else:
                members.discard(key)
            if now or was:
                self._dirty_sets.update((port_set_name(pkey, 4), port_set_name(pkey, 6)))

    def _targets_changed(self, skey: SelKey, key: str) -> None:
        ep = self.eps.get(key)
        if self._is_local(ep) or key in self._iface_of:
            self._dirty_local.add(key)

    def on_netset(self, u: Update) -> None:
        self.set_endpoint(u.key, netset_info(u.key, u.new) if u.new is not None else None)

    def on_tier(self, u: Update) -> None:
        """A tier's order or default action changes every local endpoint's chain that has the tier
        (tiers are few and rarely change: every local endpoint is re-planned)."""
        name = (u.new or u.old).name
        if u.new is None:
            self.tiers.pop(name, None)
        else:
            self.tiers[name] = u.new
        self._dirty_local |= set(self._iface_of)

    def on_profile(self, u: Update) -> None:
        name = (u.new or u.old).name
        old_refs = self._profile_refs.pop(name, None)
        if old_refs is not None:
            self._unref(None, old_refs)
        if u.new is None:
            self.profiles.pop(name, None)
        else:
            self.profiles[name] = u.new
            refs = Refs()
            for d in _DIRECTIONS:
                calico_rules(u.new, d, refs)
            self._profile_refs[name] = refs
            self._ref(None, refs)
        if old_refs is not None:
            self._gc()
        for d in _DIRECTIONS:
            chain = profile_chain(name, d)
            self._dirty_chains.add(chain)
            self._chain_profile[chain] = (name, d)
        self._dirty_local |= {k for k, ep in ((k, self.eps.get(k)) for k in self._iface_of)
                              if ep is not None and name in (ep.profiles or (f"kns.{ep.namespace}",))}

    def on_namespace(self, u: Update) -> None:
        doc: Namespace | None = u.new
        name = (doc or u.old).name
        labels = doc.effective_labels() if doc is not None else None
        if self.ns_docs.get(name) == labels:
            return
        if labels is None:
            self.ns_docs.pop(name, None)
        else:
            self.ns_docs[name] = labels
        for key in sorted(self._eps_by_ns.get(name, ())):
            ep = self.eps[key]
            self._reindex(key, ep, ep, only_ns_selectors=True)

    def on_policy(self, u: Update) -> None:
        key = u.key
        old: AnyPolicy | None = self.policies.pop(key, None)
        if old is not None:
            self._policies_by_ns.get(old.namespace or "default", set()).discard(key)
            self._global_policies.discard(key)
            target, refs = self._policy_refs.pop(key)
            self._unref(target, refs)
            self._dirty_local |= {k for k in self._sel_members.get(target, ()) if k in self._iface_of}
            for d in _DIRECTIONS:
                chain = chain_of(old, d)
                self._dirty_chains.add(chain)
                self._chain_policy.pop(chain, None)
        self._facts.pop(key, None)
        new: AnyPolicy | None = u.new
        if new is not None:
            self.policies[key] = new
            self._facts[key] = policy_facts(new)
            if isinstance(new, GlobalNetworkPolicy):
                self._global_policies.add(key)
            else:
                self._policies_by_ns.setdefault(new.namespace or "default", set()).add(key)
            refs = Refs()
            for d in _DIRECTIONS:
                policy_rules(new, d, refs)
                chain = chain_of(new, d)
                self._dirty_chains.add(chain)
                self._chain_policy[chain] = (key, d)
            target = target_key(new)
            self._policy_refs[key] = (target, refs)
            self._ref(target, refs)
            self._dirty_local |= {k for k in self._sel_members[target] if self._is_local(self.eps.get(k))}
        if old is not None:
            self._gc()

    def _ref(self, target: SelKey | None, refs: Refs) -> None:
        for skey in {target, *refs.sets} - {None}:
            self._sel_refs[skey] = self._sel_refs.get(skey, 0) + 1
            if skey not in self._sel_members:
                self._sel_members[skey] = {k for k in self._endpoints_for(skey)
                                           if selkey_matches(skey, ep := self.eps[k], self.ns_labels(ep.namespace))}
                self._index(skey, True)
        for pkey in refs.ports:
            self._port_refs[pkey] = self._port_refs.get(pkey, 0) + 1
            if pkey not in self._port_members:
                owner, pname = pkey
                self._port_members[pkey] = {
                    k for k, ep in self.eps.items() if port_elements(ep, pname)
                    and (owner is None or selkey_matches(owner, ep, self.ns_labels(ep.namespace)))}

    def _unref(self, target: SelKey | None, refs: Refs) -> None:
        for skey in {target, *refs.sets} - {None}:
            self._sel_refs[skey] -= 1
        for pkey in refs.ports:
            self._port_refs[pkey] -= 1

    def _gc(self) -> None:
        for skey in [k for k, n in self._sel_refs.items() if n <= 0]:
            del self._sel_refs[skey]
            self._sel_members.pop(skey, None)
            self._index(skey, False)
        for pkey in [k for k, n in self._port_refs.items() if n <= 0]:
            del self._port_refs[pkey]
            self._port_members.pop(pkey, None)

    # -- output --------------------------------------------------------------------------------------
    def _plan_for(self, ep: EndpointInfo, direction: str) -> EndpointPlan | None:
        kind = direction.capitalize()
        chosen: list[PolicyFacts] = []
        for pkey in (*self._policies_by_ns.get(ep.namespace, ()), *self._global_policies):
            facts = self._facts[pkey]
            if kind in facts.types and pkey in self._policy_refs \
                    and ep.key in self._sel_members.get(self._policy_refs[pkey][0], ()):
                chosen.append(facts)
        return endpoint_plan(ep, direction, chosen, self.tiers, self.profiles, self.flow_logs)

    def _chain_source(self, chain: str) -> tuple[AnyPolicy | Profile, str] | None:
        found = self._chain_policy.get(chain)
        if found is not None:
            return self.policies[found[0]], found[1]
        prof = self._chain_profile.get(chain)
        if prof is not None and prof[0] in self.profiles:
            return self.profiles[prof[0]], prof[1]
        return None

    def drain(self) -> list[PolicyUpdate]:
        """What changed since the last drain, as one message (none when nothing did)."""
        ifaces: dict[str, tuple[EndpointPlan | None, EndpointPlan | None] | None] = {}
        for key in sorted(self._dirty_local):
            ep = self.eps.get(key)
            old_iface = self._iface_of.pop(key, None)
            if self._is_local(ep):
                assert ep is not None
                self._iface_of[key] = ep.interface
            for iface in {old_iface, ep.interface if self._is_local(ep) else None} - {None}:
                assert iface is not None
                owner = min((k for k, i in self._iface_of.items() if i == iface), default=None)
                if owner is None:
                    if iface in self.out_ingress:
                        del self.out_ingress[iface], self.out_egress[iface]
                        ifaces[iface] = None
                    continue
                oep = self.eps[owner]
                verdicts = (self._plan_for(oep, "ingress"), self._plan_for(oep, "egress"))
                if iface not in self.out_ingress or (self.out_ingress[iface], self.out_egress[iface]) != verdicts:
                    self.out_ingress[iface], self.out_egress[iface] = verdicts
                    ifaces[iface] = verdicts
        self._dirty_local.clear()
        # chains: every chain a local interface jumps to
        needed = {c for t in (self.out_ingress, self.out_egress) for plan in t.values() if plan for c in plan.chains}
        chains: dict[str, tuple[str, ...] | None] = {}
        chain_refs: dict[str, RefItems | None] = {}
        for name in sorted(needed):
            if name in self.out_chains and name not in self._dirty_chains:
                continue
            found = self._chain_source(name)
            if found is None:
                continue
            refs = Refs()
            src = found[0]
            rules = calico_rules(src, found[1], refs, self.flow_logs) if isinstance(src, Profile) \
                else policy_rules(src, found[1], refs, self.flow_logs)
            sources = names_of(refs)
            self._chain_refs[name] = set(sources)
            self._set_source.update(sources)
            if self.out_chains.get(name) != rules:
                self.out_chains[name] = rules
                chains[name] = rules
                chain_refs[name] = tuple(sorted(refs.rule_refs.items()))
        for name in sorted(set(self.out_chains) - needed):
            del self.out_chains[name]
            self._chain_refs.pop(name, None)
            chains[name] = None
            chain_refs[name] = None
        self._dirty_chains.clear()
        # sets: every set a needed chain references
        wanted = {s for c in self.out_chains for s in self._chain_refs.get(c, ())}
        sets: dict[str, tuple[str, frozenset[str]] | None] = {}
        for name in sorted(wanted):
            if name in self.out_sets and name not in self._dirty_sets:
                continue
            value = self._set_value(name)
            if self.out_sets.get(name) != value:
                self.out_sets[name] = value
                sets[name] = value
        for name in sorted(set(self.out_sets) - wanted):
            del self.out_sets[name]
            sets[name] = None
        self._dirty_sets.clear()
        if not (ifaces or chains or sets):
            return []
        return [PolicyUpdate(sets=sets, chains=chains, interfaces=ifaces, chain_refs=chain_refs)]

    def _set_value(self, name: str) -> tuple[str, frozenset[str]]:
        source = self._set_source[name]
        family = set_family(name)
        if name.startswith(("s", "c")):
            members = self._sel_members.get(source, set())  # type: ignore[arg-type]
            return addr_set_value(source, [self.eps[k] for k in members], family)  # type: ignore[arg-type]
        pname = source[1]
        pmembers = self._port_members.get(source, set())  # type: ignore[arg-type]
        return port_set_value([self.eps[k] for k in pmembers], str(pname), family)
