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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING

from controller.node.messages import PolicyUpdate
from controller.node.model import Update
from datamodel.resources.kubernetes import Namespace, NetworkPolicy, namespace_labels
from datamodel.resources.workloadendpoint import WorkloadEndpoint
from felix_like.policy import (
    ADDR_TYPE,
    PORT_TYPE,
    EndpointInfo,
    PortKey,
    Refs,
    SelKey,
    policy_chain,
    policy_rules,
    port_elements,
    port_set_name,
    selkey_matches,
    set_name,
    target_key,
)

if TYPE_CHECKING:
    from controller.node.graph import Dispatcher

_DIRECTIONS = ("ingress", "egress")


def endpoint_info(key: str, wep: WorkloadEndpoint) -> EndpointInfo:
    """What policy needs of a WorkloadEndpoint (IPv4 addresses only, this round)."""
    ips = tuple(sorted({str(ipaddress.ip_interface(n).ip) for n in wep.spec.ipNetworks
                        if ipaddress.ip_interface(n).version == 4}))
    ports = tuple(sorted((p.name, p.protocol, p.port) for p in wep.spec.ports or []))
    return EndpointInfo(key=key, namespace=wep.namespace or "default",
                        labels=tuple(sorted((wep.metadata.labels or {}).items())), ips=ips, ports=ports,
                        node=wep.spec.node or "", interface=wep.spec.interfaceName or "",
                        container_id=wep.spec.containerID or "")


class PolicyCalc:
    """Label index + per-local-endpoint policy selection -> table deltas. Single-threaded."""

    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self.policies: dict[str, NetworkPolicy] = {}
        self._policies_by_ns: dict[str, set[str]] = {}
        self.eps: dict[str, EndpointInfo] = {}
        self._eps_by_ns: dict[str, set[str]] = {}
        self.ns_docs: dict[str, dict[str, str]] = {}  # namespace name -> effective labels (documents only)
        # the label index
        self._sel_refs: dict[SelKey, int] = {}
        self._sel_members: dict[SelKey, set[str]] = {}
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
        self.out_ingress: dict[str, tuple[str, ...] | None] = {}
        self.out_egress: dict[str, tuple[str, ...] | None] = {}
        self.out_chains: dict[str, tuple[str, ...]] = {}
        self._chain_refs: dict[str, set[str]] = {}
        self.out_sets: dict[str, tuple[str, frozenset[str]]] = {}
        self._set_source: dict[str, SelKey | PortKey] = {}

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register(NetworkPolicy.KIND, self.on_policy)
        dispatcher.register(Namespace.KIND, self.on_namespace)
        dispatcher.register(WorkloadEndpoint.KIND, self.on_wep)

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
        if ep is None:
            self.eps.pop(key, None)
        else:
            self.eps[key] = ep
            self._eps_by_ns.setdefault(ep.namespace, set()).add(key)
        self._reindex(key, old, ep, only_ns_selectors=False)
        if self._is_local(old) or self._is_local(ep):
            self._dirty_local.add(key)

    def _reindex(self, key: str, old: EndpointInfo | None, ep: EndpointInfo | None, *, only_ns_selectors: bool) -> None:
        nsl = self.ns_labels(ep.namespace) if ep is not None else {}
        for skey, members in self._sel_members.items():
            if only_ns_selectors and skey[2] is None:
                continue
            now = ep is not None and selkey_matches(skey, ep, nsl)
            was = key in members
            if now:
                members.add(key)
            else:
                members.discard(key)
            if now != was or (now and old is not None and ep is not None and old.ips != ep.ips):
                self._dirty_sets.add(set_name(skey))
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
                self._dirty_sets.add(port_set_name(pkey))

    def _targets_changed(self, skey: SelKey, key: str) -> None:
        ep = self.eps.get(key)
        if self._is_local(ep) or key in self._iface_of:
            self._dirty_local.add(key)

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
        old: NetworkPolicy | None = self.policies.pop(key, None)
        if old is not None:
            self._policies_by_ns.get(old.namespace or "default", set()).discard(key)
            target, refs = self._policy_refs.pop(key)
            self._unref(target, refs)
            self._dirty_local |= {k for k in self._sel_members.get(target, ()) if k in self._iface_of}
            for d in _DIRECTIONS:
                chain = policy_chain(old.namespace or "", old.name, d)
                self._dirty_chains.add(chain)
                self._chain_policy.pop(chain, None)
        new: NetworkPolicy | None = u.new
        if new is not None:
            self.policies[key] = new
            self._policies_by_ns.setdefault(new.namespace or "default", set()).add(key)
            refs = Refs()
            for d in _DIRECTIONS:
                policy_rules(new, d, refs)
                chain = policy_chain(new.namespace or "", new.name, d)
                self._dirty_chains.add(chain)
                self._chain_policy[chain] = (key, d)
            target = target_key(new)
            self._policy_refs[key] = (target, refs)
            self._ref(target, refs)
            self._dirty_local |= {k for k in self._sel_members[target] if self._is_local(self.eps.get(k))}
        if old is not None:
            self._gc()

    def _ref(self, target: SelKey, refs: Refs) -> None:
        for skey in {target, *refs.sets}:
            self._sel_refs[skey] = self._sel_refs.get(skey, 0) + 1
            if skey not in self._sel_members:
                self._sel_members[skey] = {k for k, ep in self.eps.items()
                                           if selkey_matches(skey, ep, self.ns_labels(ep.namespace))}
        for pkey in refs.ports:
            self._port_refs[pkey] = self._port_refs.get(pkey, 0) + 1
            if pkey not in self._port_members:
                owner, pname = pkey
                self._port_members[pkey] = {
                    k for k, ep in self.eps.items() if port_elements(ep, pname)
                    and (owner is None or selkey_matches(owner, ep, self.ns_labels(ep.namespace)))}

    def _unref(self, target: SelKey, refs: Refs) -> None:
        for skey in {target, *refs.sets}:
            self._sel_refs[skey] -= 1
        for pkey in refs.ports:
            self._port_refs[pkey] -= 1

    def _gc(self) -> None:
        for skey in [k for k, n in self._sel_refs.items() if n <= 0]:
            del self._sel_refs[skey]
            self._sel_members.pop(skey, None)
        for pkey in [k for k, n in self._port_refs.items() if n <= 0]:
            del self._port_refs[pkey]
            self._port_members.pop(pkey, None)

    # -- output --------------------------------------------------------------------------------------
    def _chains_for(self, ep: EndpointInfo, direction: str) -> tuple[str, ...] | None:
        kind = direction.capitalize()
        chosen = []
        for pkey in self._policies_by_ns.get(ep.namespace, ()):
            pol = self.policies[pkey]
            if kind in (pol.spec.policyTypes or []) and pkey in self._policy_refs \
                    and ep.key in self._sel_members.get(self._policy_refs[pkey][0], ()):
                chosen.append((pol.namespace or "", pol.name))
        return tuple(policy_chain(ns, name, direction) for ns, name in sorted(chosen)) if chosen else None

    def _chain_source(self, chain: str) -> tuple[NetworkPolicy, str] | None:
        found = self._chain_policy.get(chain)
        return (self.policies[found[0]], found[1]) if found is not None else None

    def drain(self) -> list[PolicyUpdate]:
        """What changed since the last drain, as one message (none when nothing did)."""
        ifaces: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...] | None] | None] = {}
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
                verdicts = (self._chains_for(oep, "ingress"), self._chains_for(oep, "egress"))
                if iface not in self.out_ingress or (self.out_ingress[iface], self.out_egress[iface]) != verdicts:
                    self.out_ingress[iface], self.out_egress[iface] = verdicts
                    ifaces[iface] = verdicts
        self._dirty_local.clear()
        # chains: every chain a local interface jumps to
        needed = {c for t in (self.out_ingress, self.out_egress) for cs in t.values() if cs for c in cs}
        chains: dict[str, tuple[str, ...] | None] = {}
        for name in sorted(needed):
            if name in self.out_chains and name not in self._dirty_chains:
                continue
            found = self._chain_source(name)
            if found is None:
                continue
            refs = Refs()
            rules = policy_rules(found[0], found[1], refs)
            self._chain_refs[name] = {set_name(k) for k in refs.sets} | {port_set_name(k) for k in refs.ports}
            for k in refs.sets:
                self._set_source[set_name(k)] = k
            for pk in refs.ports:
                self._set_source[port_set_name(pk)] = pk
            if self.out_chains.get(name) != rules:
                self.out_chains[name] = rules
                chains[name] = rules
        for name in sorted(set(self.out_chains) - needed):
            del self.out_chains[name]
            self._chain_refs.pop(name, None)
            chains[name] = None
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
        return [PolicyUpdate(sets=sets, chains=chains, interfaces=ifaces)]

    def _set_value(self, name: str) -> tuple[str, frozenset[str]]:
        source = self._set_source[name]
        if name.startswith("s-"):
            members = self._sel_members.get(source, set())  # type: ignore[arg-type]
            return ADDR_TYPE, frozenset(ip for k in members for ip in self.eps[k].ips)
        pname = source[1]
        pmembers = self._port_members.get(source, set())  # type: ignore[arg-type]
        return PORT_TYPE, frozenset(el for k in pmembers for el in port_elements(self.eps[k], str(pname)))
